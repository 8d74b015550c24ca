"""Does SEAL work here? The paper's table on the held-out validation passages, every method paired.

Methods, all on the same passages with the same inner loop (the training run's settings):
  none                 no adaptation
  passage              fine-tune on the passage alone
  base-implications    the base policy's own self-edits, implications prompt (SEAL's default prompt)
  base-rewrite         ... rewrite prompt          (honest prompt baselines: no RL at all)
  base-self_qa         ... self-QA prompt
  seal-<checkpoint>    the trained policy (each given ReST-EM round's adapter) writing and adapting itself, with
                       the prompt it was trained on (--style, the run's self_edit_style)
  passage-matched      the passage alone, repeated to train on as many tokens as the last round's SEAL
                       self-edits did on the same passage (a compute-matched baseline)

Each finished method is saved to --state at once, so a killed run restarted with the same command resumes at the
first unfinished method. At the end: report.md / report.json / chart.png in --output-dir, paired tables against
passage, passage-matched and the base policy on SEAL's prompt (base-STYLE), and a section appended to benchmarks/log/.

    PYTHONPATH=. python benchmarks/seal_validation.py --run runs/rest-em-rounds \\
        --checkpoints checkpoint-12 checkpoint-24 --limit 64
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from results_file import append_section, utc_stamp  # noqa: E402

STYLES = ("implications", "rewrite", "self_qa")
REFERENCES = ("passage", "passage-matched")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the training run's output_dir (holds checkpoint-N/ adapters)")
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint folders inside --run, in round order")
    p.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", default="bundled", help="bundled, or a SQuAD v1.1 JSON file")
    p.add_argument("--split", default="validation")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--samples", type=int, default=1, help="self-edits per passage and writing method")
    p.add_argument("--temperature", type=float, default=None, help="default: greedy for 1 sample, else 1.0")
    p.add_argument("--style", choices=STYLES, default="implications",
                   help="the prompt the SEAL policy was trained on (the run's self_edit_style)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--inner-epochs", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--inner-lora-r", type=int, default=32)
    p.add_argument("--inner-lora-alpha", type=int, default=64)
    p.add_argument("--batch-self-edits", type=int, default=4)
    p.add_argument("--answer-tokens", type=int, default=16, help="longest greedy answer for the QA metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", default=None, help="resume file (default: OUTPUT_DIR/state.json)")
    p.add_argument("--output-dir", default="runs/seal-validation")
    p.add_argument("--no-append", action="store_true", help="do not append to the day's log in benchmarks/log/")
    p.add_argument("--report-only", action="store_true", help="report the methods finished so far, run nothing")
    p.add_argument("--only", nargs="*", default=None,
                   help="run only these methods (names as in the table, e.g. passage seal-checkpoint-12); the "
                        "others are skipped, and reported only if already in --state")
    p.add_argument("--name", default="seal", help="methods are named NAME-<checkpoint> (e.g. per training run)")
    p.add_argument("--also", nargs="*", default=[],
                   help="methods already in --state (another run's SEAL) to report and to pair this run against")
    return p.parse_args(argv)


INNER_SETTINGS = ("inner_epochs", "inner_lr", "inner_lora_r", "inner_lora_alpha", "answer_tokens", "seed")


def check_resume(state: dict, context_ids: list[str], settings: dict, where: str) -> None:
    """Refuse to add methods to a state made on other passages or with other inner-loop settings: its methods
    would be paired with the new ones passage by passage. Records the settings in a state that has none."""
    saved = state["details"].get("contexts")
    if saved is not None and saved != context_ids:
        first = next((i for i, (a, b) in enumerate(zip(saved, context_ids)) if a != b), min(len(saved),
                                                                                           len(context_ids)))
        raise SystemExit(f"{where} was made on other passages (they differ from passage {first}): use the same "
                         "--data, --split and --limit, or another --output-dir")
    recorded = state.setdefault("inner_settings", dict(settings))
    changed = [k for k, v in settings.items() if k in recorded and recorded[k] != v]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {recorded[k]}" for k in changed)
        raise SystemExit(f"{where} was made with {was}: use the same settings, or another --output-dir")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from seal_trl.evaluation import evaluate_methods
    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.models import load_policy
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.continual.registry import atomic_write_bytes
    from seal_trl.seeding import context_key
    from seal_trl.tasks.squad import load_contexts

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = Path(args.state) if args.state else out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"scores": {}, "details": {}, "wall_s": {}}
    scores, details, wall = state["scores"], state["details"], state["wall_s"]
    contexts = load_contexts(args.data, split=args.split, limit=args.limit)
    n = len(contexts)
    if not args.report_only:
        check_resume(state, [context_key(c) for c in contexts], {k: getattr(args, k) for k in INNER_SETTINGS},
                     str(state_path))
    config = InnerLoopConfig(num_epochs=args.inner_epochs, learning_rate=args.inner_lr, lora_r=args.inner_lora_r,
                             lora_alpha=args.inner_lora_alpha, grader="loglik", seed=args.seed,
                             batch_self_edits=args.batch_self_edits, max_new_tokens=args.answer_tokens)
    common = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, samples=args.samples,
                  temperature=args.temperature, qa_metrics=True, scores=scores, details=details)

    if args.report_only:
        return report(args, state, [f"{args.name}-{c}" for c in args.checkpoints], out)

    def done(name: str) -> bool:
        return len(scores.get(name, [])) == n

    def save() -> None:  # atomic: the script is made to be killed and resumed
        atomic_write_bytes(state_path, json.dumps(state, default=str).encode())

    def timed(name: str, fn) -> None:
        if args.only is not None and name not in args.only:
            return
        if done(name):
            print(f"{name}: already in {state_path}, skipped", flush=True)
            return
        start = time.perf_counter()
        fn()
        wall[name] = round(time.perf_counter() - start, 1)
        save()
        print(f"{name}: {sum(scores[name]) / n:+.4f} mean loglik ({wall[name]:.0f} s)", flush=True)

    seal_names = [f"{args.name}-{c}" for c in args.checkpoints]
    path, base, tokenizer = load_policy(args.model, None)
    chat = bool(getattr(tokenizer, "chat_template", None))

    def base_self_edits(style: str) -> None:
        timed(f"base-{style}", lambda: evaluate_methods(
            inner, KnowledgeTask(style=style, chat=chat), contexts, ["self-edit"], policy=base, tokenizer=tokenizer,
            names={"self-edit": f"base-{style}"}, **common))

    # The order puts the comparisons that matter most first (a run cut short still answers them): passage,
    # the base policy's self-edits with SEAL's own prompt, the last round's policy, the compute-matched passage.
    inner = InnerLoop.from_pretrained(path, config)
    for method in ("none", "passage"):
        timed(method, lambda m=method: evaluate_methods(inner, KnowledgeTask(chat=chat), contexts, [m], **common))
    base_self_edits(args.style)
    for checkpoint, name in reversed(list(zip(args.checkpoints, seal_names))):
        if done(name) and (checkpoint != args.checkpoints[-1] or done(f"{name}:none")):
            print(f"{name}: already in {state_path}, skipped", flush=True)
            continue
        _, policy, policy_tokenizer = load_policy(args.model, str(Path(args.run) / checkpoint))
        inner.sync_from(policy)
        timed(name, lambda: evaluate_methods(inner, KnowledgeTask(style=args.style, chat=chat), contexts,
                                             ["self-edit"], policy=policy,
                                             tokenizer=policy_tokenizer, names={"self-edit": name}, **common))
        if checkpoint == args.checkpoints[-1]:  # what the policy adapter alone does to the answers, unadapted
            timed(f"{name}:none", lambda: evaluate_methods(inner, KnowledgeTask(chat=chat), contexts, ["none"],
                                                           names={"none": f"{name}:none"}, **common))
        del policy
        gc.collect()
    del inner
    gc.collect()
    inner = InnerLoop.from_pretrained(path, config)  # the base model again (it holds no policy weights)
    timed("passage-matched", lambda: evaluate_methods(inner, KnowledgeTask(chat=chat), contexts, ["passage-matched"],
                                                      matched_to=seal_names[-1], **common))
    for style in (s for s in STYLES if s != args.style):  # base-{args.style} ran first
        base_self_edits(style)
    report(args, state, seal_names, out)


def report(args: argparse.Namespace, state: dict, seal_names: list[str], out: Path) -> None:
    from seal_trl.reporting import paired_table, qa_table, write_report

    scores, details, wall = state["scores"], state["details"], state["wall_s"]
    if "contexts" not in details:
        raise SystemExit(f"nothing to report yet in {args.state or out / 'state.json'}: no method has finished")
    order = [m for m in ("none", "passage", "passage-matched", *(f"base-{s}" for s in STYLES), *args.also,
                         *seal_names, f"{seal_names[-1]}:none")
             if len(scores.get(m, [])) == len(details["contexts"])]
    scores = {m: scores[m] for m in order}
    qa = {m: details["qa"][m] for m in order}
    passages = [f"{t} (`{c}`)" for c, t in zip(details["contexts"], details["titles"])]
    title = f"SEAL on {len(passages)} held-out passages (loglik; {args.samples} self-edit(s) per passage and method)"
    paths = write_report(out, title=title, scores=scores, metric="loglik", reference="passage", passages=passages,
                         qa=qa, seed=args.seed, details={**details, "wall_s": wall, "settings": vars(args)})
    tokens = details["train_tokens"]
    mean_tokens = {m: sum(sum(t) / max(len(t), 1) for t in tokens[m]) / len(tokens[m]) for m in order if m in tokens}
    failed = {m: (sum(e is not None for each in details["errors"][m] for e in each),
                  sum(len(each) for each in details["errors"][m])) for m in order if not m.endswith("none")}
    command = "PYTHONPATH=. python benchmarks/seal_validation.py " + " ".join(sys.argv[1:])
    lines = [f"\n## SEAL validation table: {len(passages)} held-out passages ({utc_stamp()})\n",
             f"`{command}`; inner loop: {args.inner_epochs} epochs, lr {args.inner_lr}, LoRA r={args.inner_lora_r} "
             f"alpha={args.inner_lora_alpha}, K={args.batch_self_edits} slots, loglik grader, seed {args.seed}; "
             f"{args.samples} self-edit(s) per passage and method "
             f"({'greedy' if details['sampling']['temperature'] == 0 else 'T=' + str(details['sampling']['temperature'])}"
             f"). Policy adapters from `{args.run}`: {', '.join(args.checkpoints)}.\n"]
    for reference in (r for r in (*REFERENCES, f"base-{args.style}", *args.also) if r in scores):
        lines += [f"Paired against {reference} (per passage, method minus {reference}; bootstrap 95% CI, "
                  "sign test):\n", paired_table(scores, reference, metric="loglik", seed=args.seed), ""]
    lines += ["QA accuracy of the adapted model's greedy answers:\n", qa_table(qa, "passage", seed=args.seed), "",
              "Mean tokens trained per passage: " + ", ".join(f"{m} {v:.0f}" for m, v in mean_tokens.items())
              + "; failed self-edits (reward 0, the unadapted score): "
              + ", ".join(f"{m} {k}/{t}" for m, (k, t) in failed.items())
              + "; wall time per method (s): " + ", ".join(f"{m} {v:.0f}" for m, v in wall.items()) + ".",
              f"Report: `{paths['markdown']}`."]
    if args.no_append:
        print("\n".join(lines))
    else:
        append_section(lines)


if __name__ == "__main__":
    main()
