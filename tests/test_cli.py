"""The `seal-trl` command line on the tiny model: evaluate (report, chart, fresh run dirs), train, errors."""

import json

import pytest

from seal_trl.cli.main import main


def evaluate_args(model_dir, data, out, *extra):
    return ["evaluate", "--model", str(model_dir), "--data", str(data), "--split", "train", "--inner-epochs", "2",
            "--inner-lora-r", "4", "--max-new-tokens", "8", "--output-dir", str(out), *extra]


def test_evaluate_writes_table_report_and_chart_in_fresh_run_dirs(tiny_model_dir, squad_file, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(evaluate_args(tiny_model_dir, squad_file, out)) == 0
    printed = capsys.readouterr().out
    assert "| none |" in printed and "| passage | " in printed and "| self-edit |" in printed
    assert "difference vs passage" in printed and "answer contained %" in printed  # paired, with QA accuracy
    (run,) = list(out.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert set(report["summary"]) == {"none", "passage", "self-edit"}
    assert all(len(v) == 4 for v in report["scores"].values())
    assert report["summary"]["passage"]["mean"] > report["summary"]["none"]["mean"]  # training on it helps
    # without an adapter the reference is passage-only; every other method is paired with it on the same 4
    assert report["reference"] == "passage" and set(report["paired"]) == {"none", "self-edit"}
    assert report["paired"]["none"]["n"] == 4 and report["paired"]["none"]["mean_difference"] < 0
    assert set(report["qa"]) == {"none", "passage", "self-edit"} and len(report["qa"]["passage"]["f1"]) == 4
    text = (run / "report.md").read_text()
    assert "## Per passage" in text and "| 4 | Place 3 (`place-3-0`) |" in text
    assert (run / "chart.png").stat().st_size > 1000
    assert main(evaluate_args(tiny_model_dir, squad_file, out, "--methods", "none")) == 0
    assert len(list(out.iterdir())) == 2  # a second run never overwrites the first


@pytest.mark.parametrize("change, message", [
    ({"--data": "MISSING"}, "does not exist"),
    ({"--model": "/no/such/model"}, "model_name_or_path"),
    ({"--methods": "bogus"}, "unknown method"),
    ({"--methods": "teacher"}, "--teacher"),
    ({"--samples": "0"}, "--samples must be >= 1"),
    ({"--samples": "3", "--temperature": "0"}, "--temperature 0 scores the same greedy self-edit 3 times"),
    ({"--temperature": "-1"}, "--temperature: the value must be 0 (greedy) or in [0.01, 100], got -1.0"),
    ({"--reference": "teacher"}, "--reference 'teacher' is not one of the evaluated --methods"),
    ({"--methods": "base-self-edit"}, "base-self-edit needs --adapter"),
    ({"--methods": "passage-matched"}, "passage-matched needs 'passage' and a self-edit method"),
    ({"--task": "arc", "--samples": "2"}, "--samples and --reference apply to --task knowledge only"),
])
def test_evaluate_bad_input(tiny_model_dir, squad_file, tmp_path, capsys, change, message):
    args = evaluate_args(tiny_model_dir, squad_file, tmp_path / "runs")
    for flag, value in change.items():
        if value == "MISSING":
            value = str(tmp_path / "missing.json")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_evaluate_rejects_non_squad_json(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main(evaluate_args(tiny_model_dir, bad, tmp_path / "runs")) == 2
    assert "not SQuAD v1.1 format" in capsys.readouterr().err


def test_train_errors_and_help(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0 and "--train-contexts" in capsys.readouterr().out
    with pytest.raises(ValueError, match="neither a file nor one of"):
        from seal_trl.cli.main import accelerate_config_path

        accelerate_config_path("zero9")


def test_evaluate_with_a_teacher_model(tiny_model_dir, squad_file, tmp_path):
    out = tmp_path / "runs"
    args = evaluate_args(tiny_model_dir, squad_file, out, "--methods", "self-edit", "teacher", "--teacher",
                         str(tiny_model_dir))
    assert main(args) == 0
    (run,) = list(out.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert set(report["summary"]) == {"self-edit", "teacher"} and len(report["self_edits"]["teacher"]) == 4


def test_ctrl_c_keeps_finished_results(tiny_model_dir, squad_file, tmp_path, monkeypatch, capsys):
    import seal_trl.cli.evaluate as evaluate_cli

    def interrupted(*args, scores, details, **kwargs):
        scores["none"] = [-1.0, -2.0]
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_cli, "evaluate_methods", interrupted)
    out = tmp_path / "runs"
    assert main(evaluate_args(tiny_model_dir, squad_file, out)) == 130
    (run,) = list(out.iterdir())
    assert json.loads((run / "partial.json").read_text())["scores"] == {"none": [-1.0, -2.0]}
    assert "interrupted" in capsys.readouterr().out


def test_with_an_adapter_the_base_methods_run_on_the_base_and_are_the_reference(tiny_model_dir, squad_file,
                                                                                tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"  # a random, non-identity adapter: the policy differs from the base
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    reports = {}
    for name, extra in (("adapter", ["--adapter", str(adapter)]), ("base", ["--methods", "none"])):
        out = tmp_path / name
        assert main(evaluate_args(tiny_model_dir, squad_file, out, "--limit", "2", "--no-qa-metrics", *extra)) == 0
        reports[name] = json.loads(next(out.glob("*/report.json")).read_text())
    report = reports["adapter"]
    assert list(report["scores"]) == ["none", "passage", "base-self-edit", "self-edit"]
    assert report["reference"] == "base-self-edit" and set(report["paired"]) == {"none", "passage", "self-edit"}
    assert report["scores"]["none"] == reports["base"]["scores"]["none"]  # no adaptation = the base model's score
    assert "qa" not in report


def test_passage_matched_runs_last_on_the_base_model_with_an_adapter(tiny_model_dir, squad_file, tmp_path,
                                                                     monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    out = tmp_path / "runs"
    monkeypatch.setattr("seal_trl.evaluation.matched_copies", lambda tokens, **kw: [1] * len(tokens["passage"]))
    methods = ["--methods", "none", "passage-matched", "passage", "self-edit"]  # any order: matched runs last
    assert main(evaluate_args(tiny_model_dir, squad_file, out, "--limit", "2", "--no-qa-metrics", "--adapter",
                              str(adapter), *methods)) == 0
    report = json.loads(next(out.glob("*/report.json")).read_text())
    copies = report["matched_copies"]["passage-matched"]
    # one copy: the same plan on the same (base) model as passage-only, so the same score; on the adapter
    # policy's weights it would differ
    assert copies == [1, 1] and report["scores"]["passage-matched"] == report["scores"]["passage"]


def test_evaluate_with_an_adapter_and_a_bad_adapter(tiny_model_dir, squad_file, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    out = tmp_path / "runs"
    assert main(evaluate_args(tiny_model_dir, squad_file, out, "--adapter", str(adapter), "--methods", "none")) == 0
    assert main(evaluate_args(tiny_model_dir, squad_file, out, "--adapter", str(tmp_path), "--methods", "none")) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert main(evaluate_args(tiny_model_dir, squad_file, out, "--adapter", "nobody/none", "--methods", "none")) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_evaluate_batch_self_edits_auto_gives_the_same_scores(tiny_model_dir, squad_file, tmp_path):
    scores = {}
    for k in ("1", "auto"):
        out = tmp_path / k
        assert main(evaluate_args(tiny_model_dir, squad_file, out, "--methods", "passage",
                                  "--batch-self-edits", k)) == 0
        (run,) = list(out.iterdir())
        scores[k] = json.loads((run / "report.json").read_text())["scores"]["passage"]
    assert scores["auto"] == pytest.approx(scores["1"], abs=1e-4)
