"""The continual benchmark's numbers: per-document learning and forgetting with bootstrap CIs over documents,
general-ability loss, learning against the naive arm's, plasticity against learning each document alone, the table
and the chart. Pure functions of the arms' step records (`benchmarks/continual.py` writes them), so they are tested
without a model.

An arm's record: `{"base": {"docs": {doc_id: scores}, "general": general}, "steps": [{"doc", "promoted", "scores":
{doc_id: scores}, "general": general, ...}, ...]}`, where document scores hold `soft_accuracy`, `accuracy` and
`loglik` on the document's report half and `general` holds `perplexity` and `qa_soft_accuracy` on the report half of
the regression suite. The isolated arm's steps hold only the step's own document (learned alone on the base model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seal_trl.stats import bootstrap_ci

#: The issue's goal: forgetting <= 3 soft points, learning >= 80% of the naive arm's, general-ability loss <= 2%.
GOAL = {"forgetting": 3.0, "learning_ratio": 0.8, "general_loss": 0.02}
ARM_LABELS = {
    "naive": "naive merge (always promote)",
    "reject": "replay + anchor + gate, reject",
    "rescale": "replay + anchor + gate, rescale",
    "rescale-kl": "replay + anchor + gate (+ KL), rescale",
    "rescale-budget": "replay + anchor + gate (+ 2% total budget), rescale",
    "gate-only": "gate, reject, no replay or anchor",
    "isolated": "each document alone on the base model",
}


def _mean_ci(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    low, high = bootstrap_ci(values, seed=seed)
    return {"mean": float(np.mean(values)) if len(values) else math.nan, "low": low, "high": high, "n": len(values)}


def learning(arm: Mapping[str, Any], metric: str) -> list[float]:
    """Per document, its report-half score right after its own step minus before any training."""
    base = arm["base"]["docs"]
    return [s["scores"][s["doc"]][metric] - base[s["doc"]][metric] for s in arm["steps"]]


def step_learning(arm: Mapping[str, Any], metric: str) -> list[float] | None:
    """Per document, its report-half score right after its own step minus on the model that step started from (the
    step's own gain, without what earlier promotions had changed); None when a step lacks `before_own`."""
    if not all("before_own" in s for s in arm["steps"]):
        return None
    return [s["scores"][s["doc"]][metric] - s["before_own"][metric] for s in arm["steps"]]


def gate_signal(arm: Mapping[str, Any], metric: str, *, seed: int = 0, resamples: int = 2_000
                ) -> dict[str, Any] | None:
    """Whether the gate's learning signal predicts the report's: per document, the step's gain on the gate half (the
    candidate, as the gate scored it) and on the report half (after the step minus `before_own`), and their rank
    correlation with a bootstrap CI over documents. Only meaningful for an arm that keeps every candidate as trained
    (naive, isolated): a gated arm's refused candidates have a gate-half gain and no report-half one. None when the
    steps lack the records."""
    steps = arm["steps"]
    if len(steps) < 3 or not all("before_own" in s and "gate_view" in s for s in steps):
        return None
    gate = np.array([s["gate_view"]["after_new"][s["doc"]][metric] - s["gate_view"]["before_new"][s["doc"]][metric]
                     for s in steps])
    report = np.array(step_learning(arm, metric))

    def spearman(idx: np.ndarray) -> float:
        a, b = _average_ranks(gate[idx]), _average_ranks(report[idx])
        if a.std() == 0 or b.std() == 0:
            return math.nan
        return float(np.corrcoef(a, b)[0, 1])

    rng = np.random.default_rng(seed)
    draws = np.array([spearman(rng.integers(0, len(steps), len(steps))) for _ in range(resamples)])
    draws = draws[~np.isnan(draws)]
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws.size else (math.nan, math.nan))
    return {"gate_gain": _mean_ci(gate.tolist()), "report_gain": _mean_ci(report.tolist()),
            "spearman": {"mean": spearman(np.arange(len(steps))), "low": float(low), "high": float(high),
                         "n": len(steps)}}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (a bootstrap resample repeats documents: their ties must not be
    broken by position)."""
    ranks = np.empty(len(x))
    ranks[x.argsort(kind="stable")] = np.arange(len(x))
    _, group = np.unique(x, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def questions_for_reliability(correlation: float, questions: float, target: float = 0.8) -> float | None:
    """Questions per half for a split-half reliability of `target`, by the Spearman-Brown formula, from the
    correlation between two halves of `questions` questions each (fewer than `questions` when the halves are already
    more reliable than `target`); None where the correlation is not positive or NaN (no number of questions is
    enough, or nothing to say). It reads the halves as parallel forms: the same kind of facts, asked alike."""
    if not correlation > 0:
        return None
    return questions * target * (1 - correlation) / (correlation * (1 - target))


def half_coverage(documents: Sequence[Mapping[str, Any]], self_edits: Mapping[str, str]) -> dict[str, Any]:
    """Whether the gate and report halves ask about comparable facts: per half, how many answers the shared
    self-edits restate and where in the text the answers sit (0 = the start, 1 = the end). `documents` are JSON
    documents (`doc_id`/`id`, `text`, `questions`, `report_questions`)."""
    out = {}
    for half in ("questions", "report_questions"):
        positions, restated, n = [], 0, 0
        for doc in documents:
            text, edit = doc["text"].lower(), self_edits.get(doc.get("doc_id", doc.get("id")), "").lower()
            for q in doc.get(half) or ():
                answer = q["answers"][0].lower()
                n += 1
                restated += answer in edit
                if answer in text:
                    positions.append(text.find(answer) / max(len(text), 1))
        out["gate" if half == "questions" else "report"] = {
            "answers": n, "in_self_edit": restated,
            "mean_position": float(np.mean(positions)) if positions else math.nan}
    return out


def forgetting(arm: Mapping[str, Any], metric: str) -> list[float]:
    """Per document but the last, its score right after its own step minus at the end of the stream."""
    steps = arm["steps"]
    end = steps[-1]["scores"]
    return [s["scores"][s["doc"]][metric] - end[s["doc"]][metric] for s in steps[:-1]]


def general_loss(arm: Mapping[str, Any]) -> dict[str, float]:
    """At the end against before any training: the relative perplexity rise and the relative QA soft-accuracy drop
    on the report half of the regression suite (positive = worse)."""
    before, after = arm["base"]["general"], arm["steps"][-1]["general"]
    return {"perplexity_rise": after["perplexity"] / before["perplexity"] - 1.0,
            "qa_soft_drop": 1.0 - after["qa_soft_accuracy"] / max(before["qa_soft_accuracy"], 1e-9),
            "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
            "qa_soft_before": before["qa_soft_accuracy"], "qa_soft_after": after["qa_soft_accuracy"]}


def general_signal(arm: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether the regression suite's gate half tells what its report half shows: per promoted step, the held-out
    perplexity change the gate read (candidate against the promoted model, gate half, percent) and the change the
    step made on the report half (after it against after the step before, percent); the report-minus-gate difference
    paired over those steps, and the largest gap. None with fewer than 3 promoted steps or steps lacking the records."""
    previous = arm["base"]["general"]["perplexity"]
    gate, report = [], []
    for s in arm["steps"]:
        if not s.get("general"):
            return None
        current = s["general"]["perplexity"]
        if s.get("promoted"):
            read = next((o.get("value") for o in s.get("objectives", ()) if o.get("name") == "regression_perplexity"),
                        None)
            if read is not None:
                gate.append(100 * read)
                report.append(100 * (current / previous - 1))
        previous = current
    if len(gate) < 3:
        return None
    gaps = [r - g for g, r in zip(gate, report)]
    return {"gate": _mean_ci(gate), "report": _mean_ci(report), "report_minus_gate": _mean_ci(gaps),
            "largest_gap": max(gaps, key=abs), "n": len(gate)}


