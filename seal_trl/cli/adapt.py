"""`seal-trl adapt` (learn documents one by one through the promotion gate) and `seal-trl registry`."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..continual.config import MAX_PENALTY_WEIGHT, MAX_RESCALE_STEPS
from ..continual.registry import MANIFEST, AdapterRegistry, RegistryError, check_new_registry_location
from ..continual.registry_schema import printable
from ..tasks.knowledge import STYLES
from .flags import (UsageError, check_adapter, inner_epochs, inner_learning_rate, inner_lora_r, integer, max_new_tokens,
                    number, phrase)


def add_continual_commands(sub) -> None:
    """Register the `adapt` and `registry` subcommands on `seal-trl`'s subparsers."""
    adapt = sub.add_parser("adapt", help="learn new documents one at a time into gated, versioned adapters")
    adapt.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2-135M)")
    adapt.add_argument("--policy-adapter", default=None, help="a SEAL-trained PEFT policy adapter, merged first")
    adapt.add_argument("--documents", nargs="+", required=True,
                       help="document files (.txt/.md/.json) or directories of them, learned in order")
    adapt.add_argument("--registry", required=True, help="registry directory (created if new or empty)")
    adapt.add_argument("--mode", choices=["merge", "separate"], default="merge",
                       help="fold promoted adapters into the weights, or keep them as separate adapters")
    adapt.add_argument("--promotion", choices=["gate", "always", "never"], default="gate")
    adapt.add_argument("--replay-ratio", type=number(0), default=1.0, help="earlier examples per new example")
    adapt.add_argument("--max-replay-examples", type=integer(0), default=16)
    adapt.add_argument("--regularization", type=number(0, MAX_PENALTY_WEIGHT), default=0.0,
                       help="L2 weight on the candidate's weight delta (pull toward the promoted weights)")
    adapt.add_argument("--anchor-weight", type=number(0, MAX_PENALTY_WEIGHT), default=5.0,
                       help="weight of a KL anchor to the promoted model on general text at every step (0 = off)")
    adapt.add_argument("--anchor-text", default=None, metavar="FILE",
                       help="general texts for the anchor, one per paragraph (default: the model's own answers to "
                            "generic prompts)")
    adapt.add_argument("--gentler-retries", type=integer(0), default=0,
                       help="when the gate refuses for forgetting/regression, retrain with a smaller learning rate "
                            "up to this many times")
    adapt.add_argument("--retry-lr-factor", type=number(0, 1, exclusive=True), default=0.35,
                       help="learning-rate factor per retry")
    adapt.add_argument("--gate-policy", choices=["reject", "rescale"], default="reject",
                       help="a candidate refused for anything besides its gain: keep it refused (reject), or shrink "
                            "its update until the gate passes and promote that (rescale, STABLE)")
    adapt.add_argument("--rescale-floor", type=number(0, 1, exclusive=True), default=0.125,
                       help="rescale: the smallest factor tried (first); refused there, the candidate is rejected")
    adapt.add_argument("--rescale-steps", type=integer(1, MAX_RESCALE_STEPS), default=4,
                       help="rescale: bisection steps between the floor and 1 (each gates the candidate again)")
    adapt.add_argument("--num-self-edits", type=integer(1), default=1, help="self-edits per document; the best is kept")
    adapt.add_argument("--style", default="implications", choices=STYLES, help="self-edit prompt")
    adapt.add_argument("--max-new-tokens", type=max_new_tokens, default=128, help="longest self-edit")
    adapt.add_argument("--inner-epochs", type=inner_epochs, default=10)
    adapt.add_argument("--inner-lr", type=inner_learning_rate, default=1e-3)
    adapt.add_argument("--inner-lora-r", type=inner_lora_r, default=32)
    adapt.add_argument("--probe-metric", choices=["accuracy", "soft_accuracy", "loglik"], default="soft_accuracy",
                       help="the document score the gate compares (soft accuracy: the gold answer's mean softmax "
                            "weight among the probe's answers, percent)")
    adapt.add_argument("--min-new-gain", type=number(), default=0.0)
    adapt.add_argument("--max-earlier-drop", type=number(0), default=2.0, help="points of the probe metric")
    adapt.add_argument("--max-perplexity-increase", type=number(0), default=0.02, help="relative, 0.02 = 2%%")
    adapt.add_argument("--max-qa-drop", type=number(0), default=0.02, help="relative, 0.02 = 2%%")
    adapt.add_argument("--max-kl-to-promoted", type=number(0), default=None, metavar="NATS",
                       help="refuse candidates whose mean per-token KL(promoted || candidate) on the new document's "
                            "texts is larger (always measured and stored; default: not gated)")
    adapt.add_argument("--max-total-perplexity-increase", type=number(0), default=None, metavar="FRACTION",
                       help="a budget for the whole stream: refuse candidates whose held-out perplexity is more than "
                            "this above the base model's (relative; the per-step limit still applies; default: none)")
    adapt.add_argument("--max-total-qa-drop", type=number(0), default=None, metavar="FRACTION",
                       help="a budget for the whole stream: refuse candidates whose QA soft accuracy is more than this "
                            "below the base model's (relative; default: none)")
    adapt.add_argument("--no-regression", action="store_true", help="skip the regression suite objectives")
    adapt.add_argument("--regression-suite", default=None, metavar="FILE",
                       help="your own general set for the regression objectives: a JSON object with `heldout_text` "
                            "and `qa` (questions with `choices` and the `answer` index), the shape of the bundled "
                            "seal_trl/data/regression_suite.json (default: the bundled suite)")
    adapt.add_argument("--banned-phrase", action="append", default=[], type=phrase,
                       help="a constraint: refuse candidates whose answers contain this phrase (repeatable)")
    adapt.add_argument("--max-document-mb", type=number(0, 1000, exclusive=True), default=1.0,
                       help="refuse larger document files")
    adapt.add_argument("--chunk-chars", type=integer(200), default=2000,
                       help="split longer texts into documents this long")
    adapt.add_argument("--lock-timeout", type=number(0), default=0.0,
                       help="seconds to wait for another run holding the registry (0: fail at once)")
    adapt.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                       help="after the run, push the promoted version (and its chain) with a model card")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.set_defaults(func=run_adapt)

    reg = sub.add_parser("registry", help="list, promote or roll back versions of a continual registry")
    reg.add_argument("action", choices=["list", "promote", "rollback", "push"])
    reg.add_argument("version", nargs="?", default=None, help="a version name, e.g. v0003")
    reg.add_argument("--registry", required=True, help="registry directory")
    reg.add_argument("--reason", default="", help="promote: why a version the gate refused is promoted anyway")
    reg.add_argument("--repo-id", default=None, help="push: the Hub repository")
    reg.add_argument("--lock-timeout", type=number(0), default=10.0)
    reg.set_defaults(func=run_registry)


