"""Appending one run's section to benchmarks/RESULTS.md (runs are never overwritten)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append_section(lines: list[str]) -> str:
    """Append the lines as one section, creating the file with its header if needed; returns the text."""
    text = "\n".join(lines) + "\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is one run; newer runs are appended below.\n")
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)
    return text
