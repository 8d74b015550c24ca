"""Expected time of one SEAL round from FLOP counts at an assumed device rate and utilisation (an estimate).

Training a token costs about 6 x params FLOPs (forward 2, backward 4; an inner run's frozen base skips the weight
gradients, so 6 is an upper bound there), generating one 2 x params. Time = FLOPs / (device FLOP/s x MFU). Decoding
runs far below a device's peak (it is bound by memory bandwidth), hence its lower default utilisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shapes import ModelShape

TRAIN_FLOPS_PER_PARAM_TOKEN = 6
GENERATE_FLOPS_PER_PARAM_TOKEN = 2

# Dense bf16 peak FLOP/s from the vendors' datasheets (without sparsity); "cpu" is a round 1 TFLOP/s.
DEVICE_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l40s": 362e12, "a10g": 125e12, "cpu": 1e12}
DEFAULT_TRAIN_MFU = 0.3  # batch-1 inner steps: on CPU the inner loop ran at 2.4x its matmul floor (~0.4)
DEFAULT_GENERATE_MFU = 0.05  # memory-bound decoding


@dataclass
class RoundSettings:
    """One round's work: contexts x self-edits, inner runs per self-edit, tokens, M-step epochs, devices."""

    contexts: int = 8
    num_generations: int = 4
    reward_repeats: int = 1
    prompt_tokens: int = 512
    completion_tokens: int = 256  # max_completion_length: each self-edit at its longest
    inner_epochs: int = 10
    probe_tokens: int = 256  # scoring a probe: forward only, before and after each inner run
    kept_per_context: int = 1  # rest_em_top_k (GRPO: every self-edit)
    m_step_epochs: int = 2  # num_iterations
    gpus: int = 1
    device_flops: float = DEVICE_FLOPS["h100"]
    train_mfu: float = DEFAULT_TRAIN_MFU
    generate_mfu: float = DEFAULT_GENERATE_MFU

    def __post_init__(self):
        for name in ("contexts", "num_generations", "reward_repeats", "inner_epochs", "gpus", "m_step_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("device_flops",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("train_mfu", "generate_mfu"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")


@dataclass
class Phase:
    """One phase of a round: FLOPs per device, seconds, and the arithmetic behind them."""

    name: str
    flops: float
    seconds: float
    source: str


def plan_round(shape: ModelShape, r: RoundSettings) -> list[Phase]:
    """Generation, inner runs (training + scoring) and the M-step of one round, per device (work split evenly)."""
    p = shape.num_parameters
    self_edits = r.contexts * r.num_generations
    train_rate = r.device_flops * r.train_mfu
    gen_rate = r.device_flops * r.generate_mfu

    def phase(name: str, flops: float, rate: float, how: str) -> Phase:
        per_device = flops / r.gpus
        return Phase(name, per_device, per_device / rate, f"{how}, / {r.gpus} devices, at {rate / 1e12:.1f} TFLOP/s")

    gen_tokens = self_edits * (r.prompt_tokens + r.completion_tokens)
    runs = self_edits * r.reward_repeats
    inner_tokens = runs * r.inner_epochs * r.completion_tokens
    score_tokens = runs * 2 * r.probe_tokens
    m_tokens = r.contexts * r.kept_per_context * (r.prompt_tokens + r.completion_tokens) * r.m_step_epochs
    return [
        phase("generation", GENERATE_FLOPS_PER_PARAM_TOKEN * p * gen_tokens, gen_rate,
              f"2 x {p / 1e9:.2f}B x {gen_tokens} tokens ({self_edits} self-edits)"),
        phase("inner training", TRAIN_FLOPS_PER_PARAM_TOKEN * p * inner_tokens, train_rate,
              f"6 x {p / 1e9:.2f}B x {inner_tokens} tokens ({runs} runs x {r.inner_epochs} epochs x "
              f"{r.completion_tokens})"),
        phase("inner scoring", GENERATE_FLOPS_PER_PARAM_TOKEN * p * score_tokens, train_rate,
              f"2 x {p / 1e9:.2f}B x {score_tokens} probe tokens (before and after)"),
        phase("M-step", TRAIN_FLOPS_PER_PARAM_TOKEN * p * m_tokens, train_rate,
              f"6 x {p / 1e9:.2f}B x {m_tokens} tokens ({r.m_step_epochs} epochs)"),
    ]
