"""Run directories, method tables (paired against a reference method, or unpaired), JSON/markdown reports, charts."""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from .stats import PairedStats, paired_comparison


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


Errors = Mapping[str, Sequence[Sequence[Any]]]


def failed_adaptations(errors: Errors | None) -> dict[str, tuple[int, int, Counter]]:
    """Per method with at least one failed adaptation: (failed, total, failures per reason), from the per-context
    error lists `evaluate_methods` keeps in `details["errors"]` (one per sample, None where the adaptation ran; the
    ARC evaluation keeps one error per puzzle)."""
    out = {}
    for name, per_context in (errors or {}).items():
        flat = [e for each in per_context for e in (each if isinstance(each, (list, tuple)) else [each])]
        reasons = Counter(str(e) for e in flat if e is not None)
        if reasons:
            out[name] = (sum(reasons.values()), len(flat), reasons)
    return out


def _label(name: str, failures: Mapping[str, tuple[int, int, Counter]]) -> str:
    """The method's name in a table row; marked when some of its adaptations failed (they score as unadapted)."""
    if name not in failures:
        return name
    failed, total, _ = failures[name]
    return f"{name} (FAILED {failed}/{total})"


def failures_note(failures: Mapping[str, tuple[int, int, Counter]]) -> str:
    """A paragraph naming each method whose adaptations failed, how many and why ('' when none did)."""
    if not failures:
        return ""
    parts = [f"{name}: {failed} of {total} ({', '.join(f'{r} x{n}' for r, n in reasons.most_common())})"
             for name, (failed, total, reasons) in failures.items()]
    return ("**Failed adaptations** (a failed adaptation trained nothing and is scored as the unadapted model; the "
            "messages are in report.json's `errors`): " + "; ".join(parts) + ".")


def method_table(scores: Mapping[str, Sequence[float]], *, metric: str, errors: Errors | None = None) -> str:
    """A markdown table: one row per method with mean, 95% CI and count (marked where adaptations failed)."""
    failures = failed_adaptations(errors)
    lines = [f"| method | mean {metric} | 95% CI | n |", "|---|---:|---:|---:|"]
    for name, values in scores.items():
        m, half = mean_ci95(values)
        ci = "n/a" if math.isnan(half) else f"± {half:.3f}"
        lines.append(f"| {_label(name, failures)} | {m:.3f} | {ci} | {len(values)} |")
    return "\n".join([*lines, *(["", failures_note(failures)] if failures else [])])


