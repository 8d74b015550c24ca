"""RL variants as pure functions: inner-loop rewards in, per-completion weights (advantages or a keep mask) out.

Rewards arrive flat, grouped by context: `rewards.view(-1, group_size)` has one row per context and one
column per self-edit. NaN marks an unscorable completion; it never gets weight.

- `grpo`: group-normalised advantages (reward - group mean) / (group std + eps); TRL's clipped loss uses them.
- `rest_em`: ReST-EM's E-step filter, a 0/1 keep mask (best-k per context and/or gain above a margin); the
  M-step loss is `rest_em_loss`, the NLL of kept completions per kept token (no KL, no ratio, no clip).
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


def rank_failures_last(rewards: torch.Tensor, failed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards where a failed self-edit ranks below every self-edit of its group that ran.

    A failed self-edit scores 0, which ties "no change" and beats a harmful self-edit (negative gain): under
    GRPO that teaches the policy to fail on purpose. Here it gets its group's lowest scored reward (0 when none
    of the group scored) minus one group standard deviation (1e-3 when the group has no spread).
    """
    grouped = _grouped(rewards.float(), group_size).clone()
    failed = _grouped(failed.bool(), group_size)
    scored = ~failed & ~torch.isnan(grouped)
    lowest = torch.where(scored, grouped, torch.full_like(grouped, float("inf"))).min(1, keepdim=True).values
    lowest = torch.where(torch.isinf(lowest), torch.zeros_like(lowest), lowest)
    filled = torch.where(scored, grouped, torch.zeros_like(grouped))
    count = scored.sum(1, keepdim=True)
    mean = filled.sum(1, keepdim=True) / count.clamp_min(1)
    var = (torch.where(scored, grouped - mean, torch.zeros_like(grouped)) ** 2).sum(1, keepdim=True)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    penalty = torch.where(std > 0, std, torch.full_like(std, 1e-3))
    return torch.where(failed, lowest - penalty, grouped).reshape(-1)


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


def rest_em_loss(per_token_logps: torch.Tensor, loss_mask: torch.Tensor, kept_tokens: torch.Tensor | float
                 ) -> torch.Tensor:
    """ReST-EM's M-step loss on kept completions: their summed token NLL divided by `kept_tokens`.

    `per_token_logps`/`loss_mask` hold only kept rows (unkept ones cost no forward pass). `kept_tokens` is the
    number of kept tokens in the whole generation batch (scaled to one micro-batch's share by the caller), so
    the loss is a mean over kept tokens whose weights do not depend on how rows fall into micro-batches.
    """
    return -(per_token_logps * loss_mask.float()).sum() / kept_tokens
