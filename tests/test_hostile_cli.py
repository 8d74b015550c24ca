"""Hostile input through the `seal-trl` CLI (issue 15): every failure is one line that names the flag or field,
exit code 2, refused before any model loads, and nothing is left behind (no lock, cache, run directory or file).

Each case builds its bad input inside a fresh workspace; the test snapshots the workspace, runs `main(argv)`
with model loading and `datasets.load_dataset` replaced by tripwires, and checks the exit code, the one line on
stderr, the words it must contain and that the workspace is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_hostile_inputs import hang_guard

from seal_trl.cli.main import main

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5_000  # over Python's 4,300-digit int-string limit


class Tripwire(BaseException):
    """Raised where a case must never get to; a BaseException, so no `except Exception` in the CLI hides it."""


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # builds the bad input in the workspace and returns the command line
    expect: tuple[str, ...]  # words the one-line error must contain (the flag or field, and what is wrong)


def squad(ws: Path, name: str = "squad.json", answers=None) -> Path:
    answer = [{"text": "Ostrand", "answer_start": 30}] if answers is None else answers
    data = {"data": [{"title": "Velmora", "paragraphs": [{"context": "The river Velmora runs through Ostrand.",
                                                           "qas": [{"id": "q", "question": "Which valley?",
                                                                    "answers": answer}]}]}]}
    path = ws / name
    path.write_text(json.dumps(data))
    return path


def squad_with(ws: Path, **fields) -> dict:
    """The `squad` file's data with some of its fields (context, question, title) replaced."""
    data = json.loads(squad(ws).read_text())
    paragraph = data["data"][0]["paragraphs"][0]
    paragraph["context"] = fields.get("context", paragraph["context"])
    paragraph["qas"][0]["question"] = fields.get("question", paragraph["qas"][0]["question"])
    data["data"][0]["title"] = fields.get("title", data["data"][0]["title"])
    return data


def write(ws: Path, name: str, content: str | bytes) -> Path:
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def sparse(ws: Path, name: str, size: int) -> Path:
    path = ws / name
    with open(path, "wb") as fh:
        fh.truncate(size)  # nothing is written: the size alone must be refused
    return path


def evaluate(ws: Path, *extra: str, data: Path | str | None = None) -> list[str]:
    data = squad(ws) if data is None else data
    return ["evaluate", "--model", str(ws / "model"), "--data", str(data), "--split", "train",
            "--output-dir", str(ws / "runs"), *extra]


def adapt(ws: Path, *extra: str, documents: Path | str | None = None, registry: Path | None = None) -> list[str]:
    documents = write(ws, "doc.txt", "The river Velmora runs through Ostrand.") if documents is None else documents
    return ["adapt", "--model", str(ws / "model"), "--documents", str(documents), "--registry",
            str(registry or ws / "reg"), *extra]


def registry(ws: Path, manifest: str | None, *argv: str) -> list[str]:
    if manifest is not None:
        write(ws, "reg/registry.json", manifest)
        (ws / "reg" / "versions").mkdir(exist_ok=True)
    return ["registry", *argv, "--registry", str(ws / "reg")]


def train(ws: Path, *extra: str, config: dict | str | None = None) -> list[str]:
    config = {"data": str(squad(ws)), "output_dir": str(ws / "out"), "use_cpu": True} if config is None else config
    path = write(ws, "recipe.yaml", config if isinstance(config, str) else json.dumps(config))
    return ["train", "--config", str(path), *extra]


