"""Reproducible seeds derived from what a run is about, never from the clock."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts, e.g. (base_seed, context_id, sample, repeat).

    Python's `hash()` is salted per process; this is the same on every rank and every run.
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
