"""The preflight: before training starts, the most expensive inner run the bounds allow, on the real model and device.

A self-edit the bounds admit may be as long as `min(max_example_tokens, max_seq_length)` tokens per example, with
a batch of `batch_size` such examples (within `max_total_tokens`), in each of the K slots trained at once. The
preflight trains exactly that for a few optimizer steps (the peak memory is reached in the first: activations,
gradients, optimizer state), through the same engine the reward uses, and reports the peak memory and the time per
step. If it runs out of memory, or its peak is over a limit the caller sets, training does not start: the report
says so, and what to lower. Without it, an inner model too large for the device would fail every self-edit with
`out_of_memory` only once generation has run, or (before issue 30) train for hours on rewards of 0.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..plans import TrainingExample, TrainingPlan
from .auto_slots import _time_slots
from .jobs import InnerJob
from .tensors import EncodedExample

# What to change when the worst-case inner run does not fit (SEALConfig's names).
FIT_FIXES = ("lower inner_batch_self_edits (K), inner_max_seq_length (tokens per example) or inner_batch_size, or "
             "set inner_load_in_4bit=True or inner_gradient_checkpointing=True")
PREFLIGHT_STEPS = 2  # optimizer steps per slot: the first allocates everything, the second shows a steady step


class PreflightFailure(RuntimeError):
    """The most expensive inner run the bounds allow does not fit this device: training does not start."""


@dataclass
class PreflightReport:
    """What the preflight ran and measured. `peak_memory_bytes`: GPU memory allocated above what was allocated
    before (CUDA), or the growth of the process's resident memory (CPU). `projected_run_seconds`: the seconds per
    step times the step budget, the longest run a self-edit can ask for (an upper estimate: the measured steps
    include the first one's allocations)."""

    slots: int
    batch_size: int
    tokens_per_example: int
    steps: int
    seconds: float
    peak_memory_bytes: int
    memory_kind: str
    step_budget: int
    problem: str | None = None

    @property
    def fits(self) -> bool:
        return self.problem is None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    @property
    def projected_run_seconds(self) -> float:
        return self.seconds_per_step * self.step_budget

    def describe(self) -> str:
        shape = (f"K={self.slots} slot(s) x {self.batch_size} example(s) x {self.tokens_per_example} tokens, "
                 f"{self.steps} step(s)")
        if self.problem:
            return f"inner-loop preflight ({shape}) does not fit: {self.problem}. To fit, {FIT_FIXES}"
        return (f"inner-loop preflight ({shape}): peak {self.peak_memory_bytes / 2**30:.2f} GiB "
                f"({self.memory_kind}), {self.seconds_per_step:.2f} s per step, so at most "
                f"~{self.projected_run_seconds:.0f} s for a run of the whole step budget ({self.step_budget} steps)")


def worst_case_work(loop, *, batch_size: int | None = None, steps: int = PREFLIGHT_STEPS
                    ) -> list[tuple[InnerJob, list[EncodedExample]]]:
    """K (the configured slots; 1 under "auto") copies of the longest plan the bounds admit, capped to `steps`:
    `batch_size` (default the inner batch size, within the bounds) examples of the longest allowed length, loss on
    every token."""
    config, bounds = loop.config, loop.config.bounds
    tokens = min(bounds.max_example_tokens, config.max_seq_length)
    batch = min(batch_size or config.batch_size, bounds.max_batch_size, bounds.max_examples,
                max(1, bounds.max_total_tokens // tokens))
    vocab = len(loop.tokenizer)
    ids = [(7919 * i + 11) % vocab for i in range(tokens)]  # spread over the vocabulary; the values cost nothing
    encoded = [EncodedExample(input_ids=ids, labels=list(ids))] * batch
    plan = TrainingPlan(examples=(TrainingExample(completion="preflight"),) * batch,
                        learning_rate=config.learning_rate, epochs=steps, batch_size=batch, loss_on="all")
    slots = config.batch_self_edits if isinstance(config.batch_self_edits, int) else 1
    return [(InnerJob(plan, probe=None, seed=config.seed + k), encoded) for k in range(slots)]


def run_preflight(loop, *, batch_size: int | None = None, steps: int = PREFLIGHT_STEPS,
                  max_memory_bytes: int | None = None) -> PreflightReport:
    """Train `worst_case_work(loop)` once and report; `report.fits` is False when it ran out of memory or its peak
    exceeded `max_memory_bytes`. Trains nothing that is kept (every run resets its adapter) and leaves torch's RNG
    as it was. Any other error is raised: it is not a matter of size."""
    work = worst_case_work(loop, batch_size=batch_size, steps=steps)
    job, encoded = work[0]
    report = PreflightReport(slots=len(work), batch_size=len(encoded), tokens_per_example=len(encoded[0].input_ids),
                             steps=job.plan.num_steps, seconds=math.nan, peak_memory_bytes=0,
                             memory_kind="GPU memory allocated" if loop.device.type == "cuda" else
                             "resident-memory growth", step_budget=loop.config.bounds.step_budget)
    with torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []):
        with peak_memory(loop.device) as peak:
            try:
                report.seconds = _time_slots(loop, work, len(work))
            except torch.OutOfMemoryError as err:
                report.problem = f"out of memory ({str(err).splitlines()[0] if str(err) else 'OutOfMemoryError'})"
    report.peak_memory_bytes = peak[0]
    if loop.device.type == "cuda":
        torch.cuda.empty_cache()
    if report.fits and max_memory_bytes is not None and report.peak_memory_bytes > max_memory_bytes:
        report.problem = (f"its peak memory {report.peak_memory_bytes / 2**30:.3f} GiB ({report.memory_kind}) is "
                          f"over the limit of {max_memory_bytes / 2**30:.3f} GiB (inner_preflight_max_memory_gb)")
    return report


@contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the peak memory used inside the block, in bytes: on CUDA what
    torch allocated above what was allocated at entry; on CPU the growth of the resident set, sampled every 2 ms,
    from a heap whose free pages were first handed back to the system (else a block that reuses memory an earlier
    one freed shows no growth)."""
    peak = [0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield peak
        finally:
            torch.cuda.synchronize(device)
            peak[0] = max(0, torch.cuda.max_memory_allocated(device) - start)
        return
    import psutil

    _trim_heap()
    process = psutil.Process()
    start = highest = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal highest
        while not done.wait(0.002):
            highest = max(highest, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(0, max(highest, process.memory_info().rss) - start)


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
