"""RL variants as pure functions: inner-loop rewards in, per-completion weights (advantages or a keep mask) out.

Rewards arrive flat, grouped by context: `rewards.view(-1, group_size)` has one row per context and one
column per self-edit. NaN marks an unscorable completion; it never gets weight.

- `grpo`: group-normalised advantages (reward - group mean) / (group std + eps); TRL's clipped loss uses them.
- `rest_em`: ReST-EM's E-step filter, a 0/1 keep mask (best-k per context and/or gain above a margin); the
  M-step loss is `rest_em_loss`, a masked NLL on kept completions (no KL, no ratio, no clip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Variant:
    """A named RL variant: how rewards become weights, and whether TRL's GRPO loss consumes them."""

    name: str
    weights: Callable[..., torch.Tensor]
    uses_grpo_loss: bool


VARIANTS: dict[str, Variant] = {}


def register(name: str, *, uses_grpo_loss: bool):
    def wrap(fn):
        VARIANTS[name] = Variant(name=name, weights=fn, uses_grpo_loss=uses_grpo_loss)
        return fn

    return wrap


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(VARIANTS)}") from None


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)


@register("grpo", uses_grpo_loss=True)
def grpo_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4,
                    **_) -> torch.Tensor:
    """(r - mean_group(r)) / (std_group(r) + eps), NaN-aware; unscorable completions get 0."""
    grouped = _grouped(rewards.float(), group_size)
    valid = ~torch.isnan(grouped)
    count = valid.sum(1, keepdim=True).clamp_min(1)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(1, keepdim=True) / count
    centred = torch.where(valid, grouped - mean, torch.zeros_like(grouped))
    advantages = centred
    if scale:
        var = (centred**2).sum(1, keepdim=True) / (count - 1).clamp_min(1)
        advantages = centred / (var.sqrt() + eps)
    return advantages.reshape(-1)


@register("rest_em", uses_grpo_loss=False)
def rest_em_keep_mask(rewards: torch.Tensor, group_size: int, *, top_k: int | None = 1,
                      margin: float | None = 0.0, **_) -> torch.Tensor:
    """1.0 for the self-edits ReST-EM keeps, else 0.0.

    `top_k`: keep at most the k best per context (None: no limit). `margin`: keep only rewards strictly above
    it (None: no threshold). Both set: the best k among those above the margin (the paper keeps the best of 5
    whose gain is positive). Ties go to the earlier completion.
    """
    if top_k is None and margin is None:
        raise ValueError("rest_em needs top_k and/or margin; with neither every self-edit would be kept")
    grouped = _grouped(rewards.float(), group_size)
    eligible = ~torch.isnan(grouped)
    if margin is not None:
        eligible &= grouped > margin
    keep = eligible.clone()
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        # rank within each group: descending reward, earlier index first on ties (stable sort)
        masked = torch.where(eligible, grouped, torch.full_like(grouped, float("-inf")))
        order = torch.sort(masked, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(group_size).expand_as(order).contiguous())
        keep &= rank < top_k
    return keep.float().reshape(-1)


def rest_em_loss(per_token_logps: torch.Tensor, completion_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the tokens of kept completions (an SFT loss on the E-step's picks).

    Returns a zero that still carries the graph when nothing in the batch is kept.
    """
    weights = completion_mask.float() * keep.float().view(-1, 1)
    total = weights.sum()
    if total == 0:
        return (per_token_logps * 0.0).sum()
    return -(per_token_logps * weights).sum() / total
