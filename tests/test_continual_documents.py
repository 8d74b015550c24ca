"""Reading documents for continual adaptation: formats, bad input, size limits, chunking."""

from __future__ import annotations

import json
import re

import pytest

from seal_trl.continual.documents import DocumentError, read_documents, split_text
from seal_trl.continual.regression import RegressionSuite, RegressionSuiteError


def test_text_json_and_squad_documents(tmp_path):
    (tmp_path / "01_harbour.txt").write_text("The harbour of Quell opened in 1802.\n")
    (tmp_path / "02.json").write_text(json.dumps([
        {"id": "mill", "title": "The mill", "text": "The mill grinds oats.",
         "questions": [{"question": "What does the mill grind?", "answers": ["oats"]}]},
        {"title": "No questions", "text": "Bells ring at noon."}]))
    (tmp_path / "03_squad.json").write_text(json.dumps({"data": [{"title": "Vell", "paragraphs": [
        {"context": "Vell is a hill.", "qas": [{"id": "1", "question": "What is Vell?",
                                                "answers": [{"text": "a hill", "answer_start": 7}]}]}]}]}))
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs = read_documents(tmp_path)
    assert [d.doc_id for d in docs] == ["01-harbour", "mill", "02-1", "vell-0"]
    assert docs[0].title == "01 harbour" and not docs[0].has_questions
    assert docs[1].questions[0]["answers"] == ["oats"] and docs[1].has_questions
    assert docs[3].questions[0]["answers"] == ["a hill"]


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"   \n\t ", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"caf\xe9 au lait", "byte 3 is not valid UTF-8"),
])
def test_bad_text_files_are_refused_clearly(tmp_path, content, match):
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=match):
        read_documents(path)


def test_bad_json_documents_name_the_field(tmp_path):
    cases = {
        "a.json": ("{not json", "not valid JSON"),
        "b.json": (json.dumps({"title": "x"}), "missing field `text`"),
        "c.json": (json.dumps({"text": "t", "questions": [{"question": "q?"}]}), r"questions\[0\].*`answers`"),
        "d.json": (json.dumps({"text": "t", "questions": "q"}), "`questions` must be a list"),
        "e.json": (json.dumps({"text": ""}), "empty"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DocumentError, match=match):
            read_documents(tmp_path / name)


def test_ten_megabyte_document_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate(10_000_000)  # sparse: nothing is read, the size alone is refused
    with pytest.raises(DocumentError, match=r"10\.0 MB is over the 1\.0 MB limit.*--max-document-mb"):
        read_documents(big)


def test_long_documents_are_chunked_at_sentence_boundaries(tmp_path):
    sentence = "The quarry at Dunmere produced grey slate for roofs. "
    path = tmp_path / "long.txt"
    path.write_text(sentence * 100)
    docs = read_documents(path, chunk_chars=500)
    assert len(docs) > 5 and all(len(d.text) <= 500 for d in docs)
    assert docs[0].doc_id == "long#1" and docs[1].title == "long (part 2)"
    assert " ".join(d.text for d in docs) == (sentence * 100).strip()
    assert split_text("x" * 1200, 500) == ["x" * 500, "x" * 500, "x" * 200]
    path.write_text(json.dumps({"text": sentence * 100, "questions": [{"question": "q", "answers": ["a"]}]}))
    long_json = tmp_path / "long.json"
    path.rename(long_json)
    with pytest.raises(DocumentError, match="labelled questions.*--chunk-chars"):
        read_documents(long_json, chunk_chars=500)


def test_missing_paths_empty_directories_and_duplicate_ids(tmp_path):
    with pytest.raises(DocumentError, match="no such file or directory"):
        read_documents(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocumentError, match="has no .txt"):
        read_documents(tmp_path / "empty")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("two")
    with pytest.raises(DocumentError, match="'a' appears twice"):
        read_documents([tmp_path / "a.txt", tmp_path / "sub"])



def test_distinct_ids_that_share_a_slug_stay_distinct_and_true_duplicates_are_refused(tmp_path):
    """Non-Latin ids all slug to 'doc' (and 'Report 1' / 'report-1' to one slug): they were refused as duplicates."""
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"id": "文書一", "text": "The cat sat."}, {"id": "文書二", "text": "The dog ran."},
                                {"id": "Report 1", "text": "Rain."}, {"id": "report-1", "text": "Snow."}]))
    ids = [d.doc_id for d in read_documents(path)]
    assert len(set(ids)) == 4 and ids[0] == "doc" and ids[2] == "report-1"
    path.write_text(json.dumps([{"id": "a", "text": "One."}, {"id": "a", "text": "Two."}]))
    with pytest.raises(DocumentError, match="'a' appears twice"):
        read_documents(path)