def ratio_ci(a: Sequence[float], b: Sequence[float], *, seed: int = 0, resamples: int = 10_000
             ) -> dict[str, float]:
    """mean(a) / mean(b) over paired documents, with a paired percentile-bootstrap interval."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    point = float(x.mean() / y.mean()) if y.mean() != 0 else math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    denominators = y[idx].mean(axis=1)
    ratios = np.where(denominators != 0, x[idx].mean(axis=1) / np.where(denominators != 0, denominators, 1), np.nan)
    ratios = ratios[~np.isnan(ratios)]
    low, high = (np.quantile(ratios, [0.025, 0.975]) if ratios.size else (math.nan, math.nan))
    return {"mean": point, "low": float(low), "high": float(high), "n": len(x)}


def plasticity(arm_learning: Sequence[float], alone: Sequence[float], *, seed: int = 0, resamples: int = 10_000
               ) -> dict[str, Any]:
    """Whether earlier documents make later ones harder to learn: d_k = learning of document k in the stream minus
    learning it alone on the base model; its least-squares slope over k (points per document) with a bootstrap
    interval over documents, and the mean d of the first and last thirds of the stream."""
    d = np.asarray(arm_learning, dtype=float) - np.asarray(alone, dtype=float)
    k = np.arange(len(d), dtype=float)

    def slope(kk: np.ndarray, dd: np.ndarray) -> float:
        kc = kk - kk.mean()
        denominator = float((kc * kc).sum())
        return float((kc * (dd - dd.mean())).sum() / denominator) if denominator else math.nan

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    slopes = np.array([slope(k[i], d[i]) for i in idx])
    slopes = slopes[~np.isnan(slopes)]
    third = max(1, len(d) // 3)
    return {"d": d.tolist(), "slope": slope(k, d),
            "slope_low": float(np.quantile(slopes, 0.025)) if slopes.size else math.nan,
            "slope_high": float(np.quantile(slopes, 0.975)) if slopes.size else math.nan,
            "first_third": _mean_ci(d[:third].tolist(), seed), "last_third": _mean_ci(d[-third:].tolist(), seed)}


def _check_same_documents(arms) -> None:
    """Arms are compared document by document in step order: every arm must have learned the same documents in the
    same order (a partial arm a prefix of it), or the pairs would silently mismatch."""
    orders = [[s["doc"] for s in arm["steps"]] for arm in arms]
    longest = max(orders, key=len, default=[])
    for order in orders:
        if order != longest[: len(order)]:
            raise ValueError(f"the arms learned different documents or orders ({order[:3]}... against "
                             f"{longest[:3]}...): they cannot be paired; rerun them on the same pinned documents")


def summarise(arms: Mapping[str, Mapping[str, Any]], metric: str = "soft_accuracy") -> dict[str, Any]:
    """Every arm's learning, forgetting (both metrics), general loss, ratio to the naive arm's learning, plasticity
    against the isolated arm, and its distance to the goal."""
    _check_same_documents(arms.values())
    out: dict[str, Any] = {}
    naive = learning(arms["naive"], metric) if "naive" in arms else None
    alone = learning(arms["isolated"], metric) if "isolated" in arms else None
    naive_step = step_learning(arms["naive"], metric) if "naive" in arms else None
    for name, arm in arms.items():
        learned = learning(arm, metric)
        row: dict[str, Any] = {"learning": _mean_ci(learned), "learning_per_doc": learned,
                               "learning_accuracy": _mean_ci(learning(arm, "accuracy"))}
        if name in ("naive", "isolated"):
            signal = gate_signal(arm, metric)
            if signal is not None:
                row["gate_signal"] = signal
        stepped = step_learning(arm, metric)
        if stepped is not None:
            row["step_learning"] = _mean_ci(stepped)
            row["step_learning_per_doc"] = stepped
            if alone is not None and name != "isolated":
                # plasticity without the drift earlier promotions caused on the document before its own step
                row["plasticity_step"] = plasticity(stepped, alone)
            if naive_step is not None and name not in ("naive", "isolated"):
                # a secondary reference, beside the goal (which stays defined on learning against the base model)
                row["step_learning_ratio"] = ratio_ci(stepped, naive_step)
                row["step_learning_ratio"]["judgeable"] = bool(_mean_ci(naive_step)["low"] > 0)
                row["step_learning_vs_naive"] = _paired(stepped, naive_step)
        if name != "isolated":
            row["forgetting"] = _mean_ci(forgetting(arm, metric))
            row["forgetting_per_doc"] = forgetting(arm, metric)
            row["forgetting_accuracy"] = _mean_ci(forgetting(arm, "accuracy"))
            row["general"] = general_loss(arm)
            signal = general_signal(arm)
            if signal is not None:
                row["general_signal"] = signal
            row["promoted"] = sum(bool(s.get("promoted")) for s in arm["steps"])
            scales = [s.get("scale", 1.0) for s in arm["steps"] if s.get("promoted")]
            row["mean_promoted_scale"] = float(np.mean(scales)) if scales else math.nan
            if naive is not None:
                row["learning_ratio"] = ratio_ci(learned, naive)
                # the ratio means something only when the naive arm's learning is shown to be positive
                row["learning_ratio"]["judgeable"] = bool(_mean_ci(naive)["low"] > 0)
                if name != "naive":
                    row["vs_naive"] = _versus(learned, naive, row["forgetting_per_doc"],
                                              forgetting(arms["naive"], metric))
            if alone is not None:
                row["plasticity"] = plasticity(learned, alone)
                # a second reference for the learning criterion: each document learned alone, with nothing to forget
                # (reported beside the goal, which is defined against the naive arm)
                row["learning_ratio_isolated"] = ratio_ci(learned, alone)
                row["learning_ratio_isolated"]["judgeable"] = bool(_mean_ci(alone)["low"] > 0)
            g = row["general"]
            loss = max(g["perplexity_rise"], g["qa_soft_drop"])
            row["goal"] = {"forgetting_over": row["forgetting"]["mean"] - GOAL["forgetting"],
                           "learning_ratio_short": GOAL["learning_ratio"] - row.get("learning_ratio", {}).get(
                               "mean", math.nan),
                           "general_loss_over": loss - GOAL["general_loss"]}
            others_met = row["goal"]["forgetting_over"] <= 0 and row["goal"]["general_loss_over"] <= 0
            row["goal"]["own_learning_shown"] = bool(row["learning"]["low"] > 0)
            # True/False where every criterion can be judged. Without a learning reference (the naive arm's learning
            # not shown positive) the rule of `closest_to_goal`: an arm whose own learning is not shown positive does
            # not meet the goal (refusing everything would meet it for free); None only when forgetting and general
            # loss hold and the arm's learning is shown, so that only "80% of naive's" cannot be judged.
            if row.get("learning_ratio", {}).get("judgeable", False):
                row["goal"]["met"] = others_met and row["goal"]["learning_ratio_short"] <= 0
            else:
                row["goal"]["met"] = None if others_met and row["goal"]["own_learning_shown"] else False
        out[name] = row
    return out


def _versus(learned: Sequence[float], naive_learned: Sequence[float], forgot: Sequence[float],
            naive_forgot: Sequence[float]) -> dict[str, Any]:
    """This arm minus the naive arm, paired per document: learning and forgetting (mean difference, bootstrap CI,
    wins/losses, n)."""
    return {"learning": _paired(learned, naive_learned), "forgetting": _paired(forgot, naive_forgot)}


def _paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    from seal_trl.stats import paired_comparison

    return paired_comparison(a, b).to_dict()


def closest_to_goal(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The gated arm nearest the goal: each criterion's excess over its limit in units of the limit (0 when met),
    summed; the learning-ratio criterion counts only when the naive arm's learning is shown positive (otherwise
    "80% of naive" has no meaning and the ranking says so, and the arm's own learning must be shown positive instead).
    None when no gated arm was run."""
    ranked = []
    for name, row in summary.items():
        if name in ("naive", "isolated") or "goal" not in row:
            continue
        g = row["goal"]
        parts = {"forgetting": max(0.0, g["forgetting_over"]) / GOAL["forgetting"],
                 "general_loss": max(0.0, g["general_loss_over"]) / GOAL["general_loss"]}
        ratio = row.get("learning_ratio", {})
        if ratio.get("judgeable"):
            parts["learning_ratio"] = max(0.0, g["learning_ratio_short"]) / GOAL["learning_ratio"]
        else:
            # without a learning reference an arm that refuses everything would meet the goal by learning nothing:
            # its own learning must at least be shown positive (one limit-unit over when it is not)
            parts["learning_shown"] = 0.0 if row["learning"]["low"] > 0 else 1.0
        ranked.append((sum(parts.values()), name, parts))
    if not ranked:
        return None
    ranked.sort(key=lambda r: r[0])
    total, name, parts = ranked[0]
    return {"arm": name, "excess": total, "parts": parts,
            "learning_ratio_judged": "learning_ratio" in parts,
            "ranking": [{"arm": n, "excess": t} for t, n, _ in ranked]}