def _base_model_name(args: argparse.Namespace) -> str:
    name = args.model or "embedded:SmolLM2-135M-Instruct"
    return f"{name}+{args.policy_adapter}" if args.policy_adapter else name


def _read_anchor_texts(path: str, max_bytes: int) -> tuple[str, ...]:
    """The paragraphs (blank-line separated) of a UTF-8 text file, validated (and size-limited) like a document."""
    from ..continual.documents import DocumentError, read_document_file
    from ..safe_json import check_regular_file

    if not Path(path).exists():
        raise DocumentError(f"{path}: no such file (--anchor-text)")
    check_regular_file(Path(path), error=DocumentError, hint=" (--anchor-text takes a UTF-8 text file)")
    docs = read_document_file(Path(path), max_bytes=max_bytes, chunk_chars=10**9)
    texts = tuple(p.strip() for d in docs for p in d.text.split("\n\n") if p.strip())
    if not texts:
        raise DocumentError(f"{path}: no text in it (--anchor-text)")
    return texts


def _read_regression_suite(args: argparse.Namespace):
    """The suite of --regression-suite, checked before the model loads; None for the bundled one."""
    if args.regression_suite is None:
        return None
    if args.no_regression:
        raise UsageError("--regression-suite and --no-regression contradict each other: drop one")
    from ..continual.regression import RegressionSuite

    return RegressionSuite.from_file(args.regression_suite)


