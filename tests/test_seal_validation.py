"""benchmarks/seal_validation.py: every method on the same passages, the SEAL policy on its own prompt, resumable."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seal_validation  # noqa: E402


def _run_with_a_policy_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(run / "checkpoint-1")
    return run


def test_the_table_uses_the_policys_prompt_and_a_restart_recomputes_nothing(tiny_model_dir, squad_file, tmp_path,
                                                                            monkeypatch, capsys):
    import seal_trl.evaluation

    real = seal_trl.evaluation.evaluate_methods
    calls = []

    def spy(inner, task, contexts, methods, **kwargs):
        calls.append((tuple(methods), (kwargs.get("names") or {}).get("self-edit"), task.style))
        return real(inner, task, contexts, methods, **kwargs)

    monkeypatch.setattr(seal_trl.evaluation, "evaluate_methods", spy)
    out = tmp_path / "validation"
    argv = ["--run", str(_run_with_a_policy_adapter(tiny_model_dir, tmp_path)), "--checkpoints", "checkpoint-1",
            "--model", str(tiny_model_dir), "--data", str(squad_file), "--limit", "2", "--style", "rewrite",
            "--max-new-tokens", "8", "--answer-tokens", "2", "--inner-epochs", "1", "--batch-self-edits", "1",
            "--output-dir", str(out), "--no-append"]
    seal_validation.main(argv)

    state = json.loads((out / "state.json").read_text())
    methods = {"none", "passage", "passage-matched", "base-implications", "base-rewrite", "base-self_qa",
               "seal-checkpoint-1", "seal-checkpoint-1:none"}
    assert set(state["scores"]) == methods and all(len(v) == 2 for v in state["scores"].values())
    writers = {name: style for _, name, style in calls if name}
    assert writers["seal-checkpoint-1"] == "rewrite"  # the trained policy writes with the prompt it was trained on
    assert {writers[f"base-{s}"] for s in seal_validation.STYLES} == set(seal_validation.STYLES)
    printed = capsys.readouterr().out
    assert "Paired against base-rewrite" in printed and "Paired against base-implications" not in printed
    assert (out / "report.md").is_file()

    calls.clear()
    seal_validation.main(argv)  # every method is in the state file: nothing is run again
    assert calls == []
    assert json.loads((out / "state.json").read_text())["scores"] == state["scores"]


def test_a_state_from_other_passages_or_inner_settings_is_refused():
    import pytest

    settings = {k: 1 for k in seal_validation.INNER_SETTINGS}
    state = {"scores": {}, "details": {"contexts": ["a", "b"]}, "wall_s": {}}
    seal_validation.check_resume(state, ["a", "b"], settings, "s.json")
    assert state["inner_settings"] == settings  # recorded the first time
    with pytest.raises(SystemExit, match=r"s.json was made on other passages \(they differ from passage 1\)"):
        seal_validation.check_resume(state, ["a", "c"], settings, "s.json")
    with pytest.raises(SystemExit, match="differ from passage 2"):
        seal_validation.check_resume(state, ["a", "b", "c"], settings, "s.json")
    with pytest.raises(SystemExit, match="s.json was made with --inner-epochs 1: use the same settings"):
        seal_validation.check_resume(state, ["a", "b"], {**settings, "inner_epochs": 10}, "s.json")
    seal_validation.check_resume({"scores": {}, "details": {}, "wall_s": {}}, ["x"], settings, "new.json")
