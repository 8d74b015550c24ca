"""Appending one run's section to the log at the end of benchmarks/RESULTS.md (runs are never overwritten; the
summary at the top of the file is edited by hand from the latest runs)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def commit() -> str:
    """The checkout's short commit id (with "+changes" when its tracked files differ), or "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True, check=True).stdout
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
        return git("rev-parse", "--short", "HEAD").strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_section(lines: list[str]) -> str:
    """Append the lines as one section, creating the file with its header if needed; returns the text."""
    text = "\n".join(lines) + "\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\n## Summary\n\n(no runs yet)\n\n## Log\n")
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)
    return text