def _fmt(value: float, spec: str = ".3f", *, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return format(value, ("+" if signed else "") + spec)


def _ci(stats: PairedStats, spec: str = ".3f") -> str:
    if math.isnan(stats.ci_low):
        return "n/a (n < 2)"
    return f"[{_fmt(stats.ci_low, spec, signed=True)}, {_fmt(stats.ci_high, spec, signed=True)}]"


def paired_stats(scores: Mapping[str, Sequence[float]], reference: str, *, seed: int = 0
                 ) -> dict[str, PairedStats]:
    """Every other method against `reference`, passage by passage (method minus reference)."""
    if reference not in scores:
        raise ValueError(f"reference method {reference!r} was not evaluated; choose one of {list(scores)}")
    return {name: paired_comparison(values, scores[reference], seed=seed)
            for name, values in scores.items() if name != reference}


def paired_table(scores: Mapping[str, Sequence[float]], reference: str, *, metric: str, seed: int = 0,
                 errors: Errors | None = None) -> str:
    """Markdown: each method's mean, its mean per-passage difference from `reference` with a bootstrap 95% CI,
    wins/losses/ties, the two-sided sign-test p-value and the number of paired passages. A method some of whose
    adaptations failed (`errors`, see `failed_adaptations`) is marked in its row."""
    paired = paired_stats(scores, reference, seed=seed)
    failures = failed_adaptations(errors)
    lines = [f"| method | mean {metric} | difference vs {reference} | 95% CI | wins/losses/ties | sign-test p | n |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for name, values in scores.items():
        if name == reference:
            lines.append(f"| {_label(name, failures)} | {_fmt(mean_ci95(values)[0])} | (reference) | | | | "
                         f"{len(values)} |")
            continue
        s = paired[name]
        lines.append(f"| {_label(name, failures)} | {_fmt(mean_ci95(values)[0])} | {_fmt(s.mean_difference, signed=True)} | {_ci(s)} "
                     f"| {s.wins}/{s.losses}/{s.ties} | {_fmt(s.sign_p, '.3g')} | {s.n} |")
    return "\n".join(lines)


QA_LABELS = {"contained": "answer contained", "exact_match": "EM", "f1": "F1"}


def qa_table(qa: Mapping[str, Mapping[str, Sequence[float]]], reference: str, *, seed: int = 0) -> str:
    """Markdown: QA accuracy of greedy answers per method in percent, and the paired difference of
    answer-contained accuracy from `reference` (percentage points, bootstrap 95% CI)."""
    lines = [f"| method | answer contained % | difference vs {reference} (points) | 95% CI | EM % | F1 % | n |",
             "|---|---:|---:|---|---:|---:|---:|"]
    contained = {name: [100 * v for v in metrics["contained"]] for name, metrics in qa.items()}
    paired = paired_stats(contained, reference, seed=seed) if reference in contained else {}
    for name, metrics in qa.items():
        em, f1 = (100 * mean_ci95(metrics[m])[0] for m in ("exact_match", "f1"))
        if name in paired:
            s = paired[name]
            diff, ci = _fmt(s.mean_difference, ".1f", signed=True), _ci(s, ".1f")
        else:
            diff, ci = ("(reference)", "") if name == reference else ("n/a", "")
        lines.append(f"| {name} | {_fmt(mean_ci95(contained[name])[0], '.1f')} | {diff} | {ci} | {_fmt(em, '.1f')} "
                     f"| {_fmt(f1, '.1f')} | {len(metrics['contained'])} |")
    return "\n".join(lines)


def per_passage_table(scores: Mapping[str, Sequence[float]], passages: Sequence[str]) -> str:
    """Markdown: one row per held-out passage, one column per method."""
    names = list(scores)
    lines = ["| # | held-out passage | " + " | ".join(names) + " |", "|---:|---|" + "---:|" * len(names)]
    for i, label in enumerate(passages):
        cells = [_fmt(scores[n][i]) if i < len(scores[n]) else "" for n in names]
        lines.append(f"| {i + 1} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_tables(scores: Mapping[str, Sequence[float]], *, metric: str, reference: str | None = None,
                   qa: Mapping[str, Mapping[str, Sequence[float]]] | None = None, seed: int = 0,
                   errors: Errors | None = None) -> str:
    """The tables to print: paired against `reference` (the unpaired method table without one), QA accuracy; methods
    whose adaptations failed (`errors`, `evaluate_methods`' `details["errors"]`) are marked and listed."""
    if reference is None:
        return method_table(scores, metric=metric, errors=errors)
    parts = [f"## Paired against {reference}\n\nPer passage, method minus {reference}: mean, bootstrap 95% CI, "
             "wins/losses/ties and a two-sided sign test (ties dropped).",
             paired_table(scores, reference, metric=metric, seed=seed, errors=errors)]
    note = failures_note(failed_adaptations(errors))
    if note:
        parts.append(note)
    if qa:
        parts += ["## QA accuracy of greedy answers after adaptation", qa_table(qa, reference, seed=seed)]
    return "\n\n".join(parts)


def _json_safe(value: Any) -> Any:
    """NaN becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(run_dir: Path, *, title: str, scores: Mapping[str, Sequence[float]], metric: str,
                 details: Mapping[str, Any], reference: str | None = None, passages: Sequence[str] | None = None,
                 qa: Mapping[str, Mapping[str, Sequence[float]]] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write report.json, report.md and chart.png (when matplotlib is installed) into `run_dir`.

    With a `reference` method every other method is compared with it passage by passage (paired table, chart of
    paired differences with their CIs); `passages` labels the per-passage table; `qa` holds each method's
    per-passage QA accuracy (answer contained, exact_match, f1 in [0, 1]). Without one: means and unpaired CIs.
    """
    summary = {name: dict(zip(("mean", "ci95"), mean_ci95(v)), n=len(v)) for name, v in scores.items()}
    payload: dict[str, Any] = {"title": title, "metric": metric, "summary": summary, "scores": scores}
    errors = details.get("errors") if isinstance(details.get("errors"), Mapping) else None
    markdown = [f"# {title}", summary_tables(scores, metric=metric, reference=reference, qa=qa, seed=seed,
                                             errors=errors)]
    paired = {}
    if reference is not None:
        paired = paired_stats(scores, reference, seed=seed)
        payload.update(reference=reference, paired={name: s.to_dict() for name, s in paired.items()})
        if qa:
            payload["qa_summary"] = {name: {m: mean_ci95(v)[0] for m, v in metrics.items()}
                                     for name, metrics in qa.items()}
            payload["qa_paired"] = {m: {name: s.to_dict() for name, s in
                                        paired_stats({n: q[m] for n, q in qa.items()}, reference, seed=seed).items()}
                                    for m in next(iter(qa.values()))} if reference in qa else {}
        if passages is not None:
            markdown += ["## Per passage", per_passage_table(scores, passages)]
            payload["per_passage"] = [{"passage": label, "scores": {n: v[i] for n, v in scores.items() if i < len(v)}}
                                      for i, label in enumerate(passages)]
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md"}
    paths["json"].write_text(json.dumps(_json_safe({**payload, **details}), indent=2, default=str))
    paths["markdown"].write_text("\n\n".join(markdown) + "\n")
    if reference is not None:
        chart = difference_chart(run_dir / "chart.png", paired, scores, reference=reference, title=title,
                                 metric=metric)
    else:
        chart = bar_chart(run_dir / "chart.png", scores, title=title, metric=metric)
    if chart is not None:
        paths["chart"] = chart
    return paths


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def difference_chart(path: Path, paired: Mapping[str, PairedStats], scores: Mapping[str, Sequence[float]], *,
                     reference: str, title: str, metric: str) -> Path | None:
    """Each method's per-passage differences from `reference` (dots), their mean and bootstrap 95% CI (bar),
    and a line at zero: a CI that does not cross it is a difference the data can tell."""
    plt = _pyplot()
    if plt is None or not paired:
        return None
    names = list(paired)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(names)), 4.2))
    ax.axhline(0.0, color="black", linewidth=1)
    for x, name in enumerate(names):
        diffs = [a - b for a, b in zip(scores[name], scores[reference]) if not (math.isnan(a) or math.isnan(b))]
        ax.scatter([x + 0.15] * len(diffs), diffs, s=10, color="#999999", zorder=2)
        s = paired[name]
        if not math.isnan(s.ci_low):
            error = [[s.mean_difference - s.ci_low], [s.ci_high - s.mean_difference]]
            ax.errorbar([x], [s.mean_difference], yerr=error, fmt="o", color="#4C72B0", capsize=5, zorder=3)
        else:
            ax.plot([x], [s.mean_difference], "o", color="#4C72B0", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(f"{metric}: method - {reference}")
    ax.set_title(textwrap.fill(f"{title}: paired difference vs {reference} per passage (dots), mean and "
                               "bootstrap 95% CI", 70), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_chart(path: Path, scores: Mapping[str, Sequence[float]], *, title: str, metric: str) -> Path | None:
    plt = _pyplot()
    if plt is None:
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
