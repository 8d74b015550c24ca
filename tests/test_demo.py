"""`seal-trl demo` end to end on the tiny model (the embedded model is swapped for it to stay fast)."""

import json

import seal_trl.models as models
from seal_trl.cli.main import main


def test_demo_runs_round_and_writes_report(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "embedded_model_path", lambda: tiny_model_dir)
    out = tmp_path / "runs"
    code = main(["demo", "--train-contexts", "2", "--generations", "2", "--validation", "2", "--inner-epochs", "1",
                 "--max-new-tokens", "8", "--output-dir", str(out)])
    assert code == 0
    (run,) = list(out.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert list(report["summary"]) == ["none", "passage", "self-edit (base model)", "self-edit (SEAL, 1 round)"]
    assert all(len(v) == 2 for v in report["scores"].values())
    # paired against the base model's self-edits, with QA accuracy and a per-passage table
    assert report["reference"] == "self-edit (base model)"
    assert set(report["paired"]) == {"none", "passage", "self-edit (SEAL, 1 round)"}
    assert all(stats["n"] == 2 for stats in report["paired"].values())
    assert list(report["qa"]) == list(report["scores"]) and "## Per passage" in (run / "report.md").read_text()
    # one round: 2 passages x 2 self-edits, ReST-EM keeps at most the best one per passage, and only a gain > 0
    first = report["round"][0]
    assert first["seal/keep_fraction"] in (0.0, 0.25, 0.5)
    if first["seal/keep_fraction"] > 0:
        assert first["seal/gain_kept_mean"] > 0 and first["seal/gain_kept_mean"] >= first["seal/gain_mean"]
    assert (run / "chart.png").exists() and (run / "policy" / "adapter_model.safetensors").exists()
    assert not (run / "partial.json").exists()
    printed = capsys.readouterr().out
    assert "| self-edit (SEAL, 1 round) |" in printed and "difference vs self-edit (base model)" in printed
