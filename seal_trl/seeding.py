"""Reproducible seeds derived from what a run is about, never from the clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts, e.g. (base_seed, context_id, sample, repeat).

    Python's `hash()` is salted per process; this is the same on every rank and every run.
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def context_key(context: Mapping[str, Any]) -> str:
    """What identifies a context in caches and seeds: its `context_id`, or, when it has none, a hash of its
    content (so contexts without ids never share a cached before-score)."""
    context_id = context.get("context_id")
    if context_id is not None:
        return str(context_id)
    content = json.dumps(context, sort_keys=True, default=str, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:16]
