"""Appending one run's section to the day's log, benchmarks/log/YYYY-MM-DD.md (UTC; runs are never overwritten).
The current figures are curated by hand in docs/results.md from the latest runs."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

LOG_DIR = Path(__file__).resolve().parent / "log"


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def commit() -> str:
    """The checkout's short commit id (with "+changes" when its tracked files differ), or "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=LOG_DIR.parent, capture_output=True, text=True, check=True).stdout
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
        return git("rev-parse", "--short", "HEAD").strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log_file(now: datetime | None = None) -> Path:
    """The log file of the UTC day `now` (default: today)."""
    return LOG_DIR / f"{(now or datetime.now(timezone.utc)).strftime('%Y-%m-%d')}.md"


def append_section(lines: list[str]) -> str:
    """Append the lines as one section to today's log file, creating it with its header if needed; returns the
    text."""
    text = "\n".join(lines) + "\n"
    path = log_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmark log, {path.stem}\n\nEvery run's section as its script appended it (UTC), in the "
                        "order they were appended. The current figures are in `docs/results.md`.\n")
    with path.open("a") as fh:
        fh.write(text)
    print(text)
    return text
