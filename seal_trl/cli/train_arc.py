"""The few-shot ARC side of the SEAL recipe (`task: arc` in the YAML; see
`recipes/llama3.2-1b/arc_rest_em_1xgpu.yaml`).

    seal-trl train --config recipes/llama3.2-1b/arc_rest_em_1xgpu.yaml [--flag value ...]
    accelerate launch recipes/seal.py --config recipes/llama3.2-1b/arc_rest_em_1xgpu.yaml

The recipe (`seal_trl.cli.train`) parses the YAML with TrlParser and calls `build_arc_trainer` when
`task == "arc"`. The inner loop always uses the ARC grader (2 voted attempts over augmented queries) and
reward = success, whatever `inner_grader`/`inner_reward` say; rank, alpha, target modules, step budget and
the example cap come from `SEALConfig`'s inner_* fields.
"""

from __future__ import annotations

import dataclasses
import logging

from trl import ModelConfig, get_peft_config

from ..config import SEALConfig
from ..models import load_model_and_tokenizer
from ..tasks.arc.task import ARC_BOUNDS, ArcTask, arc_inner_config
from ..tasks.arc.data import load_arc, select_small
from ..trainer import SEALTrainer

logger = logging.getLogger("seal_trl.cli.train_arc")


def build_arc_trainer(script_args, training_args: SEALConfig, model_args: ModelConfig, model_path: str,
                      tokenizer) -> SEALTrainer:
    """A SEALTrainer over the small ARC puzzles named by `script_args` (arc_data, arc_split, arc_max_tokens,
    max_train_contexts, arc_answer_tokens)."""
    bounds = dataclasses.replace(ARC_BOUNDS, max_examples=training_args.inner_max_examples,
                                 step_budget=training_args.inner_step_budget)
    base = training_args.inner_loop_config()
    config = arc_inner_config(lora_r=base.lora_r, lora_alpha=base.lora_alpha, target_modules=base.target_modules,
                              batch_size=base.batch_size, load_in_4bit=base.load_in_4bit, seed=base.seed,
                              max_new_tokens=script_args.arc_answer_tokens, bounds=bounds,
                              batch_self_edits=base.batch_self_edits)
    task = ArcTask(tokenizer=tokenizer, bounds=bounds, seed=training_args.seed)
    contexts = select_small(load_arc(script_args.arc_data, script_args.arc_split),
                            max_tokens=script_args.arc_max_tokens, limit=script_args.max_train_contexts)
    if not contexts:
        raise ValueError(f"no puzzle in {script_args.arc_data} fits arc_max_tokens={script_args.arc_max_tokens}; "
                         "raise arc_max_tokens")
    from ..inner import InnerLoop

    inner_model, _ = load_model_and_tokenizer(model_path, load_in_4bit=config.load_in_4bit)
    if not config.load_in_4bit:
        from accelerate import PartialState

        inner_model.to(PartialState().device)
    logger.info("ARC: %d puzzles, inner LoRA r=%d, step budget %d", len(contexts), config.lora_r, bounds.step_budget)
    return SEALTrainer(model_path, args=training_args, train_dataset=task.build_dataset(contexts, tokenizer),
                       processing_class=tokenizer, task=task, peft_config=get_peft_config(model_args),
                       inner_loop=InnerLoop(inner_model, tokenizer, config))
