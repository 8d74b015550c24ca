"""`seal-trl evaluate`: the paper's table on any SQuAD-format data, into a new run directory."""

from __future__ import annotations

import argparse
import json

from ..evaluation import evaluate_methods
from ..models import load_policy
from ..reporting import method_table, new_run_dir, write_report


def run_evaluate(args: argparse.Namespace, *, policy_bundle=None, run_dir=None, title: str | None = None) -> int:
    if getattr(args, "task", "knowledge") == "arc":
        from ..tasks.arc.evaluation import run_evaluate_arc

        return run_evaluate_arc(args, policy_bundle=policy_bundle, run_dir=run_dir)
    for name, default in (("methods", ["none", "passage", "self-edit"]), ("inner_epochs", 10), ("inner_lr", 1e-3),
                          ("inner_lora_r", 32)):
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    from ..inner import InnerLoop, InnerLoopConfig
    from ..tasks.knowledge import KnowledgeTask
    from ..tasks.squad import load_contexts

    contexts = load_contexts(args.data, split=args.split, limit=args.limit)
    path, policy, tokenizer = policy_bundle or load_policy(args.model, args.adapter)
    alpha = getattr(args, "inner_lora_alpha", None) or 2 * args.inner_lora_r
    config = InnerLoopConfig(num_epochs=args.inner_epochs, learning_rate=args.inner_lr, lora_r=args.inner_lora_r,
                             lora_alpha=alpha, grader=args.grader, seed=args.seed,
                             batch_self_edits=getattr(args, "batch_self_edits", 1))
    inner = InnerLoop.from_pretrained(path, config)
    inner.sync_from(policy)
    task = KnowledgeTask(style=args.style, chat=bool(getattr(tokenizer, "chat_template", None)))
    teacher = None
    if "teacher" in args.methods:
        if not args.teacher:
            raise ValueError("method 'teacher' needs --teacher MODEL")
        from ..models import load_model_and_tokenizer

        teacher = load_model_and_tokenizer(args.teacher)
    run_dir = run_dir or new_run_dir(args.output_dir, "evaluate")
    title = title or f"SEAL knowledge evaluation ({args.grader}, {len(contexts)} passages)"
    scores, details = {}, {}
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    try:
        evaluate_methods(inner, task, contexts, args.methods, policy=policy, tokenizer=tokenizer, teacher=teacher,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, scores=scores, details=details)
    except KeyboardInterrupt:
        (run_dir / "partial.json").write_text(json.dumps({"scores": scores, **details, "settings": settings},
                                                         indent=2, default=str))
        print(f"\ninterrupted: finished results kept in {run_dir / 'partial.json'}; rerun the same command to "
              "evaluate again (a new run directory is used, nothing is overwritten)")
        return 130
    paths = write_report(run_dir, title=title, scores=scores, metric=args.grader,
                         details={**details, "settings": settings})
    print(method_table(scores, metric=args.grader))
    print(f"\nreport: {paths['markdown']}\njson:   {paths['json']}" + (f"\nchart:  {paths['chart']}"
                                                                        if "chart" in paths else ""))
    return 0
