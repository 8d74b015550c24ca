"""`seal-trl adapt` and `seal-trl registry` end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from seal_trl.cli.main import main

FAST = ["--inner-epochs", "2", "--inner-lora-r", "4", "--max-new-tokens", "8"]


def test_adapt_then_list_promote_and_rollback(tmp_path, tiny_model_dir, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    (docs / "b.json").write_text(json.dumps({"title": "Festival", "text": "The festival is held every spring.",
                                             "questions": [{"question": "When?", "answers": ["every spring"]}]}))
    reg = tmp_path / "reg"
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(docs), "--registry", str(reg),
                 "--promotion", "always", "--banned-phrase", "zzzz", *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 document(s)" in out and "v0001" in out and "v0002" in out and "promoted version: v0002" in out
    manifest = json.loads((reg / "registry.json").read_text())
    assert manifest["promoted"] == "v0002" and manifest["versions"]["v0002"]["parent"] == "v0001"
    objectives = {o["name"] for o in manifest["versions"]["v0002"]["gate"]["objectives"]}
    assert {"new_document", "earlier_documents", "regression_perplexity", "regression_qa",
            "constraint:banned_phrases"} <= objectives
    assert (reg / "versions" / "v0001" / "adapter_model.safetensors").is_file()
    assert main(["registry", "list", "--registry", str(reg)]) == 0
    listing = capsys.readouterr().out
    assert "* v0002" in listing and "promoted: v0002" in listing
    assert main(["registry", "rollback", "--registry", str(reg)]) == 0
    assert "from v0002 to v0001" in capsys.readouterr().out
    assert main(["registry", "promote", "v0002", "--registry", str(reg), "--reason", "ok"]) == 0
    assert json.loads((reg / "registry.json").read_text())["promoted"] == "v0002"
    # a second run continues on top of the promoted version, with replay from the registry
    (docs / "c.txt").write_text("A company named Brightwell built copper bridges across the northern canal.")
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(docs / "c.txt"), "--registry", str(reg),
                 *FAST])
    assert code == 0
    entry = json.loads((reg / "registry.json").read_text())["versions"]["v0003"]
    assert entry["parent"] == "v0002" and entry["metrics"]["replay_examples"] > 0
    from seal_trl.continual.anchor import GENERIC_PROMPTS

    # the KL anchor is on by default, on the model's own answers to the generic prompts
    assert entry["metrics"]["config"]["anchor_weight"] == 5.0
    assert entry["metrics"]["config"]["anchor_texts"] == len(GENERIC_PROMPTS)
    assert set(entry["metrics"]["after"]["earlier"]) == {"a", "b"}


def test_bad_input_is_a_clear_error_and_changes_nothing(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    reg = tmp_path / "reg"
    assert main(["adapt", "--model", str(tiny_model_dir), "--documents", str(empty), "--registry", str(reg)]) == 2
    assert "empty.txt: the file is empty" in capsys.readouterr().err
    assert not reg.exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    good = tmp_path / "good.txt"
    good.write_text("Some text.")
    assert main(["adapt", "--model", str(tiny_model_dir), "--documents", str(good), "--registry", str(other)]) == 2
    assert "not a seal-trl registry" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    assert main(["registry", "list", "--registry", str(other)]) == 2
    reg.mkdir()
    assert main(["registry", "list", "--registry", str(reg)]) == 2  # an empty dir is not a registry yet
    assert "not a seal-trl registry" in capsys.readouterr().err
    from seal_trl.continual.registry import AdapterRegistry

    AdapterRegistry(reg, create=True)
    assert main(["registry", "promote", "v0007", "--registry", str(reg)]) == 2
    assert "'v0007' does not exist" in capsys.readouterr().err
    assert main(["registry", "rollback", "--registry", str(reg)]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def test_adapt_with_a_kl_anchor_file(tmp_path, tiny_model_dir, capsys):
    doc = tmp_path / "a.txt"
    doc.write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    reg = tmp_path / "reg"
    missing = ["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg),
               "--anchor-weight", "2", "--anchor-text", str(tmp_path / "nope.txt"), *FAST]
    assert main(missing) == 2
    assert "nope.txt: no such file (--anchor-text)" in capsys.readouterr().err
    assert not reg.exists()
    anchor = tmp_path / "general.txt"
    anchor.write_text("Bread is baked in the morning.\n\nA bicycle has two wheels and a chain.\n")
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg),
                 "--anchor-weight", "2", "--anchor-text", str(anchor), "--no-regression", *FAST])
    assert code == 0, capsys.readouterr()
    entry = json.loads((reg / "registry.json").read_text())["versions"]["v0001"]
    assert entry["metrics"]["config"]["anchor_weight"] == 2.0
    assert entry["metrics"]["config"]["anchor_texts"] == 2  # the file's two paragraphs


def _promoted_version(tmp_path, tiny_model_dir, damage):
    """A registry built on the tiny model whose promoted version is then damaged on disk (by hand, after the
    promotion checked it), as a half-copied or edited registry would be."""
    import torch
    from safetensors.torch import save_file

    from seal_trl.continual.registry import AdapterRegistry

    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model=str(tiny_model_dir))
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    fits = {f"{module}.lora_A.weight": torch.zeros(4, 64), f"{module}.lora_B.weight": torch.zeros(64, 4)}
    record = {"document": {"doc_id": "old", "title": "Old", "text": "Old text."},
              "probe": {"kind": "cloze", "items": [{"prompt": "Old", "answers": ["text"]}]}, "examples": ["Old text."]}
    version = reg.add_version(fits, {"r": 4, "lora_alpha": 8}, parent=None, documents=[{"doc_id": "old"}],
                              metrics={}, verdict={"passed": True, "objectives": [], "reasons": []},
                              files={"documents.json": [record]})
    reg.promote(version)
    vdir = reg.root / "versions" / version
    if damage == "other-model-shapes":  # consistent LoRA pairs of rank 4, for a 32-wide model
        save_file({f"{module}.lora_A.weight": torch.zeros(4, 32), f"{module}.lora_B.weight": torch.zeros(32, 4)},
                  str(vdir / "adapter_model.safetensors"))
    elif damage == "unknown-module":
        save_file({k.replace("layers.0", "layers.99"): v for k, v in fits.items()},
                  str(vdir / "adapter_model.safetensors"))
    elif damage == "lora-a-without-b":
        save_file({f"{module}.lora_A.weight": fits[f"{module}.lora_A.weight"]}, str(vdir / "adapter_model.safetensors"))
    elif damage == "nan-adapter":
        save_file({**fits, f"{module}.lora_B.weight": torch.full((64, 4), float("nan"))},
                  str(vdir / "adapter_model.safetensors"))
    elif damage == "lora-alpha-1e999":
        (vdir / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 1e999}')
    else:
        (vdir / "documents.json").write_text({"documents-list-of-empty": "[{}]", "documents-object": "{}"}[damage])
    return reg, vdir


@pytest.mark.parametrize("damage", ["other-model-shapes", "unknown-module", "lora-a-without-b", "nan-adapter",
                                    "lora-alpha-1e999", "documents-list-of-empty", "documents-object"])
def test_adapt_on_a_damaged_promoted_version_is_one_line_that_names_the_file(tmp_path, tiny_model_dir, capsys,
                                                                            damage):
    reg, vdir = _promoted_version(tmp_path, tiny_model_dir, damage)
    manifest = (reg.root / "registry.json").read_bytes()
    doc = tmp_path / "new.txt"
    doc.write_text("A company named Brightwell built copper bridges across the northern canal.")
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg.root),
                 *FAST])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # besides the weights' progress bar
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert str(vdir) in errors[0] and "files are damaged: roll back" in errors[0], err
    assert (reg.root / "registry.json").read_bytes() == manifest  # nothing was added or promoted


def test_adapt_with_the_rescale_policy_and_a_kl_limit(tmp_path, tiny_model_dir, capsys):
    """The gate-policy flags reach the learner: a KL limit of 0 refuses the trained candidate at every scale, so
    rescale tries the floor (and, refused there too, keeps the candidate refused); every try is in the manifest."""
    doc = tmp_path / "a.txt"
    doc.write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    reg = tmp_path / "reg"
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg),
                 "--gate-policy", "rescale", "--rescale-floor", "0.5", "--rescale-steps", "1",
                 "--max-kl-to-promoted", "0", "--no-regression", "--anchor-weight", "0", *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "kept as a candidate (not promoted)" in out and "- kl_to_promoted: " in out and "FAIL: KL(promoted" in out
    entry = json.loads((reg / "registry.json").read_text())["versions"]["v0001"]
    config = entry["metrics"]["config"]
    assert (config["gate_policy"], config["rescale_floor"], config["rescale_steps"]) == ("rescale", 0.5, 1)
    assert config["thresholds"]["max_kl_to_promoted"] == 0.0
    tried = entry["metrics"]["rescale"]["tried"]
    assert [(t["scale"], t["passed"]) for t in tried] == [(1.0, False), (0.5, False)]
    assert all(any(r.startswith("kl_to_promoted:") for r in t["reasons"]) for t in tried)
    assert entry["metrics"]["after"]["kl_to_promoted"] > 0


def test_adapt_scores_the_report_half_before_and_after(tmp_path, tiny_model_dir, capsys):
    doc = {"title": "Quorvale", "text": "Quorvale is a river port. Its bridge is made of green slate. It exports wool.",
           "questions": [{"question": "What is the bridge made of?", "answers": ["green slate"]}],
           "report_questions": [{"question": "What does Quorvale export?", "answers": ["wool"]}]}
    (tmp_path / "q.json").write_text(json.dumps(doc))
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(tmp_path / "q.json"), "--registry",
                 str(tmp_path / "reg"), "--promotion", "always", "--no-regression", "--anchor-weight", "0", *FAST,
                 "--inner-lr", "0.01", "--inner-epochs", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "report half (questions the gate never read)" in out and "mean change over 1 document(s)" in out
    lines = out.splitlines()
    line = lines[next(i for i, x in enumerate(lines) if x.startswith("report half")) + 1]
    before, after = (float(v) for v in line.split(":")[1].split("(")[0].split("->"))
    assert before != after  # scored on the base model, then on the promoted one


def test_adapt_with_a_total_regression_budget(tmp_path, tiny_model_dir, capsys):
    """The budget flags reach the gate as objectives against the base model; with the regression suite off they are
    refused before anything is created."""
    doc = tmp_path / "a.txt"
    doc.write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    reg = tmp_path / "reg"
    budget = ["--max-total-perplexity-increase", "0.05", "--max-total-qa-drop", "0.03"]
    assert main(["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg),
                 *budget, "--no-regression", *FAST]) == 2
    err = capsys.readouterr().err
    assert "total regression budget" in err and "--no-regression" in err and len(err.strip().splitlines()) == 1
    assert not reg.exists()
    code = main(["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg), *budget,
                 "--anchor-weight", "0", *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "- total_perplexity: " in out and "- total_qa: " in out
    entry = json.loads((reg / "registry.json").read_text())["versions"]["v0001"]
    thresholds = entry["metrics"]["config"]["thresholds"]
    assert (thresholds["max_total_perplexity_increase"], thresholds["max_total_qa_drop"]) == (0.05, 0.03)
    base = entry["metrics"]["before"]["base_regression"]
    assert base == entry["metrics"]["before"]["regression"]  # nothing promoted yet: the base is the promoted model
    total = next(o for o in entry["gate"]["objectives"] if o["name"] == "total_perplexity")
    assert total["value"] == pytest.approx(entry["metrics"]["after"]["regression"]["perplexity"]
                                           / base["perplexity"] - 1)


def test_adapt_with_your_own_regression_suite(tmp_path, tiny_model_dir, capsys):
    """--regression-suite replaces the bundled suite in the gate (the registry records which suite it read); a bad
    file or a contradiction with --no-regression is one line before anything is created."""
    from seal_trl.continual.regression import RegressionSuite

    doc = tmp_path / "a.txt"
    doc.write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    reg = tmp_path / "reg"
    base = ["adapt", "--model", str(tiny_model_dir), "--documents", str(doc), "--registry", str(reg),
            "--anchor-weight", "0", *FAST]
    bad_files = {"list.json": "[1, 2]", "noqa.json": json.dumps({"heldout_text": "Some text."}),
                 "badanswer.json": json.dumps({"heldout_text": "Text.", "qa": [{"question": "Q?", "choices": ["a", "b"],
                                                                               "answer": 2}]}),
                 "notjson.json": "{heldout_text: 1}"}
    expected = {"list.json": "must be a JSON object", "noqa.json": "field `qa` is empty",
                "badanswer.json": "qa[0] needs", "notjson.json": "not valid JSON"}
    for name, content in bad_files.items():
        (tmp_path / name).write_text(content)
        assert main([*base, "--regression-suite", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and expected[name] in err and len(err.strip().splitlines()) == 1, err
        assert not reg.exists()
    mine = {"heldout_text": "Rivers carry water to the sea. Bread needs flour and water. A week has seven days.",
            "qa": [{"question": "How many days has a week?", "choices": ["five", "seven", "ten"], "answer": 1},
                   {"question": "What does bread need?", "choices": ["flour", "sand"], "answer": 0}]}
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    assert main([*base, "--regression-suite", str(tmp_path / "mine.json"), "--no-regression"]) == 2
    assert "contradict" in capsys.readouterr().err and not reg.exists()
    code = main([*base, "--regression-suite", str(tmp_path / "mine.json")])
    assert code == 0, capsys.readouterr()
    entry = json.loads((reg / "registry.json").read_text())["versions"]["v0001"]
    recorded = entry["metrics"]["config"]["regression_suite"]
    assert recorded == RegressionSuite.from_json(mine).fingerprint() and recorded["qa"] == 2
    assert recorded != RegressionSuite.bundled().fingerprint()
    # a held-out text of one token would give every candidate perplexity 1.0: refused before any training
    (tmp_path / "short.json").write_text(json.dumps({**mine, "heldout_text": "a"}))
    assert main([*base, "--regression-suite", str(tmp_path / "short.json")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "`heldout_text` is 1 token(s)" in errors[0]
    assert json.loads((reg / "registry.json").read_text())["versions"].keys() == {"v0001"}


def test_adapt_refuses_unusable_texts_before_creating_the_registry(tmp_path, tiny_model_dir, capsys):
    """A suite or anchor text too short to measure, an anchor text with the anchor off, a penalty weight that would
    overflow and an empty documents path: one line each, naming the file or flag, and no registry left behind (a
    registry created first would be tied to the model of a command that never ran)."""
    doc = tmp_path / "a.txt"
    doc.write_text("The river Velmora runs through Ostrand. It feeds three lakes. The capital is Harlow.")
    reg = tmp_path / "reg"
    base = ["adapt", "--model", str(tiny_model_dir), "--registry", str(reg), *FAST]
    suite = {"heldout_text": "a", "qa": [{"question": "How many days has a week?", "choices": ["five", "seven"],
                                          "answer": 1}]}
    (tmp_path / "short.json").write_text(json.dumps(suite))
    (tmp_path / "anchor.txt").write_text("a\n\nb\n")
    # the anchor would hold the answers the gate reads: the bundled suite asks this, the default anchor asks that
    (tmp_path / "asks.txt").write_text("Rivers run to the sea.\n\nHow many days are there in a week? Seven.\n")
    (tmp_path / "clash.json").write_text(json.dumps({"heldout_text": "Rivers run to the sea. Bread needs flour.", "qa": [
        {"question": "Which bird is often a symbol of peace?", "choices": ["dove", "crow"], "answer": 0}]}))
    cases = [
        (["--documents", str(doc), "--anchor-weight", "0", "--regression-suite", str(tmp_path / "short.json")],
         ["short.json (--regression-suite)", "1 token(s)"]),
        (["--documents", str(doc), "--anchor-text", str(tmp_path / "anchor.txt")],
         ["anchor.txt (--anchor-text)", "2 tokens or longer"]),
        (["--documents", str(doc), "--anchor-text", str(tmp_path / "anchor.txt"), "--anchor-weight", "0"],
         ["--anchor-text with --anchor-weight 0"]),
        (["--documents", str(doc), "--anchor-weight", "1e308"], ["--anchor-weight", "at most 10000"]),
        (["--documents", str(doc), "--regularization", "1e6"], ["--regularization", "at most 10000"]),
        (["--documents", ""], ["empty path in --documents"]),
        (["--documents", str(doc), "--anchor-text", str(tmp_path / "asks.txt")],
         ["asks.txt (--anchor-text)", "paragraph 2 asks the question", "of the bundled suite", "drop the paragraph"]),
        (["--documents", str(doc), "--regression-suite", str(tmp_path / "clash.json")],
         ["clash.json (--regression-suite): its question 'Which bird is often a symbol of peace?' is asked by the "
          "default anchor prompt", "--anchor-weight 0"]),
    ]
    for extra, expected in cases:
        code = main([*base, *extra])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and all(e in errors[0] for e in expected), (extra, err)
        assert not reg.exists(), extra
