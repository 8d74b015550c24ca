"""recipes/seal.py: TrlParser over YAML + CLI, SEALTrainer on the tiny model, resume, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seal_trl.tasks.squad import load_bundled

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}


def write_yaml(path: Path, tiny_model_dir, data_file, output_dir, **extra) -> Path:
    config = {
        "model_name_or_path": str(tiny_model_dir), "data": str(data_file), "output_dir": str(output_dir),
        "use_cpu": True, "report_to": "none", "max_steps": 2, "per_device_train_batch_size": 2,
        "num_generations": 2, "max_completion_length": 8, "inner_epochs": 1, "inner_lora_r": 4,
        "inner_lora_alpha": 8, "inner_target_modules": ["q_proj", "v_proj"], "save_strategy": "steps",
        "save_steps": 1, "logging_steps": 1, "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"], **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_recipe(*args):
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "seal.py"), *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_recipe_trains_saves_and_cli_overrides_yaml(tiny_model_dir, squad_file, tmp_path):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "r.yaml", tiny_model_dir, squad_file, out)
    proc = run_recipe("--config", str(config), "--max_steps", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "adapter_model.safetensors").exists() and (out / "checkpoint-1").is_dir()
    assert not (out / "checkpoint-2").exists()  # the CLI's --max_steps 1 beat the YAML's 2
    # a second run with more steps resumes from checkpoint-1
    proc = run_recipe("--config", str(config))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from" in proc.stderr and (out / "checkpoint-2").is_dir()


@pytest.mark.parametrize("extra, message", [
    ({"algoritm": "grpo"}, "Unknown arguments from config file"),
    ({"algorithm": "ppo"}, "algorithm='ppo' is not known"),
    ({"task": "chess"}, "task='chess' is not known"),
    ({"per_device_train_batch_size": 6}, "= 6 self-edits (3 contexts), which does not divide the 4 training contexts; "
                                         "set per_device_train_batch_size=4"),
    ({"num_iterations": 0}, "num_iterations: got 0 (int), expects a value >= 1"),  # trained 0 steps, exit 0
])
def test_recipe_bad_yaml_gets_a_clear_error(tiny_model_dir, squad_file, tmp_path, extra, message):
    config = write_yaml(tmp_path / "bad.yaml", tiny_model_dir, squad_file, tmp_path / "out", **extra)
    proc = run_recipe("--config", str(config))
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recipe_missing_config_file(tmp_path):
    proc = run_recipe("--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode != 0 and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_shipped_recipes_and_accelerate_configs_parse():
    from trl import ModelConfig, TrlParser

    from seal_trl.cli.train import SEALScriptArguments

    from seal_trl.config import SEALConfig

    for name in ("smollm2-135m/cpu_demo", "smollm2-135m/cpu_rest_em_rounds", "qwen2.5-7b/rest_em_1xgpu_qlora",
                 "qwen2.5-7b/rest_em_8xgpu_zero3", "qwen2.5-7b/grpo_8xgpu", "llama3.2-1b/arc_rest_em_1xgpu"):
        raw = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        raw.pop("bf16", None)  # bf16 needs a GPU to validate; this machine has none
        parser = TrlParser((SEALScriptArguments, SEALConfig, ModelConfig))
        script, config, model = parser.parse_dict(raw)
        assert config.algorithm in ("rest_em", "grpo") and config.generation_batch_size % config.num_generations == 0
        # 2 rounds of 48 passages x 5, a checkpoint and an evaluation per round
        if name == "smollm2-135m/cpu_rest_em_rounds":
            round_steps = config.steps_per_generation * config.num_iterations
            assert config.generation_batch_size == 48 * 5 and config.max_steps == 2 * round_steps
            assert config.save_steps == config.eval_steps == round_steps
    for name in ("single_gpu", "multi_gpu", "zero2", "zero3", "multi_cpu"):
        from accelerate.commands.config.config_args import load_config_from_file

        cfg = load_config_from_file(str(ROOT / "accelerate_configs" / f"{name}.yaml"))
        assert cfg.num_processes >= 1
        if name.startswith("zero"):
            assert cfg.deepspeed_config["zero_stage"] == int(name[-1])


def test_cli_train_launches_the_recipe_on_two_cpu_processes(tiny_model_dir, squad_file, tmp_path):
    out = tmp_path / "mp"
    config = write_yaml(tmp_path / "mp.yaml", tiny_model_dir, squad_file, out, save_strategy="no")
    proc = subprocess.run(
        [sys.executable, "-m", "seal_trl.cli.main", "train", "--config", str(config), "--accelerate-config", "multi_cpu",
         "--max_steps", "1"],
        env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "adapter_model.safetensors").exists() and (out / "README.md").exists()
    assert "training on 2 process(es)" in proc.stderr
    assert "DDP wrapper is still referenced" not in proc.stderr  # the process group goes before exit


@pytest.mark.parametrize("argv, expected", [(["--inner_batch_self_edits", "auto"], "auto"),
                                            (["--inner_batch_self_edits", "4"], 4), ([], 1)])
def test_inner_batch_self_edits_on_the_command_line(tmp_path, argv, expected):
    from trl import ModelConfig, TrlParser

    from seal_trl.cli.train import SEALScriptArguments
    from seal_trl.config import SEALConfig

    parser = TrlParser((SEALScriptArguments, SEALConfig, ModelConfig))
    _, config, _ = parser.parse_args_and_config(["--output_dir", str(tmp_path), "--use_cpu", *argv])
    assert config.inner_batch_self_edits == expected
    assert config.inner_loop_config().batch_self_edits == expected


def test_a_data_file_is_not_split_for_evaluation(squad_file, tmp_path, caplog):
    from seal_trl.cli.train import SEALScriptArguments, _knowledge_contexts

    with pytest.raises(ValueError, match="eval_split='validation': data is a file, which has no splits.*eval_data"):
        SEALScriptArguments(data=str(squad_file), eval_split="validation")
    train, evaluation = _knowledge_contexts(SEALScriptArguments(data=str(squad_file), eval_data="bundled",
                                                                max_eval_contexts=3))
    assert len(train) == 4 and [c["context_id"] for c in evaluation] == [
        c["context_id"] for c in load_bundled("validation")[:3]]
    assert "also training passages" not in caplog.text
    _, same = _knowledge_contexts(SEALScriptArguments(data=str(squad_file), eval_data=str(squad_file)))
    assert len(same) == 4 and "4 of the 4 evaluation passages are also training passages" in caplog.text
