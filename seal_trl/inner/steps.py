"""What each step of a run sees: the seeded adapter init, the plan's batch order, the learning rate.

The sequential engine and the batched one (`batched.py`) both draw from these functions, so a self-edit
trained alone and the same self-edit trained in a slot next to others see identical initial weights,
identical batches in identical order and identical learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ..plans import TrainingPlan
from .tensors import EncodedExample


def lora_a_inits(shapes: Sequence[torch.Size], seed: int) -> Iterator[torch.Tensor]:
    """Kaiming-uniform LoRA A matrices (as PEFT initialises them) from one seeded generator, in order."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for shape in shapes:
        fresh = torch.empty(shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        yield fresh


def plan_batches(encoded: Sequence[EncodedExample], plan: TrainingPlan, seed: int) -> Iterator[list[EncodedExample]]:
    """The plan's batches, `plan.num_steps` of them: a seeded shuffle each epoch, `plan.batch_size` per batch."""
    order_gen = torch.Generator(device="cpu").manual_seed(seed)
    total, step = plan.num_steps, 0
    while step < total:
        order = torch.randperm(len(encoded), generator=order_gen).tolist()
        for first in range(0, len(order), plan.batch_size):
            if step >= total:
                return
            yield [encoded[i] for i in order[first : first + plan.batch_size]]
            step += 1


def learning_rate_at(plan: TrainingPlan, step: int, schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based): constant, or linear decay to 0 over the plan."""
    if schedule == "linear":
        return plan.learning_rate * (1.0 - step / plan.num_steps)
    return plan.learning_rate
