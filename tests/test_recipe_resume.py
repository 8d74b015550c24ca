"""The recipe after a kill (issue 15): it resumes from the last complete checkpoint, skipping (with a warning that
names it) one a kill left half written, and a resumed run should reproduce the uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from seal_trl.cli.checkpoints import checkpoint_problem, last_complete_checkpoint, resume_checkpoint
from seal_trl.cli.flags import UsageError
from seal_trl.cli.train import cli

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "recipe_worker.py"
# One torch thread: on a shared 2-core machine the tiny model's matmuls are 10-40x slower with two threads.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT),
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def recipe_args(model_dir, data_file, output_dir, **settings) -> list[str]:
    values = {"model_name_or_path": model_dir, "data": data_file, "output_dir": output_dir, "use_cpu": "true",
              "report_to": "none", "max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2,
              "max_completion_length": 8, "inner_epochs": 1, "inner_lora_r": 4, "inner_lora_alpha": 8,
              "save_strategy": "steps", "save_steps": 1, "logging_steps": 1, "use_peft": "true", "lora_r": 4,
              "lora_alpha": 8, **settings}
    argv = ["--inner_target_modules", "q_proj", "v_proj", "--lora_target_modules", "q_proj", "v_proj"]
    for name, value in values.items():
        argv += [f"--{name}", str(value)]
    return argv


@pytest.mark.parametrize("mode", ["before-state", "torn-state"])
def test_a_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one(mode, tiny_model_dir, squad_file,
                                                                             tmp_path, caplog):
    out = tmp_path / "run"
    argv = recipe_args(tiny_model_dir, squad_file, out)
    killed = subprocess.run([sys.executable, str(WORKER), "2", mode, *argv], env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint_problem(str(out / "checkpoint-1")) is None
    assert checkpoint_problem(str(out / "checkpoint-2")) is not None  # what the kill left
    with caplog.at_level(logging.INFO, logger="seal_trl.cli"):
        trainer = cli(argv)  # before issue 15 every rerun failed on checkpoint-2
    assert f"skipping incomplete checkpoint {out / 'checkpoint-2'}" in caplog.text
    assert f"resuming from {out / 'checkpoint-1'}" in caplog.text
    assert trainer.state.global_step == 2 and checkpoint_problem(str(out / "checkpoint-2")) is None


def _checkpoint(root: Path, step: int, *, state_step: int | None = None) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers.trainer_callback import TrainerState

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(64, 64)}, str(path / "adapter_model.safetensors"))
    torch.save({"state": torch.ones(64, 64)}, path / "optimizer.pt")
    TrainerState(global_step=step if state_step is None else state_step).save_to_json(str(path / "trainer_state.json"))
    return path


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def test_checkpoint_problems_are_found_and_named(tmp_path, caplog):
    good = _checkpoint(tmp_path, 3)
    assert checkpoint_problem(str(good)) is None
    torn_weights = _checkpoint(tmp_path, 4)
    _truncate(torn_weights / "adapter_model.safetensors")
    assert checkpoint_problem(str(torn_weights)) == "adapter_model.safetensors is truncated"
    torn_optimizer = _checkpoint(tmp_path, 5)
    _truncate(torn_optimizer / "optimizer.pt")
    assert checkpoint_problem(str(torn_optimizer)) == "optimizer.pt is truncated"
    assert "step 5" in checkpoint_problem(str(_checkpoint(tmp_path, 6, state_step=5)))
    no_state = _checkpoint(tmp_path, 10)
    (no_state / "trainer_state.json").unlink()
    assert checkpoint_problem(str(no_state)) == "no trainer_state.json"
    with caplog.at_level(logging.WARNING, logger="seal_trl.cli"):
        assert last_complete_checkpoint(str(tmp_path)) == str(good)
    skipped = [r.getMessage() for r in caplog.records if "skipping incomplete checkpoint" in r.getMessage()]
    assert [m.split()[3] for m in skipped] == [str(tmp_path / f"checkpoint-{n}") for n in (10, 6, 5, 4)]
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None


def test_an_explicit_incomplete_checkpoint_is_refused_before_training(tmp_path):
    from types import SimpleNamespace

    torn = _checkpoint(tmp_path, 2)
    _truncate(torn / "trainer_state.json")
    with pytest.raises(UsageError, match=r"resume_from_checkpoint .*checkpoint-2.* is incomplete \(trainer_state"):
        resume_checkpoint(SimpleNamespace(resume_from_checkpoint=str(torn), output_dir=str(tmp_path)))
    good = _checkpoint(tmp_path, 1)
    assert resume_checkpoint(SimpleNamespace(resume_from_checkpoint=str(good), output_dir=str(tmp_path))) == str(good)


# ----- a resumed run reproduces the uninterrupted one ------------------------------------------------------------
#: Four passages, one per step, a generation every 2 steps (steps_per_generation=2), an epoch every 4 steps.
ROUNDS = {"max_steps": 6, "steps_per_generation": 2}
COMPARED = ("loss", "grad_norm", "reward", "reward_std", "seal/gain_mean", "seal/kept_nll", "seal/keep_fraction")

def _logged(history: list[dict], after: int) -> list[dict]:
    return [{"step": h["step"], **{k: h[k] for k in COMPARED if k in h}} for h in history
            if h["step"] > after and "loss" in h]


def _four_passages(root: Path) -> Path:
    """The 4-passage SQuAD file of conftest's `squad_file`, for module-scoped fixtures."""
    data = root / "squad.json"

    def passage(i):
        context = f"The river Velmora {i} runs through Ostrand."
        answer = {"text": "Ostrand", "answer_start": context.index("Ostrand")}
        return {"context": context, "qas": [{"id": f"q{i}", "question": "Which valley?", "answers": [answer]}]}

    data.write_text(json.dumps({"data": [{"title": f"Place {i}", "paragraphs": [passage(i)]} for i in range(4)]}))
    return data


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = _four_passages(root)
    trainer = cli(recipe_args(tiny_model_dir, data, root / "full", **ROUNDS))
    return root, data, trainer.state.log_history


