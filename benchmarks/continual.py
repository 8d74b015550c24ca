"""The paper's continual experiment at small scale: 8 bundled documents learned one after another.

(a) naive: each document's self-edit adapter is merged into the weights, always (as in the paper's forgetting
    experiment); (b) replay + gate: each plan mixes in earlier documents' examples and the candidate is
    promoted only if the gate passes (new document gained, earlier documents dropped <= 2 points on average,
    regression suite within 2%).

Both arms use the same self-edits (written once, greedily, by the base model) and the same seeds. After each
step every document's labelled questions are scored on the promoted model:
- accuracy: percent of a document's questions whose gold answer has the highest mean token log-probability
  among all of that document's gold answers (4-6 candidates, chance ~20%): a multiple-choice accuracy that
  a 135M model can move, unlike generated exact match;
- loglik: mean token log-prob of the gold answer.
Note: the gate of (b) reads the same labelled questions (documents with questions are probed with them).

    PYTHONPATH=. python benchmarks/continual.py                 # embedded SmolLM2-135M, ~15-20 min on 2 cores
    PYTHONPATH=. python benchmarks/continual.py --model tiny    # seconds, a smoke run (not appended)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def load(model_name: str):
    if model_name == "tiny":
        from seal_trl.testing import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        return build_tiny_model(tok), tok
    from seal_trl.models import load_model_and_tokenizer

    return load_model_and_tokenizer(None if model_name == "embedded" else model_name)


def run_arm(name, model_name, docs, edits, args, config_kwargs):
    from seal_trl.continual_learner import ContinualConfig, ContinualLearner
    from seal_trl.doc_probes import labelled_probe, score_probe
    from seal_trl.inner.config import InnerLoopConfig
    from seal_trl.registry import AdapterRegistry

    model, tok = load(model_name)
    inner = InnerLoopConfig(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, num_epochs=args.epochs,
                            learning_rate=args.lr, seed=args.seed)
    config = ContinualConfig(seed=args.seed, max_self_edit_lines=args.max_lines, **config_kwargs)
    registry = AdapterRegistry(tempfile.mkdtemp(prefix=f"continual-{name}-"), create=True, base_model=model_name)
    learner = ContinualLearner(model, tok, registry, config, inner)
    probes = {d.doc_id: labelled_probe(d) for d in docs}

    def evaluate():
        learner.inner.reset_adapter(0)
        return {d: score_probe(learner.model, tok, p) for d, p in probes.items()}

    steps = [{"step": -1, "scores": evaluate()}]
    for i, doc in enumerate(docs):
        t0 = time.perf_counter()
        report = learner.adapt(doc, self_edits=[edits[doc.doc_id]])
        scores = evaluate()
        attempts = learner.registry.get(report.version)["metrics"]["attempts"]
        steps.append({"step": i, "doc": doc.doc_id, "promoted": report.promoted, "reasons": report.verdict.reasons,
                      "attempts": attempts,
                      "replay": report.replay_examples, "seconds": time.perf_counter() - t0, "scores": scores,
                      "objectives": [o.__dict__ for o in report.verdict.objectives]})
        print(f"[{name}] step {i} {doc.doc_id}: promoted={report.promoted} doc0 acc "
              f"{scores[docs[0].doc_id]['accuracy']:.1f} new acc {scores[doc.doc_id]['accuracy']:.1f} "
              f"({time.perf_counter() - t0:.0f} s, {len(attempts)} attempt(s)) {'; '.join(report.verdict.reasons)}",
              flush=True)
    return steps


def summarise(steps, docs):
    """Per step: doc-0 accuracy, mean accuracy over earlier documents, the new document's gain over no training."""
    ids = [d.doc_id for d in docs]
    base = steps[0]["scores"]
    rows = []
    for s in steps[1:]:
        i = s["step"]
        earlier = ids[:i]
        rows.append({
            "step": i, "promoted": s["promoted"],
            "doc0_acc": s["scores"][ids[0]]["accuracy"], "doc0_loglik": s["scores"][ids[0]]["loglik"],
            "earlier_mean_acc": (sum(s["scores"][d]["accuracy"] for d in earlier) / len(earlier)) if earlier else None,
            "new_gain": s["scores"][ids[i]]["accuracy"] - base[ids[i]]["accuracy"],
            "new_gain_loglik": s["scores"][ids[i]]["loglik"] - base[ids[i]]["loglik"],
        })
    # forgetting: accuracy right after a document was learned minus at the end, mean over documents 0..n-2
    final = steps[-1]["scores"]
    forget = [steps[k + 1]["scores"][ids[k]]["accuracy"] - final[ids[k]]["accuracy"] for k in range(len(ids) - 1)]
    learned = [steps[k + 1]["scores"][ids[k]]["accuracy"] - base[ids[k]]["accuracy"] for k in range(len(ids))]
    return rows, sum(forget) / len(forget), sum(learned) / len(learned)


