"""`seal-trl evaluate --task arc` on the tiny model and a directory of ARC JSON files."""

import json

from seal_trl.cli.main import main


def test_evaluate_arc_writes_success_table(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "arc"
    data.mkdir()
    for k in range(1):
        task = {"train": [{"input": [[c]], "output": [[3]]} for c in (1, 2, 4)], "test": [{"input": [[5 + k]],
                                                                                          "output": [[3]]}]}
        (data / f"p{k}.json").write_text(json.dumps(task))
    out = tmp_path / "runs"
    args = ["evaluate", "--task", "arc", "--model", str(tiny_model_dir), "--data", str(data), "--inner-lora-r", "4",
            "--arc-answer-tokens", "6", "--max-new-tokens", "12", "--inner-epochs", "1", "--output-dir", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    for method in ("in-context", "ttt-default"):
        assert f"| {method} |" in table
    assert "| self-edit (FAILED 1/1) |" in table  # the random policy's self-edit fails, and the row says so
    report = json.loads(next(out.glob("evaluate-arc-*/report.json")).read_text())
    assert report["metric"] == "success" and report["contexts"] == ["p0"]
    assert all(v in (0.0, 1.0) for values in report["scores"].values() for v in values)
    assert report["default_config"]["training"]["num_train_epochs"] == 1
    # the random tiny policy cannot write the JSON: scored 0 with the parser's reason, after bounded resampling
    assert report["errors"]["self-edit"][0] in ("unparseable", "empty")
    assert all(edit["attempts"] == 3 for edit in report["self_edits"])

    assert main([*args, "--methods", "passage"]) == 2
    assert "unknown ARC method" in capsys.readouterr().err
    assert main([*args[:-2], "--output-dir", str(out), "--arc-max-tokens", "1"]) == 2
    assert "fits --arc-max-tokens" in capsys.readouterr().err