def recipe(ws: Path, text: str, *extra: str) -> list[str]:
    """`seal-trl train` on a recipe given as YAML text, with a good data file and output_dir unless it sets them."""
    lines = [text, *(f"{k}: {v}" for k, v in (("data", json.dumps(str(squad(ws)))), ("output_dir", json.dumps(
        str(ws / "out"))), ("use_cpu", "true")) if not text.startswith(f"{k}:"))]
    return train(ws, *extra, config="\n".join(lines) + "\n")


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A billion-laughs YAML recipe: `levels` anchors, each a list of `width` aliases of the one before (~2 KB)."""
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n"
    return text


def dangling(ws: Path, name: str) -> Path:
    link = ws / name
    link.symlink_to(ws / "nowhere")
    return link


def arc_dir(ws: Path, text: str) -> Path:
    return write(ws, "arc/puzzle.json", text).parent


MANIFEST = {"format": "seal-trl-registry", "format_version": 1, "created": "2026-01-01T00:00:00Z", "base_model": None,
            "promoted": None, "versions": {}, "log": []}


def manifest(**fields) -> str:
    return json.dumps({**MANIFEST, **fields})


def one_version(name: str = "v0001", **gate) -> str:
    entry = {"parent": None, "created": "x", "documents": [], "gate": {"passed": True, **gate}, "promoted_at": []}
    return manifest(versions={name: entry})


CASES = [
    # --- evaluate: the data file ------------------------------------------------------------------------------
    Case("squad-answers-int", lambda ws: evaluate(ws, data=squad(ws, answers=5)), ("answers", "list")),
    Case("squad-answers-string", lambda ws: evaluate(ws, data=squad(ws, answers="Ostrand")), ("answers", "list")),
    Case("squad-nested-100k", lambda ws: evaluate(ws, data=write(ws, "deep.json", DEEP)), ("deep.json", "nested")),
    Case("squad-5000-digit-int", lambda ws: evaluate(ws, data=write(ws, "int.json", f'{{"data": {HUGE_INT}}}')),
         ("int.json", "not valid JSON")),
    Case("squad-not-utf8", lambda ws: evaluate(ws, data=write(ws, "latin.json", b'{"data": "caf\xe9"}')),
         ("latin.json", "UTF-8")),
    Case("squad-empty-file", lambda ws: evaluate(ws, data=write(ws, "empty.json", "")), ("empty.json", "empty")),
    Case("squad-over-size-limit", lambda ws: evaluate(ws, data=sparse(ws, "big.json", 2**31)), ("big.json", "MB")),
    Case("data-is-a-directory", lambda ws: evaluate(ws, data=write(ws, "dir/a.txt", "x").parent),
         ("--data", "directory")),
    Case("data-directory-named-json", lambda ws: evaluate(ws, data=write(ws, "x.json/a.txt", "x").parent),
         ("--data", "directory")),
    Case("data-missing-local-path", lambda ws: evaluate(ws, data=ws / "nope" / "squad"), ("--data", "does not exist")),
    Case("data-not-a-regular-file", lambda ws: evaluate(ws, data="/dev/null"), ("--data", "not a regular file")),
    Case("data-empty-string", lambda ws: evaluate(ws, data=""), ("--data",)),
    # --- evaluate: output directory and numeric flags -----------------------------------------------------------
    Case("output-dir-is-a-file", lambda ws: [*evaluate(ws)[:-1], str(write(ws, "runs-file", "x"))],
         ("--output-dir", "not a directory")),
    Case("output-dir-under-a-file", lambda ws: [*evaluate(ws)[:-1], str(write(ws, "f", "x") / "runs")],
         ("--output-dir", "not a directory")),
    Case("limit-negative", lambda ws: evaluate(ws, "--limit", "-1"), ("--limit", ">= 1")),
    Case("limit-zero", lambda ws: evaluate(ws, "--limit", "0"), ("--limit", ">= 1")),
    Case("limit-not-a-number", lambda ws: evaluate(ws, "--limit", "ten"), ("--limit", "'ten'")),
    Case("inner-epochs-zero", lambda ws: evaluate(ws, "--inner-epochs", "0"), ("--inner-epochs", ">= 1")),
    Case("inner-epochs-huge", lambda ws: evaluate(ws, "--inner-epochs", "1000000"), ("--inner-epochs", "at most")),
    Case("inner-lr-nan", lambda ws: evaluate(ws, "--inner-lr", "nan"), ("--inner-lr", "'nan'")),
    Case("inner-lr-negative", lambda ws: evaluate(ws, "--inner-lr", "-0.001"), ("--inner-lr", ">= 1e-06")),
    Case("inner-lr-huge", lambda ws: evaluate(ws, "--inner-lr", "5"), ("--inner-lr", "at most")),
    Case("inner-lora-r-zero", lambda ws: evaluate(ws, "--inner-lora-r", "0"), ("--inner-lora-r", ">= 1")),
    Case("inner-lora-alpha-negative", lambda ws: evaluate(ws, "--inner-lora-alpha", "-8"),
         ("--inner-lora-alpha", ">= 1")),
    Case("batch-self-edits-zero", lambda ws: evaluate(ws, "--batch-self-edits", "0"), ("--batch-self-edits", ">= 1")),
    Case("batch-self-edits-word", lambda ws: evaluate(ws, "--batch-self-edits", "many"),
         ("--batch-self-edits", "'auto'", "'many'")),
    Case("max-new-tokens-zero", lambda ws: evaluate(ws, "--max-new-tokens", "0"), ("--max-new-tokens", ">= 1")),
    Case("arc-max-tokens-zero", lambda ws: evaluate(ws, "--task", "arc", "--arc-max-tokens", "0"),
         ("--arc-max-tokens", ">= 1")),
    Case("methods-unknown", lambda ws: evaluate(ws, "--methods", "none", "bogus"), ("--methods", "bogus")),
    Case("teacher-method-without-teacher", lambda ws: evaluate(ws, "--methods", "teacher"), ("--teacher",)),
    Case("temperature-nan", lambda ws: evaluate(ws, "--samples", "2", "--temperature", "nan"),
         ("--temperature", "'nan'")),
    Case("style-unknown", lambda ws: evaluate(ws, "--style", "poem"), ("--style", "poem")),
    Case("adapter-directory-without-config",
         lambda ws: evaluate(ws, "--adapter", str(write(ws, "ad/x.txt", "").parent)),
         ("--adapter", "adapter_config.json")),
    Case("adapter-missing-local-path", lambda ws: evaluate(ws, "--adapter", str(ws / "no-adapter")),
         ("--adapter", "does not exist")),
    # --- issue 32: junk text in the data, and upper bounds ----------------------------------------------------------
    Case("squad-passage-lone-surrogate",  # was a traceback from the tokenizer and exit 0
         lambda ws: evaluate(ws, data=write(ws, "sur.json", json.dumps(squad_with(ws, context="The \ud800 river.")))),
         ("sur.json", "`context`", "lone surrogate (U+D800)")),
    Case("squad-passage-nuls", lambda ws: evaluate(ws, data=write(ws, "nul.json", json.dumps(
        squad_with(ws, context="\x00" * 300)))), ("`context`", "U+0000")),
    Case("squad-passage-ansi", lambda ws: evaluate(ws, data=write(ws, "ansi.json", json.dumps(
        squad_with(ws, context="The \x1b[31mriver\x1b[0m.")))), ("`context`", "escape")),
    Case("squad-question-zero-width", lambda ws: evaluate(ws, data=write(ws, "zw.json", json.dumps(
        squad_with(ws, question="\u200b\u200c\u200d")))), ("`question`", "no visible")),
    Case("squad-answer-nul", lambda ws: evaluate(ws, data=squad(ws, answers=[{"text": "\x00"}])),
         ("answers[0]", "U+0000")),
    Case("batch-self-edits-huge", lambda ws: evaluate(ws, "--batch-self-edits", "1000000"),
         ("--batch-self-edits", "at most 256")),
    Case("batch-self-edits-huge-digits", lambda ws: evaluate(ws, "--batch-self-edits", "9" * 5000),
         ("--batch-self-edits", "at most 256")),
    Case("inner-lora-r-huge", lambda ws: evaluate(ws, "--inner-lora-r", "1000000"), ("--inner-lora-r", "at most 4096")),
    Case("temperature-denormal", lambda ws: evaluate(ws, "--samples", "2", "--temperature", "1e-320"),
         ("--temperature", "0 (greedy)", "0.01")),
    Case("temperature-huge", lambda ws: evaluate(ws, "--samples", "2", "--temperature", "1e300"),
         ("--temperature", "100")),
    Case("adapt-document-lone-surrogate",  # was a traceback and exit 1
         lambda ws: adapt(ws, documents=write(ws, "sur.json", json.dumps({"title": "V", "text": "The \ud800 river."}))),
         ("sur.json", "`text`", "lone surrogate")),
    Case("adapt-document-nul-after-8192",
         lambda ws: adapt(ws, documents=write(ws, "late.txt", b"The river runs. " * 600 + b"\x00")),
         ("late.txt", "U+0000")),
    Case("adapt-document-answers-a-dict",
         lambda ws: adapt(ws, documents=write(ws, "qa.json", json.dumps(
             {"title": "V", "text": "The river runs.", "questions": [{"question": "Which?",
                                                                      "answers": {"text": "river"}}]}))),
         ("qa.json", "`answers` must be a list")),
    Case("adapt-document-zero-width-only",
         lambda ws: adapt(ws, documents=write(ws, "zw.txt", "\u200b\u2060\ufeff" * 30)), ("zw.txt", "no visible")),
    Case("adapt-inner-lora-r-huge", lambda ws: adapt(ws, "--inner-lora-r", "1000000"),
         ("--inner-lora-r", "at most 4096")),
    Case("train-inner-batch-self-edits-huge", lambda ws: train(ws, config={
        "data": str(squad(ws)), "output_dir": str(ws / "out"), "use_cpu": True,
        "inner_batch_self_edits": "99999999999999999999"}), ("inner_batch_self_edits", "at most 256")),
    # --- adapt: documents and flags -------------------------------------------------------------------------------
    Case("document-nested-100k", lambda ws: adapt(ws, documents=write(ws, "deep.json", DEEP)), ("deep.json", "nested")),
    Case("document-5000-digit-int", lambda ws: adapt(ws, documents=write(ws, "int.json", f'{{"text": {HUGE_INT}}}')),
         ("int.json", "not valid JSON")),
    Case("document-not-a-regular-file", lambda ws: adapt(ws, documents="/dev/null"),
         ("/dev/null", "not a regular file")),
    Case("max-document-mb-nan", lambda ws: adapt(ws, "--max-document-mb", "nan"), ("--max-document-mb", "'nan'")),
    Case("max-document-mb-inf", lambda ws: adapt(ws, "--max-document-mb", "inf"), ("--max-document-mb", "'inf'")),
    Case("max-document-mb-zero", lambda ws: adapt(ws, "--max-document-mb", "0"), ("--max-document-mb", "> 0")),
    Case("max-document-mb-negative", lambda ws: adapt(ws, "--max-document-mb", "-1"), ("--max-document-mb", "> 0")),
    Case("chunk-chars-zero", lambda ws: adapt(ws, "--chunk-chars", "0"), ("--chunk-chars", ">= 200")),
    Case("num-self-edits-zero", lambda ws: adapt(ws, "--num-self-edits", "0"), ("--num-self-edits", ">= 1")),
    Case("lock-timeout-negative", lambda ws: adapt(ws, "--lock-timeout", "-1"), ("--lock-timeout", ">= 0")),
    Case("lock-timeout-nan", lambda ws: adapt(ws, "--lock-timeout", "nan"), ("--lock-timeout", "'nan'")),
    Case("replay-ratio-negative", lambda ws: adapt(ws, "--replay-ratio", "-1"), ("--replay-ratio", ">= 0")),
    Case("max-replay-examples-negative", lambda ws: adapt(ws, "--max-replay-examples", "-1"),
         ("--max-replay-examples", ">= 0")),
    Case("regularization-nan", lambda ws: adapt(ws, "--regularization", "nan"), ("--regularization", "'nan'")),
    Case("anchor-weight-nan", lambda ws: adapt(ws, "--anchor-weight", "nan"), ("--anchor-weight", "'nan'")),
    Case("gentler-retries-negative", lambda ws: adapt(ws, "--gentler-retries", "-1"), ("--gentler-retries", ">= 0")),
    Case("retry-lr-factor-zero", lambda ws: adapt(ws, "--retry-lr-factor", "0"), ("--retry-lr-factor", "> 0")),
    Case("min-new-gain-nan", lambda ws: adapt(ws, "--min-new-gain", "nan"), ("--min-new-gain", "'nan'")),
    Case("gate-policy-unknown", lambda ws: adapt(ws, "--gate-policy", "shrink"), ("--gate-policy", "'shrink'")),
    Case("rescale-floor-zero", lambda ws: adapt(ws, "--rescale-floor", "0"), ("--rescale-floor", "> 0")),
    Case("rescale-floor-over-one", lambda ws: adapt(ws, "--rescale-floor", "1.5"), ("--rescale-floor", "at most 1")),
    Case("rescale-floor-nan", lambda ws: adapt(ws, "--rescale-floor", "nan"), ("--rescale-floor", "'nan'")),
    Case("rescale-steps-zero", lambda ws: adapt(ws, "--rescale-steps", "0"), ("--rescale-steps", ">= 1")),
    Case("rescale-steps-huge", lambda ws: adapt(ws, "--rescale-steps", "1000"), ("--rescale-steps", "at most 20")),
    Case("max-kl-to-promoted-negative", lambda ws: adapt(ws, "--max-kl-to-promoted", "-0.1"),
         ("--max-kl-to-promoted", ">= 0")),
    Case("max-kl-to-promoted-nan", lambda ws: adapt(ws, "--max-kl-to-promoted", "nan"),
         ("--max-kl-to-promoted", "'nan'")),
    Case("max-qa-drop-negative", lambda ws: adapt(ws, "--max-qa-drop", "-0.5"), ("--max-qa-drop", ">= 0")),
    Case("adapt-banned-phrase-empty", lambda ws: adapt(ws, "--banned-phrase", " "), ("--banned-phrase", "' '")),
    Case("adapt-inner-epochs-zero", lambda ws: adapt(ws, "--inner-epochs", "0"), ("--inner-epochs", ">= 1")),
    Case("adapt-inner-lr-nan", lambda ws: adapt(ws, "--inner-lr", "nan"), ("--inner-lr", "'nan'")),
    Case("adapt-inner-lora-r-zero", lambda ws: adapt(ws, "--inner-lora-r", "0"), ("--inner-lora-r", ">= 1")),
    Case("adapt-max-new-tokens-zero", lambda ws: adapt(ws, "--max-new-tokens", "0"), ("--max-new-tokens", ">= 1")),
    Case("policy-adapter-missing", lambda ws: adapt(ws, "--policy-adapter", str(ws / "no-adapter")),
         ("--policy-adapter", "does not exist")),
    Case("anchor-text-over-max-document-mb",  # the anchor file was held to a fixed 1 MB whatever the flag said
         lambda ws: adapt(ws, "--max-document-mb", "0.001",
                          "--anchor-text", str(write(ws, "anchors.txt", "a " * 1000))),
         ("anchors.txt", "--max-document-mb")),
    Case("anchor-text-directory", lambda ws: adapt(ws, "--anchor-text", str(write(ws, "anchors/a.txt", "x").parent)),
         ("--anchor-text", "directory")),
    # --- adapt / registry: the manifest ---------------------------------------------------------------------------
    Case("adapt-manifest-format-only",
         lambda ws: adapt(ws, registry=Path(registry(ws, '{"format": "seal-trl-registry"}')[-1])),
         ("registry.json", "promoted")),
    Case("adapt-manifest-nested-100k", lambda ws: adapt(ws, registry=Path(registry(ws, DEEP)[-1])),
         ("registry.json", "nested")),
    Case("list-manifest-format-only", lambda ws: registry(ws, '{"format": "seal-trl-registry"}', "list"),
         ("registry.json", "promoted")),
    Case("list-manifest-nested-100k", lambda ws: registry(ws, DEEP, "list"), ("registry.json", "nested")),
    Case("list-manifest-5000-digit-int", lambda ws: registry(ws, f'{{"format": {HUGE_INT}}}', "list"),
         ("registry.json", "not valid JSON")),
    Case("list-manifest-versions-a-list", lambda ws: registry(ws, manifest(versions=[]), "list"),
         ("registry.json", "versions")),
    Case("list-manifest-version-without-gate",
         lambda ws: registry(ws, manifest(versions={"v0001": {"parent": None, "created": "x", "documents": [],
                                                               "promoted_at": []}}), "list"),
         ("registry.json", "v0001", "gate")),
    Case("rollback-promoted-version-missing", lambda ws: registry(ws, manifest(promoted="v0009"), "rollback"),
         ("registry.json", "v0009")),
    Case("promote-log-not-a-list",
         lambda ws: registry(ws, manifest(log={}, versions={"v0001": {"parent": None, "created": "x", "documents": [],
                                                                      "gate": {"passed": True}, "promoted_at": []}}),
                             "promote", "v0001"),
         ("registry.json", "log")),
    # issue 32: a registry that lies
    Case("promote-gate-reasons-ints", lambda ws: registry(ws, one_version(passed=False, reasons=[1, 2]), "promote",
                                                          "v0001"), ("registry.json", "v0001.gate.reasons")),
    Case("promote-gate-passed-string", lambda ws: registry(ws, one_version(passed="false"), "promote", "v0001"),
         ("registry.json", "v0001.gate.passed", "boolean")),
    Case("list-format-version-999", lambda ws: registry(ws, manifest(format_version=999), "list"),
         ("registry.json", "format_version", "999", "reads format version 1")),
    Case("promote-version-absolute-path", lambda ws: registry(ws, one_version("/etc"), "promote", "/etc"),
         ("registry.json", "versions./etc")),
    Case("promote-version-dotdot", lambda ws: registry(ws, one_version("../x"), "promote", "../x"),
         ("registry.json", "versions.../x")),
    Case("list-version-ansi", lambda ws: registry(ws, one_version("v0001\x1b[2J\x1b[31m"), "list"),
         ("registry.json", "v0001\\x1b[2J")),
    Case("list-version-bidi-override", lambda ws: registry(ws, one_version("v0001\u202e"), "list"),
         ("registry.json", "v0001\\u202e")),
    Case("list-doc-id-ansi", lambda ws: registry(ws, manifest(versions={"v0001": {
        "parent": None, "created": "x", "documents": [{"doc_id": "\x1b]0;title\x07"}], "gate": {"passed": True},
        "promoted_at": []}}), "list"), ("registry.json", "documents.0.doc_id")),
    Case("promote-parent-outside", lambda ws: registry(ws, manifest(versions={"v0001": {
        "parent": "/etc", "created": "x", "documents": [], "gate": {"passed": True}, "promoted_at": []}}), "promote",
        "v0001"), ("registry.json", "v0001.parent")),
    Case("registry-lock-timeout-nan", lambda ws: registry(ws, manifest(), "list", "--lock-timeout", "nan"),
         ("--lock-timeout", "'nan'")),
    # --- train ----------------------------------------------------------------------------------------------------
    Case("train-config-missing", lambda ws: ["train", "--config", str(ws / "none.yaml")],
         ("--config", "does not exist")),
    Case("train-config-is-a-directory", lambda ws: ["train", "--config", str(write(ws, "conf/a", "x").parent)],
         ("--config", "directory")),
    Case("train-config-yaml-syntax", lambda ws: train(ws, config="data: [unclosed\n"), ("recipe.yaml", "YAML")),
    Case("train-config-yaml-list", lambda ws: train(ws, config="- a\n- b\n"), ("recipe.yaml", "mapping")),
    Case("train-unknown-flag", lambda ws: train(ws, "--no_such_field", "1"), ("no_such_field",)),
    Case("train-bad-flag-value", lambda ws: train(ws, "--max_steps", "many"), ("max_steps", "many")),
    Case("train-accelerate-config-unknown", lambda ws: train(ws, "--accelerate-config", "zero9"),
         ("--accelerate-config", "zero9")),
    Case("train-data-nested-100k", lambda ws: train(ws, "--data", str(write(ws, "deep.json", DEEP))),
         ("deep.json", "nested")),
    Case("train-data-answers-int", lambda ws: train(ws, "--data", str(squad(ws, "bad.json", answers=5))),
         ("answers", "list")),
    Case("train-data-directory", lambda ws: train(ws, "--data", str(write(ws, "d/a.txt", "x").parent)),
         ("data", "directory")),
    Case("train-learning-rate-nan", lambda ws: train(ws, "--learning_rate", "nan"), ("learning_rate", "finite")),
    Case("train-output-dir-holds-a-finished-model",
         lambda ws: train(ws, "--output_dir", str(write(ws, "done/adapter_model.safetensors", b"weights").parent)),
         ("output_dir", "already holds a trained model", "new output_dir")),
    # inner settings under which every self-edit would fail (or the adapter do nothing): a run of zero rewards
    Case("train-inner-epochs-over-bounds", lambda ws: train(ws, "--inner_epochs", "25"),
         ("inner_epochs", "[1, 20]", "out of bounds")),
    Case("train-inner-lr-over-bounds", lambda ws: train(ws, config={"inner_learning_rate": 0.05}),
         ("inner_learning_rate", "out of bounds")),
    Case("train-inner-batch-over-bounds", lambda ws: train(ws, "--inner_batch_size", "32"),
         ("inner_batch_size", "[1, 16]")),
    Case("train-inner-lora-alpha-zero", lambda ws: train(ws, config={"inner_lora_alpha": 0}),
         ("inner_lora_alpha", "> 0")),
    Case("train-inner-lora-r-float", lambda ws: train(ws, config={"inner_lora_r": 2.5}), ("inner_lora_r", "2.5")),
    Case("train-inner-step-budget-below-epochs", lambda ws: train(ws, "--inner_step_budget", "5"),
         ("inner_step_budget=5 is below inner_epochs", "over_budget")),
    Case("train-self-edit-style-unknown", lambda ws: train(ws, "--self_edit_style", "poem"),
         ("self_edit_style", "poem")),
    Case("train-output-dir-is-a-file", lambda ws: train(ws, "--output_dir", str(write(ws, "out-file", "x"))),
         ("output_dir", "not a directory")),
    Case("train-resume-missing-checkpoint", lambda ws: train(ws, "--resume_from_checkpoint", str(ws / "ckpt")),
         ("resume_from_checkpoint", "ckpt")),
    # --- train: the recipe's values by type and range, before anything loads (issue 32) -------------------------------
    Case("recipe-data-int", lambda ws: recipe(ws, "data: 42"), ("data", "42", "expects text")),
    Case("recipe-output-dir-int", lambda ws: recipe(ws, "output_dir: 123"), ("output_dir", "123", "text")),
    Case("recipe-max-steps-list", lambda ws: recipe(ws, "max_steps: [1]"), ("max_steps", "[1]", "an integer")),
    Case("recipe-seed-float", lambda ws: recipe(ws, "seed: 1.5"), ("seed", "1.5", "an integer")),
    Case("recipe-num-generations-zero", lambda ws: recipe(ws, "num_generations: 0"), ("num_generations", ">= 1")),
    Case("recipe-max-train-contexts-float", lambda ws: recipe(ws, "max_train_contexts: 1.5"),
         ("max_train_contexts", "1.5", "an integer")),
    Case("recipe-reward-repeats-float", lambda ws: recipe(ws, "reward_repeats: 2.5"),
         ("reward_repeats", "2.5", "an integer")),
    Case("recipe-rest-em-margin-list", lambda ws: recipe(ws, "rest_em_margin: [0.1]"),
         ("rest_em_margin", "[0.1]", "a finite number")),
    Case("recipe-key-int", lambda ws: recipe(ws, "1: 2"), ("recipe.yaml", "key 1", "not a setting name")),
    Case("recipe-key-null", lambda ws: recipe(ws, "null: x"), ("recipe.yaml", "key None", "not a setting name")),
    Case("recipe-alias-bomb", lambda ws: recipe(ws, alias_bomb()), ("recipe.yaml", "alias")),
    Case("recipe-alias-cycle", lambda ws: recipe(ws, "inner_target_modules: &a [q_proj, *a]"),
         ("recipe.yaml", "alias")),
    Case("recipe-duplicate-key", lambda ws: recipe(ws, "max_steps: 1\nseed: 3\nmax_steps: 5"),
         ("recipe.yaml", "line 3", "'max_steps' appears twice")),
    Case("recipe-num-iterations-zero", lambda ws: recipe(ws, "num_iterations: 0"), ("num_iterations", ">= 1")),
    Case("recipe-save-steps-negative", lambda ws: recipe(ws, "save_steps: -1"), ("save_steps", "> 0")),
    Case("recipe-rest-em-top-k-float", lambda ws: recipe(ws, "rest_em_top_k: 1.5"),
         ("rest_em_top_k", "1.5", "an integer")),
    Case("recipe-inner-target-modules-mapping", lambda ws: recipe(ws, "inner_target_modules: {q_proj: 1}"),
         ("inner_target_modules", "a mapping", "a list of strings")),
    Case("recipe-output-dir-empty", lambda ws: recipe(ws, 'output_dir: ""'), ("output_dir", "empty")),
    Case("recipe-output-dir-dangling-symlink",
         lambda ws: recipe(ws, f"output_dir: {json.dumps(str(dangling(ws, 'out-link')))}"),
         ("output_dir", "out-link", "symbolic link", "does not exist")),
    Case("train-num-generations-flag-zero", lambda ws: train(ws, "--num_generations", "0"),
         ("num_generations", ">= 1")),
    Case("evaluate-max-new-tokens-huge", lambda ws: evaluate(ws, "--max-new-tokens", "1000000000"),
         ("--max-new-tokens", "at most")),
    Case("evaluate-output-dir-dangling-symlink", lambda ws: [*evaluate(ws)[:-1], str(dangling(ws, "runs-link"))],
         ("--output-dir", "runs-link", "symbolic link")),
    Case("adapt-max-new-tokens-huge", lambda ws: adapt(ws, "--max-new-tokens", "1000000000"),
         ("--max-new-tokens", "at most")),
    Case("arc-task-repeats-a-key",
         lambda ws: evaluate(ws, "--task", "arc", data=arc_dir(ws, '{"train": [{"input": [[1]], "output": [[2]]}], '
                                                                     '"train": [{"input": [[1]], "output": [[3]]}], '
                                                                     '"test": [{"input": [[1]], "output": [[2]]}]}')),
         ("puzzle.json", "'train' appears twice")),
    # --- demo -----------------------------------------------------------------------------------------------------
    Case("demo-max-new-tokens-huge", lambda ws: ["demo", "--max-new-tokens", "1000000000", "--output-dir",
                                                 str(ws / "runs")], ("--max-new-tokens", "at most")),
    Case("demo-train-contexts-zero", lambda ws: ["demo", "--train-contexts", "0", "--output-dir", str(ws / "runs")],
         ("--train-contexts", ">= 1")),
    Case("demo-generations-one", lambda ws: ["demo", "--generations", "1", "--output-dir", str(ws / "runs")],
         ("--generations", ">= 2")),
    Case("demo-validation-negative", lambda ws: ["demo", "--validation", "-3", "--output-dir", str(ws / "runs")],
         ("--validation", ">= 1")),
    Case("demo-temperature-inf", lambda ws: ["demo", "--temperature", "inf", "--output-dir", str(ws / "runs")],
         ("--temperature", "'inf'")),
    Case("demo-output-dir-is-a-file", lambda ws: ["demo", "--output-dir", str(write(ws, "runs-file", "x"))],
         ("--output-dir", "not a directory")),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in sorted(root.rglob("*"))}


@pytest.fixture()
def tripwires(monkeypatch, tmp_path):
    """Model loading, the trainer and `datasets` raise `Tripwire`; caches point into the workspace."""
    import datasets

    import seal_trl.cli.evaluate as evaluate_cli
    import seal_trl.cli.train as train_cli
    import seal_trl.models as models

    def refuse(*args, **kwargs):
        raise Tripwire("reached model/data loading although the input could be refused first")

    for module in (models, evaluate_cli, train_cli):
        for name in ("load_model_and_tokenizer", "load_policy", "load_tokenizer", "embedded_model_path"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(train_cli, "SEALTrainer", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setenv("SEAL_TRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


#: A refusal takes well under a second; an alias bomb used to hang (killed at 60 s).
HANG_LIMIT_S = 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, tripwires, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = case.argv(ws)
    before = snapshot(tmp_path)
    with hang_guard(HANG_LIMIT_S):
        code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "\x1b" not in err and "\u202e" not in err, "a control character from the input was printed raw"
    for word in case.expect:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert snapshot(tmp_path) == before, "the failed command left files behind"


def test_the_corpus_has_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 70


def test_a_good_manifest_still_lists(tmp_path, tripwires, capsys):
    """The manifest checks refuse broken registries, not working ones."""
    ws = tmp_path
    entry = {"parent": None, "created": "2026-01-01T00:00:00Z", "documents": [{"doc_id": "a"}],
             "gate": {"passed": True, "reasons": []}, "metrics": {}, "promoted_at": ["2026-01-01T00:00:00Z"]}
    assert main(registry(ws, manifest(promoted="v0001", versions={"v0001": entry}), "list")) == 0
    assert "* v0001" in capsys.readouterr().out


def test_list_prints_text_from_the_manifest_with_control_characters_escaped(tmp_path, tripwires, capsys):
    entry = {"parent": None, "created": "2026\x1b[2J", "documents": [{"doc_id": "a"}],
             "gate": {"passed": False, "reasons": ["drop \x1b[31mred\x1b[0m \u202eevil"]}, "promoted_at": []}
    assert main(registry(tmp_path, manifest(base_model="m\x1b[1A", versions={"v0001": entry}), "list")) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "drop \\x1b[31mred\\x1b[0m \\u202eevil" in out and "m\\x1b[1A" in out and "2026\\x1b[2J" in out


def test_a_model_load_failure_leaves_no_new_registry(tmp_path, capsys):
    """adapt creates a new registry only once the model has loaded: a typo in --model must not leave a registry
    built on the wrong base model behind."""
    ws = tmp_path
    code = main(adapt(ws, "--model", str(ws / "no-such-model")))
    assert code == 2 and "model" in capsys.readouterr().err
    assert not (ws / "reg").exists()


def test_brackets_and_escapes_inside_strings_are_not_nesting(tmp_path):
    """The depth bound counts JSON structure, not text: a title ending in a backslash followed by a passage full of
    brackets and escaped quotes still loads (a scanner that misread `\\\\"` would count the passage's brackets)."""
    from seal_trl.tasks.squad import load_squad_json

    context = 'He wrote "' + "[" * 200 + '" and {{{ in C:\\ on Ostrand.'
    data = {"data": [{"title": "Dir C:\\", "paragraphs": [{"context": context, "qas": [
        {"id": "q", "question": "Where?", "answers": [{"text": "Ostrand", "answer_start": 0}]}]}]}]}
    path = tmp_path / "brackets.json"
    path.write_text(json.dumps(data))
    (loaded,) = load_squad_json(path)
    assert loaded["title"] == "Dir C:\\" and loaded["context"] == context


def test_a_multi_line_library_error_is_printed_as_one_line(monkeypatch, capsys):
    import seal_trl.cli.main as cli_main

    def fails(_):
        raise OSError("could not load the model\n  check the path\n")

    monkeypatch.setattr(cli_main, "_info", fails)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "error: could not load the model check the path\n"
