"""The bundled invented-entity passages: SQuAD v1.1 shape, exact answer spans, disjoint splits."""

import json
import re
from pathlib import Path

import pytest

from seal_trl.tasks.squad import load_bundled

DATA = Path(__file__).resolve().parents[1] / "seal_trl" / "data"


@pytest.fixture(scope="module")
def splits():
    return {s: json.loads((DATA / f"knowledge_{s}.json").read_text(encoding="utf-8")) for s in ("train", "validation")}


def test_squad_v11_structure(splits):
    for name, split in splits.items():
        assert set(split) == {"version", "data"} and split["version"] == "seal-trl-invented-2"
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
    # Enough passages for paired comparisons with power: >= 160 train, >= 60 validation, 5 questions each.
    assert len(splits["train"]["data"]) >= 160 and len(splits["validation"]["data"]) >= 60
    for split in splits.values():
        for article in split["data"]:
            (paragraph,) = article["paragraphs"]
            assert len(paragraph["qas"]) == 5, article["title"]
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


def _names(article) -> set[str]:
    """The invented entities of a passage: its title, the title's first word (the invented name: "Zarn" of "Zarn
    River") and every multi-word capitalised name in the passage."""
    title = re.sub(r"\s*\(.*\)$", "", article["title"])
    text = title + ". " + article["paragraphs"][0]["context"]
    full_names = set(re.findall(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", text))
    return {title, title.split()[0]} | {n for n in full_names if not n.startswith("The ")}


def test_entities_distinct_across_splits(splits):
    train = set().union(*(_names(a) for a in splits["train"]["data"]))
    for article in splits["validation"]["data"]:
        shared = _names(article) & train
        assert not shared, (article["title"], sorted(shared))


def test_answers_occur_once_and_questions_do_not_give_them_away(splits):
    for split in splits.values():
        for article in split["data"]:
            context = article["paragraphs"][0]["context"]
            for qa in article["paragraphs"][0]["qas"]:
                text = qa["answers"][0]["text"]
                assert context.count(text) == 1, qa["id"]
                assert text.lower() not in qa["question"].lower(), qa["id"]


def test_loader_reads_bundled_splits(splits):
    train, validation = load_bundled("train"), load_bundled("validation")
    assert len(train) == len(splits["train"]["data"]) and len(validation) == len(splits["validation"]["data"])
    assert not {c["context_id"] for c in train} & {c["context_id"] for c in validation}
    with pytest.raises(ValueError, match="split"):
        load_bundled("test")
