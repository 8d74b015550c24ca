"""The paper's continual experiment at small scale: 8 bundled documents learned one after another.

(a) naive: each document's self-edit adapter is merged into the weights, always (as in the paper's forgetting
    experiment); (b) replay + anchor + gate: each plan mixes in earlier documents' examples, every step
    also pays a KL anchor to the promoted model on general text, and the candidate is promoted only if the
    gate passes (new document gained, earlier documents dropped <= 2 points on average, regression suite
    within 2%).

Both arms use the same self-edits (written once, greedily, by the base model) and the same seeds. After each
step every document's labelled questions are scored on the promoted model:
- accuracy: percent of a document's questions whose gold answer has the highest mean token log-probability
  among all of that document's gold answers (4-6 candidates, chance ~20%): a multiple-choice accuracy that
  a 135M model can move, unlike generated exact match;
- soft accuracy: the mean softmax weight of the gold answer among those candidates (percent), the same
  comparison made continuous; the default metric of the report and of (b)'s gate (`--metric`);
- loglik: mean token log-prob of the gold answer.
Note: the gate of (b) reads the same labelled questions (documents with questions are probed with them).

    PYTHONPATH=. python benchmarks/continual.py                 # embedded SmolLM2-135M, ~20-30 min on 2 cores
    PYTHONPATH=. python benchmarks/continual.py --model tiny    # seconds, a smoke run (not appended)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    from seal_trl.continual.learner import ContinualConfig, ContinualLearner
    from seal_trl.continual.document_probes import labelled_probe, score_probe
    from seal_trl.inner.config import InnerLoopConfig
    from seal_trl.continual.registry import AdapterRegistry

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
        print(f"[{name}] step {i} {doc.doc_id}: promoted={report.promoted} doc0 {args.metric} "
              f"{scores[docs[0].doc_id][args.metric]:.1f} new {scores[doc.doc_id][args.metric]:.1f} "
              f"({time.perf_counter() - t0:.0f} s, {len(attempts)} attempt(s)) {'; '.join(report.verdict.reasons)}",
              flush=True)
    return steps


def summarise(steps, docs, metric="soft_accuracy"):
    """Per step: doc-0 score, mean score over earlier documents, the new document's gain over no training, in
    `metric` (and hard accuracy and log-likelihood alongside); forgetting and learning means in `metric`."""
    ids = [d.doc_id for d in docs]
    base = steps[0]["scores"]
    rows = []
    for s in steps[1:]:
        i = s["step"]
        earlier = ids[:i]
        sc = s["scores"]
        rows.append({
            "step": i, "promoted": s["promoted"],
            "doc0": sc[ids[0]][metric], "doc0_acc": sc[ids[0]]["accuracy"], "doc0_loglik": sc[ids[0]]["loglik"],
            "earlier_mean": (sum(sc[d][metric] for d in earlier) / len(earlier)) if earlier else None,
            "new_gain": sc[ids[i]][metric] - base[ids[i]][metric],
            "new_gain_acc": sc[ids[i]]["accuracy"] - base[ids[i]]["accuracy"],
            "new_gain_loglik": sc[ids[i]]["loglik"] - base[ids[i]]["loglik"],
        })
    # forgetting: the score right after a document was learned minus at the end, mean over documents 0..n-2
    final = steps[-1]["scores"]
    out = {}
    for m in (metric, "accuracy"):
        forget = [steps[k + 1]["scores"][ids[k]][m] - final[ids[k]][m] for k in range(len(ids) - 1)]
        learned = [steps[k + 1]["scores"][ids[k]][m] - base[ids[k]][m] for k in range(len(ids))]
        out[m] = {"forgetting": sum(forget) / len(forget), "learned": sum(learned) / len(learned),
                  "doc0_end_minus_learned": final[ids[0]][m] - steps[1]["scores"][ids[0]][m]}
    return rows, out


METRIC_NAMES = {"soft_accuracy": "soft accuracy", "accuracy": "accuracy", "loglik": "log-likelihood"}
ARM_LABELS = {"naive": "(a) naive sequential merge", "gated": "(b) replay + KL anchor + gate",
              "gated-loglik": "(c) replay + gate (log-likelihood objectives)"}


def plot(summary, metric, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = METRIC_NAMES[metric]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm, label in ARM_LABELS.items():
        if arm not in summary:
            continue
        rows = summary[arm]["rows"]
        axes[0].plot([r["step"] for r in rows], [r["doc0"] for r in rows], marker="o", label=label)
        axes[1].plot([r["step"] for r in rows][1:], [r["earlier_mean"] for r in rows][1:], marker="o", label=label)
    axes[0].axhline(summary["base_doc0"], color="grey", ls="--", lw=1, label="document 0, no training")
    axes[0].set(title=f"Document 0 {name} after each step", xlabel="documents learned - 1", ylabel=f"{name} (%)")
    axes[1].set(title=f"Mean {name} on earlier documents", xlabel="documents learned - 1", ylabel=f"{name} (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded | tiny | a model path")
    p.add_argument("--documents", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest self-edit")
    p.add_argument("--max-lines", type=int, default=4, help="self-edit lines kept per document")
    p.add_argument("--metric", default="soft_accuracy", choices=["soft_accuracy", "accuracy"],
                   help="the document score reported and used by (b)'s gate")
    p.add_argument("--replay-ratio", type=float, default=1.0)
    p.add_argument("--regularization", type=float, default=0.0, help="(b): L2 pull toward the promoted weights")
    p.add_argument("--anchor-weight", type=float, default=5.0,
                   help="(b): KL anchor to the promoted model on the model's own general texts (0 = off)")
    p.add_argument("--retries", type=int, default=3, help="(b): gentler retries (lr x 0.35 each) after a refusal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="naive,gated", help="comma-separated: naive, gated, gated-loglik")
    p.add_argument("--loglik-drop", type=float, default=0.05, help="(c): max mean earlier-document drop, nats")
    p.add_argument("--reuse", default=None, help="a continual_results.json whose self-edits (and arms) are reused")
    p.add_argument("--reuse-arms", default="", help="comma-separated arms taken from --reuse instead of rerun")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()

    from seal_trl.continual.gate import GateThresholds
    from seal_trl.continual.documents import Document
    from seal_trl.evaluation import generate_self_edits
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled

    start = time.perf_counter()
    contexts = load_bundled("train")[: args.documents]
    docs = [Document(c["context_id"], c["title"], c["context"], tuple(c["questions"]), "bundled:train")
            for c in contexts]
    reused = json.loads(Path(args.reuse).read_text()) if args.reuse else {"steps": {}, "summary": {}}
    if "self_edits" in reused:
        edits = reused["self_edits"]
    else:
        model, tok = load(args.model)
        task = KnowledgeTask(chat=bool(getattr(tok, "chat_template", None)))
        edits = dict(zip([d.doc_id for d in docs], generate_self_edits(
            model, tok, task, [d.as_context() for d in docs], max_new_tokens=args.max_new_tokens)))
        del model
        print(f"self-edits written in {time.perf_counter() - start:.0f} s", flush=True)
    gated = {"promotion": "gate", "replay_ratio": args.replay_ratio, "gentler_retries": args.retries,
             "regularization": args.regularization, "anchor_weight": args.anchor_weight}
    arms = {
        "naive": {"promotion": "always", "replay_ratio": 0.0, "anchor_weight": 0.0},
        "gated": {**gated, "thresholds": GateThresholds(probe_metric=args.metric)},
        # the document objectives on the answer log-likelihood (nats) instead
        "gated-loglik": {**gated, "thresholds": GateThresholds(probe_metric="loglik",
                                                                max_earlier_drop=args.loglik_drop)},
    }
    results = {k: reused["steps"][k] for k in args.reuse_arms.split(",") if k and k in args.arms.split(",")}
    summary = {}
    seconds = {k: v["seconds"] for k, v in reused["summary"].items() if isinstance(v, dict) and "seconds" in v}
    for name in args.arms.split(","):
        if name not in results:
            t0 = time.perf_counter()
            results[name] = run_arm(name, args.model, docs, edits, args, arms[name])
            seconds[name] = time.perf_counter() - t0
        rows, means = summarise(results[name], docs, args.metric)
        summary[name] = {"rows": rows, "means": means, "seconds": seconds.get(name, 0.0)}
    first = next(iter(results.values()))
    summary["base_doc0"] = first[0]["scores"][docs[0].doc_id][args.metric]
    wall = time.perf_counter() - start
    smoke = args.model == "tiny" or args.no_append
    if not smoke:
        plot(summary, args.metric, HERE / "continual_forgetting.png")
        (HERE / "continual_results.json").write_text(json.dumps({"args": vars(args), "summary": summary,
                                                                 "steps": results, "self_edits": edits}, indent=1))
    m = METRIC_NAMES[args.metric]
    lines = [
        "", f"## Continual adaptation: naive sequential merge vs replay + anchor + gate ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"`python benchmarks/continual.py {' '.join(sys.argv[1:])}`. Model `{args.model}`; {len(docs)} bundled train "
        "documents in order; the same greedy self-edit per document for every arm (written once by the base model, "
        f"<= {args.max_new_tokens} tokens, <= {args.max_lines} lines, plus the passage); LoRA r={args.lora_r} on all "
        f"projections, lr {args.lr:g}, {args.epochs} epochs. (b): replay ratio {args.replay_ratio:g}, L2 toward the "
        f"promoted weights {args.regularization:g}, KL anchor weight {args.anchor_weight:g} (general texts: the "
        f"model's own answers to generic prompts), up to {args.retries} gentler retries (lr x 0.35 each) after a "
        f"refusal for forgetting or regression; gate defaults on {m} (new-document gain > 0, mean earlier-document "
        "drop <= 2 points, held-out perplexity +2%, QA soft accuracy -2%). Per document, over its labelled "
        "questions, each gold answer competes with the document's other gold answers (4-6 candidates) by mean "
        "token log-prob: accuracy is the percent where the gold answer wins (chance ~20%), soft accuracy the mean "
        "softmax weight of the gold answer (percent; continuous, so a 5-question document is not stuck in 20-point "
        "steps). The gate reads the same labelled questions. "
        f"This invocation's wall time {wall / 60:.1f} min"
        + (f" (arms {', '.join(k for k in reused['steps'] if k in results)} reused from the previous JSON)."
           if args.reuse else ".") + " Per-arm minutes below.", ""]
    fmt = lambda v, f="{:.1f}": "" if v is None else f.format(v)  # noqa: E731
    for name in [a for a in ARM_LABELS if a in summary]:
        arm = summary[name]
        lines += [f"{ARM_LABELS[name]} ({arm['seconds'] / 60:.1f} min):", "",
                  f"| step | doc-0 {m} | doc-0 acc | earlier mean {m} | new-doc gain {m} | new-doc gain acc | "
                  "promoted |", "|---|---|---|---|---|---|---|",
                  f"| before | {summary['base_doc0']:.1f} | {first[0]['scores'][docs[0].doc_id]['accuracy']:.1f} "
                  "| | | | |"]
        for r in arm["rows"]:
            lines.append(f"| {r['step']} | {r['doc0']:.1f} | {r['doc0_acc']:.1f} | {fmt(r['earlier_mean'])} | "
                         f"{r['new_gain']:+.1f} | {r['new_gain_acc']:+.1f} | {'yes' if r['promoted'] else 'no'} |")
        ms, ma = arm["means"][args.metric], arm["means"]["accuracy"]
        lines += ["", f"Forgetting (a document's score right after its step minus at the end, mean over documents "
                  f"0-{len(docs) - 2}): {ms['forgetting']:.1f} {m} points ({ma['forgetting']:.1f} accuracy points). "
                  f"Learning (each document's gain right after its step, mean): {ms['learned']:+.1f} "
                  f"({ma['learned']:+.1f}). Document 0 at the end minus right after its step: "
                  f"{ms['doc0_end_minus_learned']:+.1f} ({ma['doc0_end_minus_learned']:+.1f}). Promoted: "
                  f"{sum(r['promoted'] for r in arm['rows'])} of {len(docs)}.", ""]
    lines += ["Plot: `benchmarks/continual_forgetting.png`; per-step scores, gate objectives and reasons: "
              "`benchmarks/continual_results.json`.", ""]
    if smoke:
        print("\n".join(lines))
    else:
        sys.path.insert(0, str(HERE))
        from results_file import append_section

        append_section(lines)


if __name__ == "__main__":
    main()
