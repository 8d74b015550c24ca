"""The bundled invented-entity passages: SQuAD v1.1 shape, exact answer spans, disjoint splits."""

import json
from pathlib import Path

import pytest

from seal_trl.tasks.squad import load_bundled

DATA = Path(__file__).resolve().parents[1] / "seal_trl" / "data"


@pytest.fixture(scope="module")
def splits():
    return {s: json.loads((DATA / f"knowledge_{s}.json").read_text(encoding="utf-8")) for s in ("train", "validation")}


def test_squad_v11_structure(splits):
    for name, split in splits.items():
        assert set(split) == {"version", "data"} and split["version"] == "seal-trl-invented-1"
        prefix = "inv-train-" if name == "train" else "inv-val-"
        for article in split["data"]:
            assert set(article) == {"title", "paragraphs"} and isinstance(article["title"], str) and article["title"]
            (paragraph,) = article["paragraphs"]
            assert set(paragraph) == {"context", "qas"} and isinstance(paragraph["context"], str)
            for qa in paragraph["qas"]:
                assert set(qa) == {"id", "question", "answers"}
                assert isinstance(qa["id"], str) and qa["id"].startswith(prefix)
                assert isinstance(qa["question"], str) and qa["question"].endswith("?")
                assert qa["answers"], qa["id"]
                for answer in qa["answers"]:
                    assert set(answer) == {"text", "answer_start"}
                    assert isinstance(answer["answer_start"], int) and not isinstance(answer["answer_start"], bool)
                    assert isinstance(answer["text"], str) and 1 <= len(answer["text"].split()) <= 5, qa["id"]


def test_sizes_and_question_counts(splits):
    assert len(splits["train"]["data"]) == 36 and len(splits["validation"]["data"]) == 12
    for split in splits.values():
        for article in split["data"]:
            (paragraph,) = article["paragraphs"]
            assert 4 <= len(paragraph["qas"]) <= 6
            assert 60 <= len(paragraph["context"].split()) <= 220


def test_answer_spans_match(splits):
    for split in splits.values():
        for article in split["data"]:
            context = article["paragraphs"][0]["context"]
            for qa in article["paragraphs"][0]["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert context[start:start + len(answer["text"])] == answer["text"], qa["id"]


def test_titles_and_ids_unique_and_splits_disjoint(splits):
    titles = [a["title"] for s in splits.values() for a in s["data"]]
    ids = [qa["id"] for s in splits.values() for a in s["data"] for qa in a["paragraphs"][0]["qas"]]
    assert len(set(titles)) == len(titles) and len(set(ids)) == len(ids)


def test_loader_reads_bundled_splits():
    train, validation = load_bundled("train"), load_bundled("validation")
    assert len(train) == 36 and len(validation) == 12
    assert not {c["context_id"] for c in train} & {c["context_id"] for c in validation}
    with pytest.raises(ValueError, match="split"):
        load_bundled("test")