def _check_texts_measurable(args: argparse.Namespace, tokenizer, suite, anchor_texts) -> None:
    """The user's suite and anchor texts, tokenised: refused before a new registry is created (the learner would
    refuse them only after)."""
    from ..continual.anchor import check_anchor_texts
    from ..continual.documents import DocumentError
    from ..continual.regression import RegressionSuiteError

    if suite is not None:
        try:
            suite.check_measurable(tokenizer)
        except RegressionSuiteError as err:
            raise RegressionSuiteError(f"{args.regression_suite} (--regression-suite): {err}") from None
    if anchor_texts:
        try:
            check_anchor_texts(tokenizer, anchor_texts)
        except ValueError as err:
            raise DocumentError(f"{args.anchor_text} (--anchor-text): {err}") from None


def _check_anchor_apart(args: argparse.Namespace, suite, anchor_texts) -> None:
    """The anchor (the user's texts, or the prompts the model answers) asks none of the gate's suite questions."""
    from ..continual.anchor import AnchorClash, check_anchor_apart
    from ..continual.documents import DocumentError
    from ..continual.regression import RegressionSuite, RegressionSuiteError

    if args.anchor_weight == 0 or args.no_regression:
        return
    suite_flag = f"{args.regression_suite} (--regression-suite)" if args.regression_suite else "the bundled suite"
    try:
        check_anchor_apart(anchor_texts or None, [item[0] for item in (suite or RegressionSuite.bundled()).qa])
    except AnchorClash as clash:
        if anchor_texts:
            raise DocumentError(f"{args.anchor_text} (--anchor-text): paragraph {clash.index + 1} asks the question "
                                f"{clash.question!r} of {suite_flag}: the anchor would hold the answer the gate reads "
                                "for forgetting; drop the paragraph, or the question from the suite") from None
        raise RegressionSuiteError(f"{suite_flag}: its question {clash.question!r} is asked by the default anchor "
                                   f"prompt {clash.text!r}: the anchor would hold the answer the gate reads for "
                                   "forgetting; drop the question from the suite, pass --anchor-text with your own "
                                   "general text, or --anchor-weight 0") from None


def _existing_registry(args: argparse.Namespace) -> AdapterRegistry | None:
    """The registry at --registry, its manifest and base model checked now; None when the directory is new (or
    empty) and could become one."""
    if (Path(args.registry) / MANIFEST).exists():
        return AdapterRegistry(args.registry, base_model=_base_model_name(args), lock_timeout=args.lock_timeout)
    check_new_registry_location(args.registry)
    return None


