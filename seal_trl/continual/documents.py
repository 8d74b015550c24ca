"""Reading the documents a continual run adapts to: UTF-8 text, or JSON with optional questions.

A document is a title, a text and, when the user has them, labelled questions. Anything that is not
usable text (empty, binary, not UTF-8, over the size limit) is refused with `DocumentError` before the
run touches the registry, so bad input never costs earlier work. Texts longer than `chunk_chars` are
split at paragraph / sentence boundaries into several documents (`<id>#1`, `<id>#2`, ...).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..safe_json import check_regular_file, parse_json
from ..text_checks import text_defect

#: Files larger than this are refused (not read); 1 MiB of text is ~500 chunks, i.e. ~500 adapt steps.
DEFAULT_MAX_BYTES = 1_000_000
#: Texts longer than this are split into chunks; a chunk must fit the inner loop's max_seq_length.
DEFAULT_CHUNK_CHARS = 2_000
TEXT_SUFFIXES = (".txt", ".md", ".text")
SUFFIXES = (*TEXT_SUFFIXES, ".json")


class DocumentError(ValueError):
    """A document that cannot be adapted to; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Document:
    """One unit of new knowledge. `questions` is a list of `{"question", "answers": [...]}` or empty: the *gate*
    half, which the learner probes with (choosing the candidate and deciding promotion). `report_questions`, same
    shape, are held out for reporting: the learner strips them before it reads the document (`for_learner`), so a
    table scored on them measures what the gate never saw."""

    doc_id: str
    title: str
    text: str
    questions: tuple[Mapping[str, Any], ...] = field(default=())
    source: str = ""
    report_questions: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.title}\n{self.text}".encode()).hexdigest()

    @property
    def has_questions(self) -> bool:
        return bool(self.questions)

    def for_learner(self) -> Document:
        """This document without its report half: all the continual learner may read."""
        return replace(self, report_questions=()) if self.report_questions else self

    def report_view(self) -> Document | None:
        """This document probed by its report half (as `questions`), or None when it has none."""
        return replace(self, questions=self.report_questions, report_questions=()) if self.report_questions else None

    def as_context(self) -> dict[str, Any]:
        """The knowledge-task context dict (`context_id`, `title`, `context`, `questions`)."""
        return {"context_id": self.doc_id, "title": self.title, "context": self.text,
                "questions": [dict(q) for q in self.questions]}

    def to_json(self) -> dict[str, Any]:
        out = {"doc_id": self.doc_id, "title": self.title, "text": self.text, "source": self.source,
               "questions": _plain(self.questions)}
        if self.report_questions:
            out["report_questions"] = _plain(self.report_questions)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Document:
        return cls(doc_id=data["doc_id"], title=data["title"], text=data["text"], source=data.get("source", ""),
                   questions=tuple(data.get("questions") or ()),
                   report_questions=tuple(data.get("report_questions") or ()))


def _plain(questions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"question": q["question"], "answers": list(q["answers"])} for q in questions]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "doc"


def _decode(raw: bytes, where: str) -> str:
    if b"\x00" in raw[:8192]:
        raise DocumentError(f"{where}: looks like a binary file (it contains NUL bytes); pass UTF-8 text (.txt/.md) "
                            "or JSON documents")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(f"{where}: byte {err.start} is not valid UTF-8; convert the file to UTF-8 text "
                            "(e.g. `iconv -t utf-8`)") from None


def _usable(text: str, where: str) -> str:
    """`text` stripped, or `DocumentError` when it holds control characters (NULs anywhere), terminal escapes, lone
    surrogates or nothing visible (`text_checks.text_defect`)."""
    defect = text_defect(text)
    if defect:
        raise DocumentError(f"{where} has {defect}; fix or remove it in the document")
    return text.strip()


def _questions(raw: Any, where: str, *, field_name: str = "questions") -> tuple[dict[str, Any], ...]:
    if raw in (None, []):
        return ()
    if not isinstance(raw, list):
        raise DocumentError(f"{where}: field `{field_name}` must be a list of {{'question': str, 'answers': [str]}}")
    out = []
    for i, q in enumerate(raw):
        qwhere = f"{where}.{field_name}[{i}]"
        if not isinstance(q, Mapping) or not isinstance(q.get("question"), str) or not q["question"].strip():
            raise DocumentError(f"{qwhere}: missing field `question` (text)")
        answers = q.get("answers", q.get("answer"))
        if isinstance(answers, str):
            answers = [answers]
        if answers is not None and not isinstance(answers, list):  # a dict would be read as its keys
            raise DocumentError(f"{qwhere}: field `answers` must be a list of answers (text), got "
                                f"{type(answers).__name__}")
        answers = [a.get("text") if isinstance(a, Mapping) else a for a in (answers or [])]
        answers = [_usable(a, f"{qwhere}.answers[{j}]") for j, a in enumerate(answers)
                   if isinstance(a, str) and a.strip()]
        if not answers:
            raise DocumentError(f"{qwhere}: missing field `answers` (a list with at least one non-empty answer)")
        out.append({"question": _usable(q["question"], f"{qwhere}.question"), "answers": answers})
    return tuple(out)


def split_text(text: str, chunk_chars: int) -> list[str]:
    """`text` in pieces of at most `chunk_chars`, cut at paragraph, then sentence, then word boundaries."""
    if len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for unit in re.split(r"\n\s*\n", text):
        unit = unit.strip()
        if not unit:
            continue
        if len(unit) <= chunk_chars:
            pieces.append(unit)
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", unit):
            while len(sentence) > chunk_chars:  # a giant "sentence": cut at the last space that fits
                cut = sentence.rfind(" ", 0, chunk_chars)
                cut = cut if cut > 0 else chunk_chars
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= chunk_chars:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks


def make_documents(doc_id: str, title: str, text: str, *, questions: Sequence[Mapping] = (), source: str = "",
                   chunk_chars: int = DEFAULT_CHUNK_CHARS, report_questions: Sequence[Mapping] = ()
                   ) -> list[Document]:
    """One document, or several chunks of it when `text` is longer than `chunk_chars` (questions stay on a
    chunk only when the text fits in one: labelled questions cannot be assigned to chunks reliably)."""
    where = source or doc_id
    if not isinstance(text, str) or not text.strip():
        raise DocumentError(f"{where}: the document is empty (field `text`); give it some text to learn")
    if chunk_chars < 200:
        raise DocumentError(f"chunk_chars={chunk_chars} is too small; use at least 200 characters")
    text = _usable(text, f"{where}: field `text`")
    title = _usable(title, f"{where}: field `title`") if (title or "").strip() else doc_id
    chunks = split_text(text, chunk_chars)
    if len(chunks) == 1:
        return [Document(doc_id, title, text, tuple(questions), source, tuple(report_questions))]
    if questions or report_questions:
        raise DocumentError(f"{where}: the text is {len(text)} characters, over chunk_chars={chunk_chars}, and has "
                            "labelled questions; split it into documents with their own questions, or raise "
                            "chunk_chars (--chunk-chars)")
    return [Document(f"{doc_id}#{i + 1}", f"{title} (part {i + 1})", chunk, (), source)
            for i, chunk in enumerate(chunks)]


def _from_json(data: Any, path: Path, chunk_chars: int) -> list[Document]:
    where = str(path)
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):  # SQuAD v1.1
        from ..tasks.squad import DatasetFormatError, contexts_from_squad

        try:
            contexts = contexts_from_squad(data, source=where)
        except DatasetFormatError as err:
            raise DocumentError(str(err)) from None
        return [Document(c["context_id"], c["title"], c["context"], tuple(c["questions"]), where) for c in contexts]
    items = data if isinstance(data, list) else [data]
    docs: list[Document] = []
    raw_ids: dict[str, str] = {}  # slug -> the id it came from
    for i, item in enumerate(items):
        iwhere = f"{where}[{i}]" if isinstance(data, list) else where
        if not isinstance(item, Mapping):
            raise DocumentError(f"{iwhere}: expected an object {{'title', 'text', 'questions'?}}")
        text = item.get("text", item.get("context"))
        if not isinstance(text, str):
            raise DocumentError(f"{iwhere}: missing field `text` (the document's text)")
        title = item.get("title") if isinstance(item.get("title"), str) else path.stem
        doc_id = str(item.get("id") or (path.stem if len(items) == 1 else f"{path.stem}-{i}"))
        slug = _slug(doc_id)
        if raw_ids.setdefault(slug, doc_id) != doc_id:  # distinct ids with one slug ('文書一', '文書二' -> 'doc')
            slug = f"{slug}-{i}"
        docs.extend(make_documents(slug, title, text, questions=_questions(item.get("questions"), iwhere),
                                   report_questions=_questions(item.get("report_questions"), iwhere,
                                                               field_name="report_questions"),
                                   source=iwhere, chunk_chars=chunk_chars))
    return docs


def read_document_file(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                       chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[Document]:
    """The document(s) in one file: `.json` (one object, a list, or SQuAD v1.1) or UTF-8 text (title = the
    file name). Files over `max_bytes` are refused before reading."""
    path = Path(path)
    check_regular_file(path, error=DocumentError, hint="; pass document files or a directory of them (--documents)")
    size = path.stat().st_size
    if size > max_bytes:
        raise DocumentError(f"{path}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit per document "
                            "file (--max-document-mb); split it into smaller files")
    if size == 0:
        raise DocumentError(f"{path}: the file is empty; give it some text to learn")
    text = _decode(path.read_bytes(), str(path))
    if path.suffix.lower() == ".json":
        data = parse_json(text, str(path), error=DocumentError,
                          hint="; expected {'title', 'text', 'questions'?}, a list of them, or SQuAD v1.1")
        return _from_json(data, path, chunk_chars)
    return make_documents(_slug(path.stem), path.stem.replace("_", " "), text, source=str(path),
                          chunk_chars=chunk_chars)


def read_documents(paths: str | Path | Iterable[str | Path], *, max_bytes: int = DEFAULT_MAX_BYTES,
                   chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[Document]:
    """Every document in `paths` (files, or directories whose .txt/.md/.json files are read in name order).

    All files are validated before anything is returned, so a bad file stops the run before it starts.
    Document ids must be unique.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if any(not str(p).strip() for p in paths):
        raise DocumentError("an empty path in --documents (an empty string would read the working directory): "
                            "name the files or directories")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise DocumentError(f"{p}: the directory has no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise DocumentError(f"{p}: no such file or directory (--documents)")
    docs = [d for f in files for d in read_document_file(f, max_bytes=max_bytes, chunk_chars=chunk_chars)]
    if not docs:
        raise DocumentError("no documents given (--documents)")
    seen: dict[str, str] = {}
    for d in docs:
        if d.doc_id in seen:
            raise DocumentError(f"document id {d.doc_id!r} appears twice ({seen[d.doc_id]} and {d.source}); give "
                                "each document a unique `id` or file name")
        seen[d.doc_id] = d.source
    return docs