def plot(summary, docs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = {"naive": "(a) naive sequential merge", "gated": "(b) replay + gate",
              "gated-loglik": "(c) replay + gate (loglik objectives)"}
    for arm, label in labels.items():
        if arm not in summary:
            continue
        rows = summary[arm]["rows"]
        axes[0].plot([r["step"] for r in rows], [r["doc0_acc"] for r in rows], marker="o", label=label)
        axes[1].plot([r["step"] for r in rows][1:], [r["earlier_mean_acc"] for r in rows][1:], marker="o", label=label)
    axes[0].axhline(summary["base_doc0_acc"], color="grey", ls="--", lw=1, label="document 0, no training")
    axes[0].set(title="Document 0 accuracy after each step", xlabel="documents learned - 1", ylabel="accuracy (%)")
    axes[1].set(title="Mean accuracy on earlier documents", xlabel="documents learned - 1", ylabel="accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded | tiny | a model path")
    p.add_argument("--documents", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=96, help="longest self-edit")
    p.add_argument("--max-lines", type=int, default=8, help="self-edit lines kept per document")
    p.add_argument("--replay-ratio", type=float, default=1.0)
    p.add_argument("--retries", type=int, default=2, help="(b): gentler retries (lr x 0.35 each) after a refusal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="naive,gated", help="comma-separated: naive, gated, gated-loglik")
    p.add_argument("--loglik-drop", type=float, default=0.05, help="(c): max mean earlier-document drop, nats")
    p.add_argument("--reuse", default=None, help="a continual_results.json whose arms are reused, not rerun")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()

    from seal_trl.continual import GateThresholds
    from seal_trl.documents import Document
    from seal_trl.evaluation import generate_self_edits
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled

    start = time.perf_counter()
    contexts = load_bundled("train")[: args.documents]
    docs = [Document(c["context_id"], c["title"], c["context"], tuple(c["questions"]), "bundled:train")
            for c in contexts]
    model, tok = load(args.model)
    task = KnowledgeTask(chat=bool(getattr(tok, "chat_template", None)))
    edits = dict(zip([d.doc_id for d in docs], generate_self_edits(
        model, tok, task, [d.as_context() for d in docs], max_new_tokens=args.max_new_tokens)))
    del model
    print(f"self-edits written in {time.perf_counter() - start:.0f} s", flush=True)
    arms = {
        "naive": {"promotion": "always", "replay_ratio": 0.0},
        "gated": {"promotion": "gate", "replay_ratio": args.replay_ratio, "gentler_retries": args.retries},
        # the same, with the document objectives on the continuous answer log-likelihood (nats) instead of accuracy
        "gated-loglik": {"promotion": "gate", "replay_ratio": args.replay_ratio, "gentler_retries": args.retries,
                         "thresholds": GateThresholds(probe_metric="loglik", max_earlier_drop=args.loglik_drop)},
    }
    reused = json.loads(Path(args.reuse).read_text()) if args.reuse else {"steps": {}, "summary": {}}
    results, summary = dict(reused["steps"]), dict(reused["summary"])
    for name in args.arms.split(","):
        if name in results:
            continue
        t0 = time.perf_counter()
        results[name] = run_arm(name, args.model, docs, edits, args, arms[name])
        rows, forgetting, learned = summarise(results[name], docs)
        summary[name] = {"rows": rows, "forgetting": forgetting, "learned": learned,
                         "seconds": time.perf_counter() - t0}
    first = next(iter(results.values()))
    summary["base_doc0_acc"] = first[0]["scores"][docs[0].doc_id]["accuracy"]
    wall = time.perf_counter() - start
    smoke = args.model == "tiny" or args.no_append
    if not smoke:
        plot(summary, docs, HERE / "continual_forgetting.png")
        (HERE / "continual_results.json").write_text(json.dumps({"args": vars(args), "summary": summary,
                                                                 "steps": results, "self_edits": edits}, indent=1))
    labels = {"naive": "(a) naive sequential merge", "gated": "(b) replay + gate (accuracy objectives)",
              "gated-loglik": "(c) replay + gate (log-likelihood objectives)"}
    lines = [
        "", f"## Continual adaptation: naive sequential merge vs replay + gate ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"Model `{args.model}`; {len(docs)} bundled train documents in order; the same greedy self-edit per document "
        f"for every arm (written once by the base model, <= {args.max_new_tokens} tokens, <= {args.max_lines} lines, "
        f"plus the passage); LoRA r={args.lora_r} on all projections, lr {args.lr:g}, {args.epochs} epochs. "
        f"(b), (c): replay ratio {args.replay_ratio:g}, up to {args.retries} gentler retries (lr x 0.35 each) after a "
        "refusal for forgetting/regression; gate defaults (new-document gain > 0, mean earlier-document drop <= 2 "
        f"accuracy points, perplexity +2%, QA soft accuracy -2%); (c) measures the document objectives in answer "
        f"log-likelihood (gain > 0 nats, mean earlier drop <= {args.loglik_drop:g} nats). Accuracy: percent of a "
        "document's labelled questions whose gold answer has the highest mean token log-prob among that document's "
        "gold answers (4-6 candidates, chance ~20%); loglik: mean token log-prob of the gold answer. "
        "The gates read the same labelled questions. 1 CPU thread per process on a shared 2-core machine "
        "(other jobs running); this "
        f"invocation's wall time {wall / 60:.1f} min"
        + (f" (arms {', '.join(reused['steps'])} reused from the previous run's JSON, not rerun)."
           if args.reuse else ".")
        + " Per-arm minutes below.", ""]
    fmt = lambda v, f="{:.1f}": "" if v is None else f.format(v)  # noqa: E731
    for name in [a for a in labels if a in summary]:
        arm = summary[name]
        lines += [f"{labels[name]} ({arm['seconds'] / 60:.1f} min):", "",
                  "| step | doc-0 acc | doc-0 loglik | earlier mean acc | new-doc gain acc | new-doc gain loglik | "
                  "promoted |", "|---|---|---|---|---|---|---|",
                  f"| before | {summary['base_doc0_acc']:.1f} | "
                  f"{first[0]['scores'][docs[0].doc_id]['loglik']:.3f} | | | | |"]
        for r in arm["rows"]:
            lines.append(f"| {r['step']} | {r['doc0_acc']:.1f} | {r['doc0_loglik']:.3f} | "
                         f"{fmt(r['earlier_mean_acc'])} | {r['new_gain']:+.1f} | {r['new_gain_loglik']:+.3f} | "
                         f"{'yes' if r['promoted'] else 'no'} |")
        lines += ["", f"Forgetting (accuracy right after a document's step minus at the end, mean over documents "
                  f"0-{len(docs) - 2}): {arm['forgetting']:.1f} points. Learning (accuracy gain of each document "
                  f"right after its step, mean): {arm['learned']:+.1f}. Promoted: "
                  f"{sum(r['promoted'] for r in arm['rows'])} of {len(docs)}.", ""]
    lines += ["Plot: `benchmarks/continual_forgetting.png`; per-step scores, gate objectives and reasons: "
              "`benchmarks/continual_results.json`.", ""]
    if smoke:
        print("\n".join(lines))
    else:
        import sys

        sys.path.insert(0, str(HERE))
        from results_file import append_section

        append_section(lines)


if __name__ == "__main__":
    main()