def run_adapt(args: argparse.Namespace) -> int:
    from ..continual.gate import GateThresholds, banned_phrases
    from ..continual.learner import ContinualConfig, ContinualLearner
    from ..continual.documents import read_documents
    from ..continual.report_half import format_report_halves, score_report_halves
    from ..inner.config import InnerLoopConfig
    from ..models import attach_adapter, load_model_and_tokenizer
    from ..tasks.knowledge import check_passages_fit

    # everything that can be refused is checked before the model loads and before the registry changes
    check_adapter(args.policy_adapter, "--policy-adapter")
    documents = read_documents(args.documents, max_bytes=int(args.max_document_mb * 1_000_000),
                               chunk_chars=args.chunk_chars)
    if args.anchor_text and args.anchor_weight == 0:
        raise UsageError("--anchor-text with --anchor-weight 0: the anchor is off, so its texts would be ignored; drop "
                         "one of them")
    anchor_texts = (_read_anchor_texts(args.anchor_text, int(args.max_document_mb * 1_000_000))
                    if args.anchor_text else ())
    suite = _read_regression_suite(args)
    _check_anchor_apart(args, suite, anchor_texts)
    config = ContinualConfig(
        mode=args.mode, promotion=args.promotion, replay_ratio=args.replay_ratio,
        max_replay_examples=args.max_replay_examples, regularization=args.regularization,
        anchor_weight=args.anchor_weight, anchor_texts=anchor_texts,
        gentler_retries=args.gentler_retries, retry_lr_factor=args.retry_lr_factor,
        gate_policy=args.gate_policy, rescale_floor=args.rescale_floor, rescale_steps=args.rescale_steps,
        num_self_edits=args.num_self_edits, self_edit_style=args.style, self_edit_max_new_tokens=args.max_new_tokens,
        check_regression=not args.no_regression, seed=args.seed,
        thresholds=GateThresholds(probe_metric=args.probe_metric, min_new_gain=args.min_new_gain,
                                  max_earlier_drop=args.max_earlier_drop,
                                  max_perplexity_increase=args.max_perplexity_increase, max_qa_drop=args.max_qa_drop,
                                  max_kl_to_promoted=args.max_kl_to_promoted,
                                  max_total_perplexity_increase=args.max_total_perplexity_increase,
                                  max_total_qa_drop=args.max_total_qa_drop))
    inner = InnerLoopConfig(num_epochs=args.inner_epochs, learning_rate=args.inner_lr, lora_r=args.inner_lora_r,
                            lora_alpha=2 * args.inner_lora_r, seed=args.seed)
    registry = _existing_registry(args)
    constraints = [banned_phrases(args.banned_phrase)] if args.banned_phrase else []
    with registry.locked() if registry else contextlib.nullcontext():
        model, tokenizer = load_model_and_tokenizer(args.model)
        # a document whose title and text alone are over the inner limits would fail every adaptation
        check_passages_fit([d.as_context() for d in documents], tokenizer, inner.example_token_limit)
        _check_texts_measurable(args, tokenizer, suite, anchor_texts)
        if args.policy_adapter:
            model = attach_adapter(model, args.policy_adapter, flag="--policy-adapter").merge_and_unload()
        # a new registry is created only now, so a model that fails to load leaves none behind (built on the wrong
        # base model name, it would refuse the corrected command)
        registry = registry or AdapterRegistry(args.registry, create=True, base_model=_base_model_name(args),
                                               lock_timeout=args.lock_timeout)
        with registry.locked():
            learner = ContinualLearner(model, tokenizer, registry, config, inner, constraints=constraints,
                                       regression_suite=suite)
            print(f"{len(documents)} document(s); registry {registry.root} (promoted: {registry.promoted or 'base'})")
            report_before = score_report_halves(learner, documents)
            reports = learner.adapt_all(documents, progress=lambda r: print(r.summary(), flush=True))
            if report_before:
                print(format_report_halves(report_before, score_report_halves(learner, documents),
                                           args.probe_metric))
    promoted = sum(r.promoted for r in reports)
    print(f"done: {promoted} of {len(reports)} candidate(s) promoted; promoted version: {registry.promoted or 'base'}")
    if args.push_to_hub and registry.promoted:
        print(f"pushed: {registry.push_to_hub(args.push_to_hub)}")
    return 0


def format_versions(registry: AdapterRegistry) -> str:
    """The `registry list` table; every text from the manifest is printed with control characters escaped."""
    promoted = registry.promoted
    base = printable(str(registry.base_model))
    lines = [f"registry {printable(str(registry.root))} (base model {base}); promoted: {promoted or 'base'}",
             f"{'':2}{'version':8} {'parent':8} {'gate':8} {'created':21} documents / reasons"]
    for v in registry.versions():
        mark = "*" if v["version"] == promoted else ""
        gate = "passed" if v["gate"].get("passed") else "refused"
        docs = printable(", ".join(d["doc_id"] for d in v["documents"]))
        created = printable(v["created"])
        lines.append(f"{mark:2}{v['version']:8} {v['parent'] or 'base':8} {gate:8} {created:21} {docs}")
        for reason in v["gate"].get("reasons", []):
            lines.append(f"{'':50}- {printable(reason)}")
    return "\n".join(lines)


def run_registry(args: argparse.Namespace) -> int:
    registry = AdapterRegistry(args.registry, lock_timeout=args.lock_timeout)
    if args.action == "list":
        print(format_versions(registry))
    elif args.action == "promote":
        if not args.version:
            raise RegistryError("`registry promote` needs a VERSION (see `seal-trl registry list`)")
        registry.promote(args.version, reason=args.reason)
        print(f"promoted {args.version}")
    elif args.action == "rollback":
        entry = registry.rollback(args.version)
        print(f"rolled back from {entry['from'] or 'base'} to {entry['version'] or 'base'}")
    elif args.action == "push":
        if not args.repo_id:
            raise RegistryError("`registry push` needs --repo-id")
        print(registry.push_to_hub(args.repo_id, args.version))
    return 0

