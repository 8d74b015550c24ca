"""`seal-trl evaluate`: the paper's table on any SQuAD-format data, paired against a reference method, into a new
run directory."""

from __future__ import annotations

import argparse
import json

from ..evaluation import METHODS, default_reference, evaluate_methods
from ..generation import check_temperature
from ..models import load_policy
from ..reporting import new_run_dir, summary_tables, write_report


def check_sampling_flags(samples: int, temperature: float | None) -> None:
    """--samples and --temperature (also the demo's), checked before anything loads."""
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if temperature is not None:
        check_temperature(temperature, "--temperature")
    if samples > 1 and temperature == 0:
        raise ValueError(f"--samples {samples} with --temperature 0 scores the same greedy self-edit {samples} times: "
                         "use --temperature > 0 or --samples 1")


def _check_knowledge_flags(args: argparse.Namespace) -> None:
    """Fail before anything loads, with one line naming the flag."""
    check_sampling_flags(getattr(args, "samples", 1), getattr(args, "temperature", None))
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}; choose from {list(METHODS)}")
    if "passage-matched" in args.methods and ("passage" not in args.methods
                                              or not {"self-edit", "base-self-edit", "teacher"} & set(args.methods)):
        raise ValueError("--methods passage-matched needs 'passage' and a self-edit method (self-edit, "
                         "base-self-edit or teacher) in --methods: it trains on the passage for as many tokens as "
                         "those self-edits did")
    if "teacher" in args.methods and not args.teacher:
        raise ValueError("--methods teacher needs --teacher MODEL (the model whose self-edits it scores)")
    if "base-self-edit" in args.methods and not args.adapter:
        raise ValueError("--methods base-self-edit needs --adapter (without one, self-edit is the base policy's "
                         "self-edits)")
    reference = getattr(args, "reference", None)
    if reference is not None and reference not in args.methods:
        raise ValueError(f"--reference {reference!r} is not one of the evaluated --methods {args.methods}")


def _phases(args: argparse.Namespace) -> list[tuple[list[str], bool]]:
    """(methods, whether the inner model follows the policy). With --adapter, every method but `self-edit`
    adapts the base model, as in the paper's table; `self-edit` is the adapter policy adapting itself.
    `passage-matched` comes last: it matches the training tokens of the self-edits evaluated before it."""
    methods = [m for m in args.methods if m != "passage-matched"]
    matched = [m for m in args.methods if m == "passage-matched"]
    if not args.adapter:
        return [(methods + matched, True)]
    return [([m for m in methods if m != "self-edit"], False), ([m for m in methods if m == "self-edit"], True),
            (matched, False)]


def _matched_to(methods: list[str]) -> str:
    """The self-edit method `passage-matched` matches: the policy's own, else the base policy's, else a teacher's."""
    return next((m for m in ("self-edit", "base-self-edit", "teacher") if m in methods), "self-edit")


def run_evaluate(args: argparse.Namespace, *, policy_bundle=None, run_dir=None, title: str | None = None) -> int:
    if getattr(args, "task", "knowledge") == "arc":
        from ..tasks.arc.evaluation import run_evaluate_arc

        if getattr(args, "samples", 1) != 1 or getattr(args, "reference", None) is not None:
            raise ValueError("--samples and --reference apply to --task knowledge only")
        return run_evaluate_arc(args, policy_bundle=policy_bundle, run_dir=run_dir)
    default_methods = ["none", "passage", "base-self-edit", "self-edit"] if args.adapter else \
        ["none", "passage", "self-edit"]
    for name, default in (("methods", default_methods), ("inner_epochs", 10), ("inner_lr", 1e-3),
                          ("inner_lora_r", 32)):
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    _check_knowledge_flags(args)
    from ..inner import InnerLoop, InnerLoopConfig
    from ..tasks.knowledge import KnowledgeTask, check_passages_fit
    from ..tasks.squad import load_contexts

    contexts = load_contexts(args.data, split=args.split, limit=args.limit)
    path, policy, tokenizer = policy_bundle or load_policy(args.model, args.adapter)
    alpha = getattr(args, "inner_lora_alpha", None) or 2 * args.inner_lora_r
    config = InnerLoopConfig(num_epochs=args.inner_epochs, learning_rate=args.inner_lr, lora_r=args.inner_lora_r,
                             lora_alpha=alpha, grader=args.grader, seed=args.seed,
                             batch_self_edits=getattr(args, "batch_self_edits", 1))
    check_passages_fit(contexts, tokenizer, config.example_token_limit)  # before the inner model and the run dir
    inner = InnerLoop.from_pretrained(path, config)  # the base model: with --adapter it follows the policy later
    task = KnowledgeTask(style=args.style, chat=bool(getattr(tokenizer, "chat_template", None)))
    teacher = None
    if "teacher" in args.methods:
        from ..models import load_model_and_tokenizer

        teacher = load_model_and_tokenizer(args.teacher)
    samples = getattr(args, "samples", 1)
    reference = getattr(args, "reference", None) or default_reference(args.methods)
    run_dir = run_dir or new_run_dir(args.output_dir, "evaluate")
    title = title or (f"SEAL knowledge evaluation ({args.grader}, {len(contexts)} passages"
                      + (f", {samples} self-edits each" if samples > 1 else "") + ")")
    scores, details = {}, {}
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    follows_policy = False
    try:
        for methods, follow_policy in _phases(args):
            if not methods:
                continue
            if follow_policy:
                inner.sync_from(policy)
                follows_policy = True
            elif follows_policy:  # back to the base model: a fresh inner loop (it holds no policy weights)
                del inner
                inner = InnerLoop.from_pretrained(path, config)
                follows_policy = False
            evaluate_methods(inner, task, contexts, methods, policy=policy, tokenizer=tokenizer, teacher=teacher,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, samples=samples,
                             temperature=getattr(args, "temperature", None), matched_to=_matched_to(args.methods),
                             qa_metrics=getattr(args, "qa_metrics", True), scores=scores, details=details)
    except KeyboardInterrupt:
        (run_dir / "partial.json").write_text(json.dumps({"scores": scores, **details, "settings": settings},
                                                         indent=2, default=str))
        print(f"\ninterrupted: finished results kept in {run_dir / 'partial.json'}; rerun the same command to "
              "evaluate again (a new run directory is used, nothing is overwritten)")
        return 130
    scores = {m: scores[m] for m in args.methods}
    qa = {m: details["qa"][m] for m in args.methods} if "qa" in details else None
    passages = [f"{t} (`{c}`)" for c, t in zip(details["contexts"], details["titles"])]
    paths = write_report(run_dir, title=title, scores=scores, metric=args.grader, reference=reference,
                         passages=passages, qa=qa, seed=args.seed, details={**details, "settings": settings})
    print(summary_tables(scores, metric=args.grader, reference=reference, qa=qa, seed=args.seed,
                         errors=details.get("errors")))
    print(f"\nreport: {paths['markdown']}\njson:   {paths['json']}" + (f"\nchart:  {paths['chart']}"
                                                                        if "chart" in paths else ""))
    return 0
