"""Scoring documents' report halves: the questions the learner never reads, asked of the promoted model.

`seal-trl adapt` scores them before and after a run when the documents have them, so a user sees what was learned
and forgotten on questions the gate did not select for (the gate probes only the `questions` half).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .document_probes import labelled_probe, score_probe
from .documents import Document


def score_report_halves(learner, documents: Sequence[Document]) -> dict[str, dict[str, float]]:
    """Every document's report-half scores (`accuracy`, `soft_accuracy`, `loglik`) on `learner`'s promoted model, as
    the registry has it now; documents without a report half are left out."""
    views = {d.doc_id: d.report_view() for d in documents}
    views = {k: v for k, v in views.items() if v is not None}
    if not views:
        return {}
    learner.sync()
    learner.inner.reset_adapter(0)  # the promoted model alone, no candidate
    return {k: score_probe(learner.model, learner.tokenizer, labelled_probe(v)) for k, v in views.items()}


def format_report_halves(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
                         metric: str = "soft_accuracy") -> str:
    """One line per document, `before -> after (change)` in `metric`, and their mean."""
    lines = [f"report half (questions the gate never read), {metric.replace('_', ' ')}:"]
    for doc_id, b in before.items():
        a = after[doc_id][metric]
        lines.append(f"  {doc_id}: {b[metric]:.2f} -> {a:.2f} ({a - b[metric]:+.2f})")
    if before:
        change = sum(after[d][metric] - before[d][metric] for d in before) / len(before)
        lines.append(f"  mean change over {len(before)} document(s): {change:+.2f}")
    return "\n".join(lines)