# Each case failed before SEALTrainer handled it: 2, the first sync's policy-adapter init drew from torch's
# global RNG (now forked); 3, TRL's step counter and buffered generation batch were not checkpointed (now they
# are); 4, TRL's sampler drew every epoch's shuffle from one generator that a resume restarts (now (seed, epoch)).
@pytest.mark.parametrize("resume_at", [2, 3, 4], ids=["generation-boundary", "mid-round", "epoch-boundary"])
def test_a_resumed_run_reproduces_the_uninterrupted_one(uninterrupted, tiny_model_dir, resume_at):
    """A run killed after checkpoint-N (here: a fresh output_dir holding a copy of the uninterrupted run's
    checkpoint-N, which is what such a kill leaves) must log the same losses and rewards from step N+1 on."""
    root, data, history = uninterrupted
    out = root / f"resumed-{resume_at}"
    shutil.copytree(root / "full" / f"checkpoint-{resume_at}", out / f"checkpoint-{resume_at}")
    resumed = cli(recipe_args(tiny_model_dir, data, out, **ROUNDS))
    expected = _logged(history, resume_at)
    assert [h["step"] for h in expected] == list(range(resume_at + 1, ROUNDS["max_steps"] + 1))
    assert _logged(resumed.state.log_history, resume_at) == expected


# ----- a finished run trains nothing more (issue 32) --------------------------------------------------------------
# A constant learning rate: under the default linear schedule the LR at step max_steps + 1 is 0, so the extra step
# that transformers trained on resume left the adapter unchanged and hid the bug.
CONSTANT = {"lr_scheduler_type": "constant"}


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def _assert_same_adapter(folder: Path, expected: dict) -> None:
    import torch

    got = _adapter(folder)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """An uninterrupted 2-step run with a constant learning rate, its data file and its final adapter."""
    root = tmp_path_factory.mktemp("finished")
    data = _four_passages(root)
    cli(recipe_args(tiny_model_dir, data, root / "full", **CONSTANT))
    return root, data, _adapter(root / "full")


def test_rerunning_a_finished_command_trains_nothing_and_says_so(finished, tiny_model_dir, caplog):
    root, data, expected = finished
    out = root / "rerun"
    shutil.copytree(root / "full", out)
    inner_runs = _files(out / "inner_results")
    with caplog.at_level(logging.INFO, logger="seal_trl.cli"):
        trainer = cli(recipe_args(tiny_model_dir, data, out, **CONSTANT))
    assert f"{out / 'checkpoint-2'} is at step 2, the run's last: nothing is left to train" in caplog.text
    assert trainer.state.global_step == 2 and not (out / "checkpoint-3").exists()  # was: step 3 trained
    assert _files(out / "inner_results") == inner_runs  # no new inner run, so no new evaluation of the reward
    _assert_same_adapter(out, expected)


def test_a_kill_during_the_final_save_leaves_the_old_state_and_a_rerun_completes_it(finished, tiny_model_dir):
    root, data, expected = finished
    out = root / "killed-final"
    argv = recipe_args(tiny_model_dir, data, out, **CONSTANT)
    killed = subprocess.run([sys.executable, str(WORKER), "0", "final-save", *argv], env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    assert not (out / "adapter_model.safetensors").exists()  # no torn final model: the old state (none)
    inner_runs = _files(out / "inner_results")
    trainer = cli(argv)  # resumes from checkpoint-2, the run's last step
    assert trainer.state.global_step == 2 and not (out / "checkpoint-3").exists()
    assert _files(out / "inner_results") == inner_runs
    assert not any(p.name.startswith(".final-model") for p in out.iterdir())
    _assert_same_adapter(out, expected)


def test_a_committed_final_save_is_completed_and_a_partial_one_dropped(tmp_path):
    from seal_trl.cli.checkpoints import COMMITTED, STAGING, recover_final_save

    (tmp_path / "adapter_model.safetensors").write_text("old weights")
    (tmp_path / "adapter_config.json").write_text("old config")
    (tmp_path / COMMITTED).mkdir()
    (tmp_path / COMMITTED / "adapter_model.safetensors").write_text("new weights")  # the config was moved already
    recover_final_save(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "new weights"
    assert (tmp_path / "adapter_config.json").read_text() == "old config" and not (tmp_path / COMMITTED).exists()
    (tmp_path / STAGING).mkdir()
    (tmp_path / STAGING / "adapter_model.safetensors").write_text("torn")
    recover_final_save(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "new weights" and not (tmp_path / STAGING).exists()
