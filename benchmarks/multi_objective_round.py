"""Does a reward that pays for not forgetting change what one ReST-EM round learns? (issue 33)

One E-step, two M-steps, one paired comparison:
1. E-step, once: the base policy samples --samples self-edits (T=1) for each of the first --passages bundled training
   passages; each is scored ONCE by `SelfEditReward` with the multi-objective terms (`RewardTerms`): its probe gain
   and its forgetting (the relative rise of the regression suite's held-out perplexity, or the relative drop of its
   QA soft accuracy, --general-metric) come from the same inner run.
2. Two M-steps from the same base policy (`rest_em_from_scores.rest_em_m_step`: keep the best self-edit of each passage
   whose score is above 0, SFT the policy's LoRA on the kept ones): `gain` keeps by the plain gain, `multi` by
   gain - W * max(0, forgetting) (--forgetting-weight W).
3. Each trained policy writes its greedy self-edit for the first --validation bundled validation passages and adapts
   itself on it (the inner model synced to that policy, as in SEAL and `seal_validation.py`); each is scored for gain and
   forgetting by the same inner loop. Paired per passage, multi minus gain: mean difference in gain and in
   forgetting, bootstrap 95% CI, wins/losses, n.

Inner loop: the CPU demo recipe's (recipes/smollm2-135m/cpu_demo.yaml): LoRA r=32, alpha 64 on every linear layer,
lr 1e-3, 5 epochs, loglik grader; K slots (--batch-self-edits) at once. Every inner run is kept in
OUTPUT_DIR/store.jsonl (by content: policy version, passage, self-edit, settings, seed), the samples in
OUTPUT_DIR/samples.json, each trained policy adapter in OUTPUT_DIR/policy-<gain|multi>/ and every scored self-edit in
OUTPUT_DIR/scores.json, so a killed run restarted with the same command recomputes none of them.

    PYTHONPATH=. python benchmarks/multi_objective_round.py --passages 16 --samples 4 --validation 16
    PYTHONPATH=. python benchmarks/multi_objective_round.py --model tiny   # a smoke run: appends nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rest_em_from_scores import rest_em_m_step  # noqa: E402
from results_file import append_section, commit, utc_stamp  # noqa: E402

METHODS = ("gain", "multi")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["embedded", "tiny"], default="embedded",
                   help="embedded: SmolLM2-135M-Instruct; tiny: the test suite's random tiny model (a smoke run that "
                        "appends nothing to benchmarks/log/)")
    p.add_argument("--passages", type=int, default=16, help="the first N bundled training passages (E-step)")
    p.add_argument("--samples", type=int, default=4, help="self-edits sampled per training passage (T=1)")
    p.add_argument("--validation", type=int, default=16, help="the first M bundled validation passages")
    p.add_argument("--forgetting-weight", type=float, default=2.0,
                   help="W in gain - W * max(0, forgetting), the multi-objective keep rule")
    p.add_argument("--general-metric", choices=["perplexity", "qa"], default="perplexity")
    p.add_argument("--style", default="implications")
    p.add_argument("--max-new-tokens", type=int, default=160, help="longest self-edit (the demo recipe's)")
    p.add_argument("--inner-epochs", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--batch-self-edits", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=3e-4, help="M-step learning rate")
    p.add_argument("--iterations", type=int, default=2, help="M-step passes over the round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/multi-objective-round")
    p.add_argument("--no-append", action="store_true", help="do not append to the day's log in benchmarks/log/")
    args = p.parse_args(argv)
    for name in ("passages", "samples", "validation", "inner_epochs", "batch_self_edits", "iterations",
                 "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.forgetting_weight > 0:
        p.error("--forgetting-weight must be > 0 (at 0 the two keep rules are the same)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import gc

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from seal_trl.continual.registry import atomic_write_bytes
    from seal_trl.generation import generate_text, generate_texts
    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.models import load_policy
    from seal_trl.reward import SelfEditReward
    from seal_trl.reward_terms import RewardTerms
    from seal_trl.seeding import context_key, derive_seed
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = None
    if args.model == "tiny":
        from seal_trl.testing import save_tiny_model

        model = str(save_tiny_model(out / "tiny-model"))
    train = load_bundled("train")[:args.passages]
    validation = load_bundled("validation")[:args.validation]
    path, policy, tokenizer = load_policy(model, None)
    task = KnowledgeTask(style=args.style, chat=bool(getattr(tokenizer, "chat_template", None)))
    config = InnerLoopConfig(num_epochs=args.inner_epochs, learning_rate=args.inner_lr, lora_r=32, lora_alpha=64,
                             grader="loglik", seed=args.seed, batch_self_edits=args.batch_self_edits)
    terms = RewardTerms(forgetting_weight=args.forgetting_weight, general_metric=args.general_metric)
    store = out / "store.jsonl"
    scores_path = out / "scores.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "no_append", "validation")}
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {"settings": settings, "wall_s": {}}
    if scores["settings"] != settings:
        sys.exit(f"{scores_path} holds scores for other settings: remove it or pass another --output-dir")
    wall = scores["wall_s"]

    def save() -> None:  # atomic: the script is made to be killed and resumed
        atomic_write_bytes(scores_path, json.dumps(scores, indent=1).encode())

    def score(inner, contexts, edits) -> dict:
        """Each self-edit's gain, forgetting and (multi-objective) reward, one inner run each."""
        reward = SelfEditReward(task, inner, seed=args.seed, store=store, terms=terms)
        scored = reward.score_many(contexts, edits)
        return {"gain": [t["gain"] for t in reward.last_terms],
                "forgetting": [t["forgetting"] for t in reward.last_terms],
                "reward": [t["reward"] for t in reward.last_terms],
                "error": [err for _, _, err in scored], "general_before": reward.general_before(),
                "run_seconds": [sum(r.seconds for r in runs) for _, runs, _ in scored]}

    # ----- 1. E-step: sample and score once -----
    if "estep" not in scores:
        start = time.perf_counter()
        samples_path = out / "samples.json"
        if samples_path.exists():
            edits = json.loads(samples_path.read_text())
        else:
            edits = [generate_texts(policy, tokenizer, task.prompt(c), n=args.samples, max_new_tokens=args.max_new_tokens,
                                    temperature=1.0, seed=derive_seed(args.seed, context_key(c))) for c in train]
            atomic_write_bytes(samples_path, json.dumps(edits).encode())
        wall["sampling"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        inner = InnerLoop.from_pretrained(path, config)
        flat = score(inner, [c for c in train for _ in range(args.samples)], [e for per in edits for e in per])
        del inner
        scores["estep"] = {"edits": edits, **{k: v if not isinstance(v, list) else
                                              [v[i:i + args.samples] for i in range(0, len(v), args.samples)]
                                              for k, v in flat.items()}}
        wall["estep_scoring"] = round(time.perf_counter() - start, 1)
        save()
    estep = scores["estep"]
    del policy
    gc.collect()

    # ----- 2. two M-steps from the same base policy -----
    prompts = [task.prompt(c) for c in train]
    for method in METHODS:
        folder = out / f"policy-{method}"
        if (folder / "adapter_config.json").exists():
            continue
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        _, base, _ = load_policy(model, None)
        lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
        trained = get_peft_model(base, lora)
        keep_by = estep["gain"] if method == "gain" else estep["reward"]
        result = rest_em_m_step(trained, tokenizer, prompts, estep["edits"], keep_by,
                                max_new_tokens=args.max_new_tokens, learning_rate=args.learning_rate,
                                iterations=args.iterations, seed=args.seed)
        scores.setdefault("mstep", {})[method] = {"kept_rows": result["kept_rows"], "losses": result["losses"]}
        trained.save_pretrained(folder)
        wall[f"mstep_{method}"] = round(time.perf_counter() - start, 1)
        save()
        del trained, base
        gc.collect()

    # ----- 3. each trained policy's greedy self-edits on the validation passages, scored -----
    scores.setdefault("validation", {})
    for method in METHODS:
        done = scores["validation"].get(method)
        if done is not None and len(done["gain"]) == len(validation):
            continue
        start = time.perf_counter()
        _, base, _ = load_policy(model, None)
        trained = PeftModel.from_pretrained(base, out / f"policy-{method}").eval()
        edits = [generate_text(trained, tokenizer, task.prompt(c), max_new_tokens=args.max_new_tokens)
                 for c in validation]
        inner = InnerLoop.from_pretrained(path, config)
        inner.sync_from(trained)  # the policy adapts itself, as in SEAL
        scores["validation"][method] = {"edits": edits, **score(inner, validation, edits)}
        wall[f"validation_{method}"] = round(time.perf_counter() - start, 1)
        save()
        del trained, base, inner
        gc.collect()

    lines = report(args, scores, [context_key(c) for c in validation], commit())
    if args.model == "tiny" or args.no_append:
        print("\n".join(lines))
    else:
        append_section(lines)


def report(args: argparse.Namespace, scores: dict, validation_ids: list[str], code: str) -> list[str]:
    """The section: what each keep rule kept, then multi minus gain on the validation passages, paired."""
    from seal_trl.stats import paired_comparison

    estep, mstep, val, wall = scores["estep"], scores.get("mstep", {}), scores["validation"], scores["wall_s"]
    n_train = len(estep["gain"])

    def kept(rows: list[int]) -> dict[int, int]:
        return {row // args.samples: row % args.samples for row in rows}

    by = {m: kept(mstep[m]["kept_rows"]) for m in METHODS} if mstep else {m: {} for m in METHODS}
    same = sum(by["gain"].get(i) == by["multi"].get(i) for i in range(n_train))
    seconds = [s for row in estep.get("run_seconds", []) for s in row]
    seconds += [s for m in METHODS for s in val[m].get("run_seconds", [])]
    seconds = [s for s in seconds if s > 0]  # a failed parse or a stored run took no time here
    flat_f = [f for row in estep["forgetting"] for f in row]
    flat_g = [g for row in estep["gain"] for g in row]
    lines = [f"## A reward that pays for not forgetting: one ReST-EM round kept by gain against gain - "
             f"{args.forgetting_weight:g} x forgetting ({utc_stamp()})", "",
             f"`PYTHONPATH=. python benchmarks/multi_objective_round.py --passages {args.passages} --samples "
             f"{args.samples} --validation {args.validation} --forgetting-weight {args.forgetting_weight:g} "
             f"--general-metric {args.general_metric}` (commit {code}, model {args.model}): E-step once on the first "
             f"{n_train} bundled training passages ({args.samples} self-edits each, T=1, {args.style} prompt, at most "
             f"{args.max_new_tokens} tokens), every self-edit scored once for gain (loglik) and forgetting "
             f"({args.general_metric} of the regression suite, relative, after the same inner run; inner loop as the "
             f"CPU demo recipe: lr {args.inner_lr:g}, LoRA r=32 alpha 64 on every linear layer, {args.inner_epochs} "
             f"epochs, K={args.batch_self_edits}). Two M-steps from the base policy (LoRA r=32 on q/k/v/o, lr "
             f"{args.learning_rate:g}, {args.iterations} passes), keeping per passage the best self-edit above 0 by "
             "`gain` or by `multi` = gain - W max(0, forgetting); each policy's greedy self-edits on the first "
             f"{len(validation_ids)} bundled validation passages, each adapting the policy that wrote it.", "",
             f"E-step: mean gain {sum(flat_g) / len(flat_g):+.4f}, mean forgetting {sum(flat_f) / len(flat_f):+.4f} "
             f"(share of self-edits that forgot: {sum(f > 0 for f in flat_f)} / {len(flat_f)}); kept: gain "
             f"{len(by['gain'])} / {n_train} passages, multi {len(by['multi'])} / {n_train}; the same self-edit (or "
             f"none) kept on {same} of {n_train} passages.", "",
             "| validation term | policy kept by gain | policy kept by multi | multi - gain [95% CI] | "
             "multi above / below | n |", "|---|---:|---:|---:|---:|---:|"]
    for term, better in (("gain", "higher"), ("forgetting", "lower")):
        s = paired_comparison(val["multi"][term], val["gain"][term], seed=args.seed)
        lines.append(f"| {term} ({better} is better) | {s.mean_b:+.4f} | {s.mean_a:+.4f} | "
                     f"{s.mean_difference:+.4f} [{s.ci_low:+.4f}, {s.ci_high:+.4f}] | {s.wins} / {s.losses} | {s.n} |")
    failed = {m: sum(e is not None for e in val[m]["error"]) for m in METHODS}
    lines += ["", f"Failed validation self-edits (gain 0, forgetting 0): gain {failed['gain']}, multi "
              f"{failed['multi']}. {len(seconds)} inner runs here, "
              f"{sum(seconds) / max(len(seconds), 1):.1f} s a run with its measures; wall per phase (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()) + ".", ""]
    return lines


if __name__ == "__main__":
    main()
