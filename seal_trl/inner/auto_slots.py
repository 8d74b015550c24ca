"""`batch_self_edits="auto"`: how many self-edits to train at once, chosen by timing a few real steps.

The best K depends on the machine more than on the model: on a 2-core CPU K=4 and K=8 measured about equally fast
(1.35x one at a time) and K=8 only added memory, while a GPU, where one self-edit leaves most of the device idle,
should keep gaining to larger K (not measured yet). So the inner loop
times the same work at each candidate K on the jobs it was given: the first `max(candidates)` self-edits (cycled
when there are fewer), each for the same few optimizer steps, one at a time (K=1, the sequential engine) and in
groups of K slots. Every candidate trains exactly the same batches, so the times compare the engines and nothing
else. The fastest K wins, except that the smallest K within `TOLERANCE` of it is preferred: slots cost memory, and
a K that ties with a smaller one buys nothing. The measurement trains nothing that is kept (every run resets
its adapter first), leaves torch's RNG as it was, and is made once per `InnerLoop`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..plans import SelfEditError
from .batched import _Slot
from .host import LoopHost
from .jobs import InnerJob, InnerResult

logger = logging.getLogger(__name__)

SLOT_CANDIDATES: dict[str, tuple[int, ...]] = {"cpu": (1, 2, 4, 8), "cuda": (1, 2, 4, 8, 16, 32)}
TOLERANCE = 0.05  # a smaller K this close to the fastest one is preferred: slots cost memory
MEASURE_STEPS = 2  # optimizer steps timed per self-edit and candidate


@dataclass
class SlotChoice:
    """The measured choice: `slots` (K), the seconds each candidate took for the same work, and what stopped the
    measurement early (e.g. a K that ran out of memory)."""

    slots: int
    seconds: dict[int, float] = field(default_factory=dict)
    stopped: str | None = None

    def describe(self) -> str:
        times = ", ".join(f"K={k} {s:.2f} s" for k, s in self.seconds.items()) or "nothing timed"
        note = f"; {self.stopped}" if self.stopped else ""
        return f"batch_self_edits='auto' chose K={self.slots} ({times} for the same steps{note})"


def slot_candidates(device: torch.device) -> tuple[int, ...]:
    """The K values tried on this device type (CUDA also stands for ROCm; other devices use the CPU's list)."""
    return SLOT_CANDIDATES.get(device.type, SLOT_CANDIDATES["cpu"])


def pick_slots(seconds: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest K whose time is within `tolerance` of the fastest K's."""
    fastest = min(seconds.values())
    return min(k for k, s in seconds.items() if s <= fastest * (1.0 + tolerance))


def choose_slots(loop: LoopHost, jobs: Sequence[InnerJob], *, candidates: Sequence[int] | None = None,
                 steps: int = MEASURE_STEPS) -> SlotChoice | None:
    """Time `candidates` K on `jobs` and pick one; None when no job has a plan that can train (nothing to time)."""
    candidates = sorted(candidates or slot_candidates(loop.device))
    work = _measurement_work(loop, jobs, count=max(candidates), steps=steps)
    if not work:
        return None
    seconds: dict[int, float] = {}
    stopped = None
    with torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []):
        for k in candidates:
            try:
                _time_slots(loop, work[:1], k, warm_up=True)  # first use of K: allocations, kernel choices
                seconds[k] = _time_slots(loop, work, k)
            except torch.OutOfMemoryError:
                stopped = f"K={k} ran out of memory"
            except Exception as err:  # timing must never take a run down: keep what was measured
                logger.warning("batch_self_edits='auto': timing K=%d failed (%s: %s)", k, type(err).__name__, err)
                stopped = f"K={k} failed ({type(err).__name__})"
            if stopped:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                break
    # nothing measured (even K=1 failed): one at a time, where each run reports its own failure
    return SlotChoice(slots=pick_slots(seconds) if seconds else 1, seconds=seconds, stopped=stopped)


def _measurement_work(loop: LoopHost, jobs: Sequence[InnerJob], *, count: int, steps: int
                      ) -> list[tuple[InnerJob, list]]:
    """`count` (job capped to `steps` steps, encoded examples) pairs from the jobs whose plans encode."""
    usable = []
    for job in jobs:
        try:
            encoded = loop._encode(job.plan)
        except Exception:  # SelfEditError or worse: the run itself reports it; it just cannot be timed
            continue
        capped = job.plan.with_hyperparameters(max_steps=min(steps, job.plan.num_steps))
        usable.append((InnerJob(capped, job.probe, context_id=job.context_id, seed=job.seed), encoded))
    if not usable:
        return []
    return [usable[i % len(usable)] for i in range(count)]


def _time_slots(loop: LoopHost, work: list[tuple[InnerJob, list]], k: int, *, warm_up: bool = False) -> float:
    """Wall seconds to train every piece of `work`, K at a time (K=1: the sequential engine)."""
    if warm_up:  # one step of one self-edit in every slot
        job, encoded = work[0]
        work = [(InnerJob(job.plan.with_hyperparameters(max_steps=1), job.probe, seed=job.seed), encoded)] * k
    seed_of = lambda job: loop.config.seed if job.seed is None else job.seed  # noqa: E731
    _synchronize(loop.device)
    start = time.perf_counter()
    if k == 1:
        for job, encoded in work:
            loop.reset_adapter(seed_of(job))
            try:
                loop._train(job.plan, encoded, seed_of(job), _blank_result())
            except SelfEditError:  # e.g. a NaN loss: that self-edit's own fault, as in a batched slot
                pass
    else:
        trainer = loop._batched_trainer(k)
        for first in range(0, len(work), k):
            trainer.train([_Slot(job=job, encoded=encoded, seed=seed_of(job), position=i, index=i,
                                 result=_blank_result())
                           for i, (job, encoded) in enumerate(work[first : first + k])])
    _synchronize(loop.device)
    return time.perf_counter() - start


def _blank_result() -> InnerResult:
    return InnerResult(score_before=0.0, score_after=None, reward=0.0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
