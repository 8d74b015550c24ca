"""What a recipe run leaves in output_dir, and what a rerun does with it: `checkpoint-N` folders and the final model.

- Which checkpoint to resume from: the newest *complete* one (`checkpoint_problem` says why one is not; one a kill
  left half written is skipped with a warning that names it), or `resume_from_checkpoint` when set.
- Whether that checkpoint already is the run's last step (`finished_step`): then nothing is left to train.
- The final save (`save_final_model`) is atomic: the model is written to `.final-model.partial/`, renamed to
  `.final-model/` (the commit), then moved into output_dir. A kill before the commit leaves output_dir's old files
  (the partial folder is removed at the next start); a kill after it is completed at the next start
  (`recover_final_save`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .flags import UsageError

if TYPE_CHECKING:
    from ..config import SEALConfig
    from ..trainer import SEALTrainer

logger = logging.getLogger("seal_trl.cli.checkpoints")

STAGING = ".final-model.partial"
COMMITTED = ".final-model"


def resume_checkpoint(training_args: SEALConfig) -> str | None:
    """`resume_from_checkpoint` when set (it must be complete), else the newest complete checkpoint in
    output_dir, else None."""
    chosen = training_args.resume_from_checkpoint
    if chosen is None:
        return last_complete_checkpoint(training_args.output_dir)
    if not os.path.isdir(chosen):
        raise UsageError(f"resume_from_checkpoint {chosen!r} is not a checkpoint directory; pass a "
                         f"{PREFIX_CHECKPOINT_DIR}-N directory, or leave it unset to resume from output_dir's last one")
    problem = checkpoint_problem(chosen)
    if problem:
        raise UsageError(f"resume_from_checkpoint {chosen!r} is incomplete ({problem}); pass an earlier checkpoint, "
                         "or leave it unset to resume from output_dir's last complete one")
    return chosen


#: What a finished run leaves in output_dir (`save_model`): a policy adapter, or a full model.
FINISHED_MODEL_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def check_no_finished_model(output_dir: str) -> None:
    """With no checkpoint to resume from, training starts over and its final save replaces the model an earlier
    run left in `output_dir` (recipes that save no checkpoints, e.g. smollm2-135m/cpu_demo.yaml): refuse that,
    changing nothing."""
    found = [name for name in FINISHED_MODEL_FILES if os.path.isfile(os.path.join(output_dir, name))]
    if found:
        raise UsageError(f"output_dir {output_dir!r} already holds a trained model ({found[0]}) and no checkpoint to "
                         "resume from: training would start over and overwrite it. Pass a new output_dir, or move "
                         "that model away")


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint in `output_dir` that was completely written. Newer ones that are not (a run killed
    while saving) are skipped with a warning that names them; they are left as they are."""
    if not os.path.isdir(output_dir):
        return None
    for path in reversed(sort_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s (%s): a run was stopped while writing it", path, problem)
    return None


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be resumed, or None when it is complete.

    transformers writes trainer_state.json last, so a parseable one for the step the folder names marks a finished
    save; weight, optimizer and RNG files are also checked for truncation (safetensors header and size, the zip
    directory torch.save writes at the end of a file)."""
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        return "no trainer_state.json"
    try:
        state = TrainerState.load_from_json(state_file)
    except (ValueError, TypeError, OSError, RecursionError):
        return "trainer_state.json is torn"
    step = re.search(r"(\d+)$", os.path.basename(os.path.normpath(path)))
    if step and state.global_step != int(step.group(1)):
        return f"trainer_state.json is for step {state.global_step}"
    for file in sorted(Path(path).rglob("*")):
        if file.is_file() and _truncated(file):
            return f"{file.relative_to(path)} is truncated"
    return None


def _truncated(file: Path) -> bool:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), "pt"):
                return False
        except (SafetensorError, OSError):
            return True
    if file.suffix in (".pt", ".pth", ".bin"):
        return not zipfile.is_zipfile(file)
    return False


def finished_step(checkpoint: str | None, training_args: SEALConfig) -> int | None:
    """The checkpoint's step when it is already the run's last (max_steps, or the epochs' last step when the run
    counts epochs and num_train_epochs is unchanged), else None. transformers would train one step past it."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    if training_args.max_steps > 0:
        last = training_args.max_steps
    elif state.max_steps > 0 and state.num_train_epochs == math.ceil(training_args.num_train_epochs):
        last = state.max_steps
    else:
        return None
    return state.global_step if state.global_step >= last else None


def load_finished_checkpoint(trainer: SEALTrainer, checkpoint: str, step: int) -> None:
    """Put the weights and the state (step, log history) of a checkpoint at the run's last step into the trainer,
    training nothing."""
    logger.info("%s is at step %d, the run's last: nothing is left to train; saving its model as the final one",
                checkpoint, step)
    trainer._load_from_checkpoint(checkpoint)  # transformers' own loader: adapters, sharded and full weights
    trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))


def check_finished_loadable(trainer: SEALTrainer, checkpoint: str | None, step: int | None) -> None:
    """Before training: under DeepSpeed the model's weights are partitioned until `train` prepares the engine, so a
    finished checkpoint's weights cannot be loaded without training; say so instead."""
    if step is not None and trainer.is_deepspeed_enabled:
        raise UsageError(f"{checkpoint} is at step {step}, the run's last: nothing is left to train, and under "
                         f"DeepSpeed its weights are not re-saved to output_dir; use {checkpoint} as the model, or "
                         "raise max_steps to train further")


def save_final_model(trainer: SEALTrainer, output_dir: str) -> None:
    """`trainer.save_model(output_dir)`, atomically (see the module docstring). Every rank calls it (a ZeRO-3
    save gathers the weights collectively); the main process writes and moves the files."""
    root = Path(output_dir)
    staging = root / STAGING
    if trainer.accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging), _internal_call=True)  # the push, if any, is the caller's
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        for file in staging.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(staging, root / COMMITTED)
        _install(root)
    trainer.accelerator.wait_for_everyone()


def recover_final_save(output_dir: str) -> None:
    """Finish a final save a kill interrupted after its commit; drop one interrupted before. Idempotent."""
    root = Path(output_dir)
    if (root / COMMITTED).is_dir():
        logger.warning("completing the final save a stopped run had committed in %s", root / COMMITTED)
        _install(root)
    if (root / STAGING).exists():
        logger.warning("removing %s: a run was stopped while writing its final model (the old files stay)",
                       root / STAGING)
        shutil.rmtree(root / STAGING)


def _install(root: Path) -> None:
    committed = root / COMMITTED
    for entry in sorted(committed.iterdir()):
        target = root / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    committed.rmdir()
