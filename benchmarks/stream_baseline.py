"""Base-model scores on the bundled continual stream and the regression suite: what a model knows before it learns.

Prints, per document, the labelled-probe soft accuracy and accuracy of the gate half (`questions`) and the report
half (`report_view()`), their means over the stream, and the regression suite's QA scores on its first 16 questions
and on all of them. The stream's entities are invented, so both halves should sit near chance (each question ranks
its gold answer among the half's 6 answers and 4 distractors: ~10%). Questions asking for a year or a count are
the exception: their answer is the only candidate with digits, or one of two, so the base model gets them by type
alone; each document's halves hold the same number of such answers, so their floors match.

    PYTHONPATH=. python benchmarks/stream_baseline.py            # the embedded SmolLM2-135M, CPU: ~1-2 min
"""

from __future__ import annotations

import argparse
import dataclasses
from statistics import mean

from seal_trl.continual.document_probes import labelled_probe, score_probe
from seal_trl.continual.regression import RegressionSuite, regression_scores
from seal_trl.continual.stream import bundled_stream
from seal_trl.models import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded model)")
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    halves: dict[str, list[dict[str, float]]] = {"gate": [], "report": []}
    for doc in bundled_stream():
        gate = score_probe(model, tokenizer, labelled_probe(doc))
        report = score_probe(model, tokenizer, labelled_probe(doc.report_view()))
        halves["gate"].append(gate)
        halves["report"].append(report)
        print(f"{doc.doc_id} {doc.title[:28]:28s} gate soft {gate['soft_accuracy']:5.1f} acc {gate['accuracy']:5.1f}"
              f" | report soft {report['soft_accuracy']:5.1f} acc {report['accuracy']:5.1f}")
    for name, scores in halves.items():
        print(f"mean {name:6s} soft_accuracy {mean(s['soft_accuracy'] for s in scores):.1f}  "
              f"accuracy {mean(s['accuracy'] for s in scores):.1f}  (over {len(scores)} documents)")
    suite = RegressionSuite.bundled()
    for label, qa in (("first 16", suite.qa[:16]), (f"all {len(suite.qa)}", suite.qa)):
        scores = regression_scores(model, tokenizer, dataclasses.replace(suite, qa=qa))
        print(f"regression QA {label}: qa_accuracy {scores['qa_accuracy']:.1f}  "
              f"qa_soft_accuracy {scores['qa_soft_accuracy']:.1f}  perplexity {scores['perplexity']:.2f}")


if __name__ == "__main__":
    main()
