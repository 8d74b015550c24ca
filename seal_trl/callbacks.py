"""Keeping `SelfEditReward`'s inner model equal to the policy inside a stock TRL trainer.

`SEALTrainer` syncs its inner loop at every generation boundary itself. A stock `GRPOTrainer` or `RLOOTrainer`
knows nothing about the inner model, so without this callback the reward scores every self-edit by fine-tuning
the policy's *initial* weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import Trainer

    from .inner.engine import InnerLoop
    from .reward import SelfEditReward


def sync_inner_loop(inner_loop: InnerLoop, model: Any, accelerator: Accelerator | None = None) -> None:
    """Copy the current policy `model` into `inner_loop`.

    With an `accelerator`, `model` is the trainer's wrapped model (`trainer.model_wrapped`: DDP or the DeepSpeed
    engine): it is unwrapped as TRL does for generation, and under ZeRO-3 its parameters are gathered first, so
    every process must call this at the same point (the gather is collective).
    """
    if accelerator is None:
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            raise ValueError("the policy's parameters are partitioned by DeepSpeed ZeRO-3: build the callback with "
                             "the trainer (SyncInnerLoopCallback(reward, trainer)) so they are gathered first")
        inner_loop.sync_from(model)
        return
    from trl.models import unwrap_model_for_generation

    with unwrap_model_for_generation(model, accelerator, gather_deepspeed3_params=True) as unwrapped:
        inner_loop.sync_from(unwrapped)


def generates_in_step(global_step: int, gradient_accumulation_steps: int, generate_every: int) -> bool:
    """Whether TRL's GRPO/RLOO trainers generate a new batch during optimizer step `global_step` (0-based).

    They generate before micro-batch m whenever m % generate_every == 0, with generate_every =
    steps_per_generation x num_iterations; optimizer step s runs micro-batches s*GA .. s*GA + GA - 1.
    """
    first = global_step * gradient_accumulation_steps
    last = first + gradient_accumulation_steps - 1
    return first % generate_every == 0 or first // generate_every != last // generate_every


class SyncInnerLoopCallback(TrainerCallback):
    """Syncs the policy into a `SelfEditReward`'s inner model before each generation batch of a TRL trainer.

    ```python
    reward = SelfEditReward(task, InnerLoop.from_pretrained(model_name, InnerLoopConfig()))
    trainer = GRPOTrainer(model=model_name, reward_funcs=[reward], args=args, train_dataset=train)
    trainer.add_callback(SyncInnerLoopCallback(reward, trainer))
    ```

    Works with any trainer whose config has `steps_per_generation` and `num_iterations` (TRL's `GRPOTrainer`,
    `RLOOTrainer`); with another, it syncs before every optimizer step. The policy's weights do not change
    within an optimizer step, so syncing at the step's start is the same as syncing right before generation.
    With `trainer`, the sync goes through the trainer's accelerator exactly as `SEALTrainer`'s does (DDP unwrapped,
    ZeRO-3 parameters gathered by all ranks together); without it, the callback syncs the `model` the trainer
    hands its callbacks, and refuses a ZeRO-3-partitioned one.
    """

    def __init__(self, reward: SelfEditReward | InnerLoop, trainer: Trainer | None = None):
        self.inner_loop = getattr(reward, "inner_loop", reward)
        if not hasattr(self.inner_loop, "sync_from"):
            raise TypeError("SyncInnerLoopCallback needs a SelfEditReward with an inner_loop, or an InnerLoop; "
                            f"got {type(reward).__name__}")
        self.trainer = trainer
        self.syncs = 0

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        steps_per_generation = getattr(args, "steps_per_generation", None)
        if steps_per_generation:
            generate_every = steps_per_generation * getattr(args, "num_iterations", 1)
            if not generates_in_step(state.global_step, args.gradient_accumulation_steps, generate_every):
                return control
        if self.trainer is not None:
            sync_inner_loop(self.inner_loop, self.trainer.model_wrapped, self.trainer.accelerator)
        else:
            sync_inner_loop(self.inner_loop, model)
        self.syncs += 1
        return control