def _ci(c: Mapping[str, float], fmt: str = "{:+.1f}") -> str:
    return f"{fmt.format(c['mean'])} [{fmt.format(c['low'])}, {fmt.format(c['high'])}]"


def table(summary: Mapping[str, Any], metric_name: str = "soft accuracy") -> list[str]:
    """The markdown table: one row per arm (the isolated arm has learning only)."""
    lines = [f"| arm | learning ({metric_name} points) | forgetting ({metric_name} points) | learning / naive | "
             "held-out perplexity rise | QA soft-accuracy drop | promoted | plasticity slope (points/doc) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        label = ARM_LABELS.get(name, name)
        if name == "isolated":
            lines.append(f"| {label} | {_ci(row['learning'])} | | | | | | |")
            continue
        g = row["general"]
        ratio = row.get("learning_ratio")
        ratio = ("" if ratio is None else _ci(ratio, "{:.2f}") if ratio.get("judgeable", True)
                 else "not judgeable (naive's learning not shown)")
        plast = row.get("plasticity")
        slope = (f"{plast['slope']:+.2f} [{plast['slope_low']:+.2f}, {plast['slope_high']:+.2f}]" if plast else "")
        lines.append(f"| {label} | {_ci(row['learning'])} | {_ci(row['forgetting'])} | {ratio} | "
                     f"{100 * g['perplexity_rise']:+.1f}% | {100 * g['qa_soft_drop']:+.1f}% | "
                     f"{row['promoted']} / {len(row['learning_per_doc'])} | {slope} |")
    return lines


def plot(summary: Mapping[str, Any], path, metric_name: str = "soft accuracy") -> None:
    """Learning against forgetting, learning against general-ability loss (one point per arm, CIs over documents),
    and plasticity (learning in the stream minus alone, per document position)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, row in summary.items():
        if name == "isolated":
            continue
        label = ARM_LABELS.get(name, name)
        lr, fg = row["learning"], row["forgetting"]
        g = row["general"]
        line = axes[0].errorbar(fg["mean"], lr["mean"], xerr=[[fg["mean"] - fg["low"]], [fg["high"] - fg["mean"]]],
                                yerr=[[lr["mean"] - lr["low"]], [lr["high"] - lr["mean"]]], fmt="o", capsize=3,
                                label=label)
        color = line[0].get_color()
        loss = 100 * max(g["perplexity_rise"], g["qa_soft_drop"])
        axes[1].errorbar(loss, lr["mean"], yerr=[[lr["mean"] - lr["low"]], [lr["high"] - lr["mean"]]], fmt="o",
                         capsize=3, color=color, label=label)
        if "plasticity" in row:
            axes[2].plot(range(len(row["plasticity"]["d"])), row["plasticity"]["d"], marker=".", lw=1, color=color,
                         label=label)
    axes[0].axvline(GOAL["forgetting"], color="grey", ls="--", lw=1)
    axes[1].axvline(100 * GOAL["general_loss"], color="grey", ls="--", lw=1)
    axes[2].axhline(0, color="grey", lw=1)
    axes[0].set(title="Learning against forgetting", xlabel=f"forgetting ({metric_name} points)",
                ylabel=f"learning ({metric_name} points)")
    # symlog: a naive merge's loss (hundreds of percent) and a gated arm's (a few) on one readable axis
    axes[1].set_xscale("symlog", linthresh=1.0)
    losses = [100 * max(r["general"]["perplexity_rise"], r["general"]["qa_soft_drop"]) for r in summary.values()
              if "general" in r]
    axes[1].set_xlim(min([-1.0] + losses) * 2, max([100 * GOAL["general_loss"]] + losses) * 2)
    axes[1].set(title="Learning against general-ability loss",
                xlabel="general-ability loss (%, worse of perplexity rise and QA drop; symlog)",
                ylabel=f"learning ({metric_name} points)")
    axes[2].set(title="Plasticity: learning in the stream minus alone", xlabel="document position k",
                ylabel=f"{metric_name} points")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def partial_summary(arm: Mapping[str, Any], naive: Mapping[str, Any] | None, metric: str = "soft_accuracy"
                    ) -> dict[str, Any]:
    """An arm stopped before the end of the stream: what its finished steps show (no forgetting: that needs the end).
    Learning of its first k documents, paired with the naive arm's on the same documents; promotions, the scales
    the rescale policy settled on, and the KL to the promoted model of each candidate."""
    from seal_trl.stats import paired_comparison

    steps = arm["steps"]
    _check_same_documents([arm] + ([naive] if naive is not None else []))
    learned = learning(arm, metric)
    out: dict[str, Any] = {"steps": len(steps), "learning": _mean_ci(learned),
                           "promoted": sum(bool(s.get("promoted")) for s in steps),
                           "scales": [s.get("scale", 1.0) for s in steps if s.get("promoted")],
                           "kl_to_promoted": [s.get("kl_to_promoted") for s in steps],
                           "seconds_per_step": float(np.mean([s["seconds"] for s in steps])) if steps else math.nan}
    if naive is not None:
        naive_learned = learning(naive, metric)[: len(steps)]
        out["learning_vs_naive"] = paired_comparison(learned, naive_learned).to_dict()
    if steps and steps[-1].get("general"):
        # general ability after the last finished step, against the base: what a budget arm is about
        out["general_so_far"] = general_loss(arm)
        signal = general_signal(arm)
        if signal is not None:
            out["general_signal"] = signal
    return out
