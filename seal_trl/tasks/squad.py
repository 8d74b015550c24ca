"""Reading SQuAD v1.1-format data into knowledge contexts.

A context is a plain dict: `context_id`, `title`, `context` (the passage) and `questions`, a list of
`{"question": str, "answers": [str, ...]}`. Sources: a SQuAD JSON file, a `datasets` dataset (or name) with
the flat SQuAD columns, or the bundled invented-entity set (`"bundled"`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..safe_json import MAX_BYTES, read_json_file
from ..text_checks import text_defect

logger = logging.getLogger(__name__)

BUNDLED_SPLITS = ("train", "validation")


class DatasetFormatError(ValueError):
    """Data that is not in the SQuAD v1.1 shape; the message names the missing or wrong field."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "untitled"


def _required_text(obj: Any, name: str, where: str, hint: str = "") -> str:
    value = obj.get(name) if isinstance(obj, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{where}: missing field `{name}`{hint}")
    return _usable(value, f"{where}: field `{name}`")


def _usable(text: str, where: str) -> str:
    """`text` stripped, or `DatasetFormatError` when it holds control characters, escapes, lone surrogates or
    nothing visible (`text_checks.text_defect`)."""
    defect = text_defect(text)
    if defect:
        raise DatasetFormatError(f"{where} has {defect}; fix or remove it in the data file")
    return text.strip()


def _answers(qa: Mapping, where: str) -> list[str]:
    raw = qa.get("answers")
    if raw is None:
        raise DatasetFormatError(f"{where}: missing field `answers` (a list of {{'text', 'answer_start'}})")
    if isinstance(raw, Mapping):  # flat `datasets` layout: {"text": [...], "answer_start": [...]}
        texts = raw.get("text", [])
    else:
        texts = raw
    if not isinstance(texts, (list, tuple)):
        raise DatasetFormatError(f"{where}: `answers` must be a list of {{'text', 'answer_start'}}, got "
                                 f"{type(texts).__name__}")
    texts = [a.get("text") if isinstance(a, Mapping) else a for a in texts]
    texts = [_usable(t, f"{where}: answers[{i}]") for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not texts:
        raise DatasetFormatError(f"{where}: `answers` has no non-empty `text`")
    return list(dict.fromkeys(texts))


def contexts_from_squad(data: Mapping[str, Any], *, source: str = "data") -> list[dict]:
    """Contexts from a parsed SQuAD v1.1 document (`{"data": [{"title", "paragraphs": [...]}]}`)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise DatasetFormatError(
            f"{source}: not SQuAD v1.1 format: expected a top-level object with a `data` list of articles "
            "({'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', 'answers'}]}]})"
        )
    contexts = []
    slugs = Counter(_slug(a["title"]) for a in data["data"]
                    if isinstance(a, Mapping) and isinstance(a.get("title"), str))
    for a, article in enumerate(data["data"]):
        where = f"{source}: data[{a}]"
        title = _required_text(article, "title", where)
        # ids are the title's slug and the paragraph; titles that slug alike (non-Latin, repeated) add the article
        prefix = _slug(title) if slugs[_slug(title)] == 1 else f"{_slug(title)}-{a}"
        paragraphs = article.get("paragraphs")
        if not isinstance(paragraphs, list) or not paragraphs:
            raise DatasetFormatError(f"{where} ({title!r}): missing or empty field `paragraphs`")
        for p, paragraph in enumerate(paragraphs):
            pwhere = f"{where}.paragraphs[{p}]"
            passage = _required_text(paragraph, "context", pwhere, " (the passage text)")
            qas = paragraph.get("qas")
            if not isinstance(qas, list) or not qas:
                raise DatasetFormatError(f"{pwhere}: missing or empty field `qas`: every passage needs questions")
            questions = []
            for q, qa in enumerate(qas):
                qwhere = f"{pwhere}.qas[{q}]"
                question = _required_text(qa, "question", qwhere)
                questions.append({"question": question, "answers": _answers(qa, qwhere)})
            contexts.append({
                "context_id": f"{prefix}-{p}",
                "title": title,
                "context": passage,
                "questions": questions,
            })
    if not contexts:
        raise DatasetFormatError(f"{source}: no passages found")
    return _checked(contexts, source)


def _checked(contexts: list[dict], source: str) -> list[dict]:
    """`contexts` with unique ids (see `_unique_ids`), after a warning for answers their passage does not hold."""
    _warn_answers_outside(contexts, source)
    _unique_ids(contexts)
    return contexts


def _unique_ids(contexts: list[dict]) -> None:
    """Make repeated context ids unique, in place and deterministically: the first keeps its id, each later one
    gets the smallest `-dN` suffix that no context uses (titles 'x', 'x', 'x-0' slug alike but are all passages)."""
    taken = {c["context_id"] for c in contexts}
    seen: set[str] = set()
    for context in contexts:
        cid = context["context_id"]
        if cid in seen:
            n = 2
            while f"{cid}-d{n}" in taken:
                n += 1
            cid = context["context_id"] = f"{cid}-d{n}"
            taken.add(cid)
        seen.add(cid)


def _squashed(text: str) -> str:
    return " ".join(text.lower().split())


def _warn_answers_outside(contexts: list[dict], source: str) -> None:
    """Warn, with a count and the first case, about questions none of whose answers appear in their passage (case and
    whitespace aside). Not refused: a data set may phrase answers its own way ('two' for '2'); but SQuAD's answers
    are spans of the passage, and an answer the passage does not hold is one adaptation cannot teach."""
    outside = [(c, q) for c in contexts for q in c["questions"]
               if not any(_squashed(a) in _squashed(c["context"]) for a in q["answers"])]
    if outside:
        context, question = outside[0]
        total = sum(len(c["questions"]) for c in contexts)
        logger.warning("%s: %d of %d questions have no answer that appears in their passage (first: passage %r, "
                       "answers %r); adapting to the passage cannot teach those answers", source, len(outside), total,
                       context["context_id"], question["answers"][:3])


def load_squad_json(path: str | Path, *, max_bytes: int = MAX_BYTES) -> list[dict]:
    """Contexts from a SQuAD v1.1 JSON file, refused (never parsed) when too large or nested too deeply."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist (--data); pass a SQuAD v1.1 JSON file or "
                                "'bundled'")
    data = read_json_file(path, max_bytes=max_bytes, error=DatasetFormatError,
                          hint="; --data takes a SQuAD v1.1 JSON file")
    return contexts_from_squad(data, source=str(path))


def load_bundled(split: str = "train") -> list[dict]:
    """The bundled invented-entity passages (`train` or `validation`)."""
    if split not in BUNDLED_SPLITS:
        raise ValueError(f"bundled split must be one of {BUNDLED_SPLITS}, got {split!r}")
    text = resources.files("seal_trl.data").joinpath(f"knowledge_{split}.json").read_text(encoding="utf-8")
    return contexts_from_squad(json.loads(text), source=f"bundled:{split}")


def contexts_from_rows(rows: Iterable[Mapping[str, Any]], *, source: str = "dataset") -> list[dict]:
    """Contexts from flat SQuAD rows (`title`, `context`, `question`, `answers`), grouped by passage."""
    grouped: dict[tuple[str, str], dict] = {}
    for i, row in enumerate(rows):
        for name in ("title", "context", "question", "answers"):
            if name not in row:
                raise DatasetFormatError(f"{source}: row {i} is missing field `{name}` (SQuAD columns: "
                                         "id, title, context, question, answers)")
        where = f"{source}: row {i}"
        key = (_required_text(row, "title", where), _required_text(row, "context", where))
        if key not in grouped:
            grouped[key] = {"context_id": f"{_slug(key[0])}-{len(grouped)}", "title": key[0], "context": key[1],
                            "questions": []}
        grouped[key]["questions"].append(
            {"question": _required_text(row, "question", where), "answers": _answers(row, where)}
        )
    if not grouped:
        raise DatasetFormatError(f"{source}: no rows")
    return _checked(list(grouped.values()), source)


def load_contexts(source: str, *, split: str = "train", limit: int | None = None) -> list[dict]:
    """`"bundled"`, a path to a SQuAD JSON file, or a `datasets` name/path (needs network for Hub names)."""
    if source == "bundled":
        contexts = load_bundled(split)
    elif is_local_path(source):
        contexts = load_squad_json(source)
    else:
        from datasets import load_dataset

        try:
            rows = load_dataset(source, split=split)
        except Exception as err:  # datasets raises many types for a missing/unreachable dataset
            raise DatasetFormatError(
                f"could not load dataset {source!r} (split {split!r}): {err}. Pass 'bundled', a SQuAD JSON "
                "file, or a datasets name that is reachable"
            ) from None
        contexts = contexts_from_rows(rows, source=source)
    return contexts[:limit] if limit else contexts


def is_local_path(source: str) -> bool:
    """A file or directory here, or a name that can only be one (`x.json`, `./x`, `/x`, `~/x`): never a `datasets`
    name, which would read a directory as a text dataset and write a cache."""
    if not source.strip():
        raise DatasetFormatError("--data is empty; pass 'bundled', a SQuAD v1.1 JSON file or a datasets name")
    return (source.endswith(".json") or os.path.exists(source) or source.startswith((".", "/", "~"))
            or source.count("/") > 1)  # a datasets name is `name` or `owner/name`
