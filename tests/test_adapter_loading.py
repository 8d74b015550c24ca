"""Adapters that exist but cannot be loaded (`evaluate --adapter`, `adapt --policy-adapter`): one clear error that
names the flag, never a PEFT or safetensors traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seal_trl.cli.main import main
from seal_trl.models import ModelLoadError, load_policy


def _save_adapter(model_dir: Path, out: Path, **build) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from seal_trl.testing import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model(build_tiny_tokenizer(), **build) if build else AutoModelForCausalLM.from_pretrained(
        model_dir)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def broken_adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    cases = {"other-base-model": _save_adapter(tiny_model_dir, root / "other", hidden_size=32)}
    truncated = _save_adapter(tiny_model_dir, root / "truncated")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    cases["truncated-weights"] = truncated
    for name, config in (("config-empty-object", {}), ("config-a-list", [])):
        bad = _save_adapter(tiny_model_dir, root / name)
        (bad / "adapter_config.json").write_text(json.dumps(config))
        cases[name] = bad
    no_weights = _save_adapter(tiny_model_dir, root / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    cases["no-weights"] = no_weights
    return cases


def _error_line(stderr: str) -> str:
    """The one `error:` line (the model loads first, so its progress bars may precede it), and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


CASES = ("other-base-model", "truncated-weights", "config-empty-object", "config-a-list", "no-weights")


@pytest.mark.parametrize("case", CASES)
def test_evaluate_adapter_that_cannot_load_is_one_line_naming_the_flag(case, broken_adapters, tiny_model_dir, capsys):
    code = main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(broken_adapters[case]),
                 "--methods", "none", "--limit", "1"])
    err = _error_line(capsys.readouterr().err)
    assert code == 2 and "--adapter" in err, err
    if case == "other-base-model":
        assert "another base model" in err
    if case == "no-weights":
        assert "weights are missing" in err


def test_policy_adapter_that_cannot_load_names_its_flag_and_leaves_no_registry(broken_adapters, tiny_model_dir,
                                                                                tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("The river Velmora runs through Ostrand. The capital of Ostrand is Harlow.")
    code = main(["adapt", "--model", str(tiny_model_dir), "--policy-adapter", str(broken_adapters["other-base-model"]),
                 "--documents", str(doc), "--registry", str(tmp_path / "reg"), "--no-regression"])
    err = _error_line(capsys.readouterr().err)
    assert code == 2 and "--policy-adapter" in err, err
    assert not (tmp_path / "reg").exists()


def test_a_good_adapter_still_loads(tiny_model_dir, tmp_path):
    _, policy, _ = load_policy(str(tiny_model_dir), str(_save_adapter(tiny_model_dir, tmp_path / "good")))
    assert any("lora_A" in name for name, _ in policy.named_parameters())
    with pytest.raises(ModelLoadError, match="--adapter"):
        load_policy(str(tiny_model_dir), str(tmp_path / "good" / "adapter_config.json"))
