"""The bundled document stream: 24 short documents about invented entities, for continual-learning benchmarks.

Each document (`seal_trl/data/continual_stream.json`, original text) has 12 questions whose answers are short spans
of its text: 6 in `questions` (the gate half, which the learner probes with) and 6 in `report_questions` (the
report half, about other facts, which the learner never reads; score it with `Document.report_view()`). The
halves interleave along the text (tests/test_continual_stream.py), so a short self-edit that restates a document's
opening covers both alike. The entities do not exist, so a base model can only guess, and what it learns from a document can be told apart from
what it forgets of earlier ones.
"""

from __future__ import annotations

from importlib import resources

from .documents import Document, read_document_file

STREAM_FILE = "continual_stream.json"
STREAM_SIZE = 24


def bundled_stream(n: int | None = None) -> list[Document]:
    """The first `n` documents of the bundled stream, in order (all 24 when `n` is None), read and validated by
    `read_document_file` like any user file."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= STREAM_SIZE):
        raise ValueError(f"bundled_stream(n={n!r}): n must be an integer from 1 to {STREAM_SIZE}, or None for all "
                         f"{STREAM_SIZE} documents")
    with resources.as_file(resources.files("seal_trl.data").joinpath(STREAM_FILE)) as path:
        docs = read_document_file(path)
    if len(docs) != STREAM_SIZE:  # the shipped file and STREAM_SIZE must agree, or n's range is a lie
        raise ValueError(f"the bundled {STREAM_FILE} has {len(docs)} documents, expected {STREAM_SIZE}; the "
                         "package data is damaged or was edited without updating STREAM_SIZE")
    return docs if n is None else docs[:n]
