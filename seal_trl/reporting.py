"""Run directories, method tables with confidence intervals, JSON/markdown reports and bar charts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, stdev
from typing import Any


def new_run_dir(root: str | Path, prefix: str) -> Path:
    """A fresh directory `root/prefix-YYYYmmdd-HHMMSS[-N]`; an earlier run is never reused or overwritten."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / (f"{prefix}-{stamp}" if n == 0 else f"{prefix}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal-approximation 95% confidence interval."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], float("nan")
    return mean(values), 1.96 * stdev(values) / math.sqrt(len(values))


def method_table(scores: Mapping[str, Sequence[float]], *, metric: str) -> str:
    """A markdown table: one row per method with mean, 95% CI and count."""
    lines = [f"| method | mean {metric} | 95% CI | n |", "|---|---:|---:|---:|"]
    for name, values in scores.items():
        m, half = mean_ci95(values)
        ci = "n/a" if math.isnan(half) else f"± {half:.3f}"
        lines.append(f"| {name} | {m:.3f} | {ci} | {len(values)} |")
    return "\n".join(lines)


def write_report(run_dir: Path, *, title: str, scores: Mapping[str, Sequence[float]], metric: str,
                 details: Mapping[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and chart.png (when matplotlib is installed) into `run_dir`."""
    summary = {name: dict(zip(("mean", "ci95"), mean_ci95(v)), n=len(v)) for name, v in scores.items()}
    payload = {"title": title, "metric": metric, "summary": summary, "scores": scores, **details}
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md"}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    paths["markdown"].write_text(f"# {title}\n\n{method_table(scores, metric=metric)}\n")
    chart = bar_chart(run_dir / "chart.png", scores, title=title, metric=metric)
    if chart is not None:
        paths["chart"] = chart
    return paths


def bar_chart(path: Path, scores: Mapping[str, Sequence[float]], *, title: str, metric: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(scores)
    stats = [mean_ci95(scores[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names)), 3.6))
    ax.bar(names, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats], capsize=4,
           color="#4C72B0")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
