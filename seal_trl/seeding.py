"""Reproducible seeds derived from what a run is about, never from the clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts, e.g. (base_seed, context_id, sample, repeat).

    Python's `hash()` is salted per process; this is the same on every rank and every run.
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def content_digest(context: Mapping[str, Any]) -> str:
    """A short sha256 of everything in a context (passage, questions, id), stable across processes."""
    content = json.dumps(context, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def context_key(context: Mapping[str, Any]) -> str:
    """What identifies a context in caches and seeds: its `context_id`, or, when it has none, a hash of its
    content (so contexts without ids never share a cached before-score)."""
    context_id = context.get("context_id")
    if context_id is not None:
        return str(context_id)
    return "sha256:" + content_digest(context)


def check_distinct_context_ids(contexts: Sequence[Mapping[str, Any]], *, where: str = "contexts") -> None:
    """Refuse two different contexts under one `context_id`: caches, seeds and baselines are keyed by it, so one
    would be scored with the other's numbers."""
    seen: dict[str, tuple[int, str]] = {}
    for i, context in enumerate(contexts):
        key, digest = context_key(context), content_digest(context)
        first = seen.setdefault(key, (i, digest))
        if first[1] != digest:
            raise ValueError(f"{where}[{first[0]}] and {where}[{i}] are different contexts with the same context_id "
                             f"{key!r}: give each context its own context_id")