def test_bundled_regression_suite_and_bad_suites(tmp_path):
    suite = RegressionSuite.bundled()
    # >= 40 sentences: the continual benchmark splits them into two halves of 20 (a 4-sentence half was too noisy a
    # gate signal to predict the other half)
    assert len(re.split(r"(?<=[.!?])\s+", suite.heldout_text)) >= 40 and len(suite.qa) >= 64
    assert all(len(choices) == 4 and len(set(choices)) == 4 and 0 <= answer < 4 for _, choices, answer in suite.qa)
    questions = [q.lower() for q, _, _ in suite.qa]
    assert len(set(questions)) == len(questions), "a question appears twice in the bundled suite"
    positions = [answer for _, _, answer in suite.qa]
    assert min(positions.count(i) for i in range(4)) >= len(positions) // 8, "the correct choice sits in one place"
    with pytest.raises(RegressionSuiteError, match="heldout_text"):
        RegressionSuite.from_json({"qa": []})
    with pytest.raises(RegressionSuiteError, match=r"qa\[0\] needs"):
        RegressionSuite.from_json({"heldout_text": "x", "qa": [{"question": "q", "choices": ["a"], "answer": 0}]})
    for bad_item in ("q?", None, {"question": "q", "choices": ["a", 2], "answer": 0},
                     {"question": "q", "choices": ["a", "b"], "answer": True}):
        with pytest.raises(RegressionSuiteError, match=r"qa\[0\] needs"):
            RegressionSuite.from_json({"heldout_text": "x", "qa": [bad_item]})
    with pytest.raises(RegressionSuiteError, match="`qa` must be a list"):
        RegressionSuite.from_json({"heldout_text": "x", "qa": "q? a"})


def test_probe_pairs_parse_in_linear_time_on_long_whitespace_runs():
    """Model output is anything; the old regex was quadratic in a run of spaces (100,000 took ~50 s)."""
    from seal_trl.continual.document_probes import parse_probe_pairs
    from test_hostile_inputs import hang_guard

    text = "Q: Where is the mill?" + " " * 200_000 + "x\nA: Ostrand"
    with hang_guard(20):
        pairs = parse_probe_pairs(text, "The mill stands in Ostrand.")
    assert [answer for _, answer in pairs] == ["Ostrand"]
    assert parse_probe_pairs("Q: Where is the mill?\nA: Ostrand", "The mill stands in Ostrand.") == [
        ("Where is the mill?", "Ostrand")]


def test_a_one_question_document_is_not_scored_against_gold_answers_only(tiny_model, tiny_tokenizer):
    from seal_trl.continual.document_probes import labelled_probe, score_probe
    from seal_trl.continual.documents import Document

    doc = Document(doc_id="d", title="Velmora", text="The river Velmora runs through Ostrand and feeds three lakes.",
                   questions=({"question": "Which valley does it cross?", "answers": ["Ostrand"]},))
    probe = labelled_probe(doc)
    assert probe.distractors and "Ostrand" not in probe.distractors
    assert score_probe(tiny_model, tiny_tokenizer, probe)["soft_accuracy"] < 100.0  # a gold share of a softmax
