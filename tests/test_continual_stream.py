"""The bundled continual stream: 24 invented-entity documents, each with a gate half and a report half of questions
whose answers are verbatim spans of the text, disjoint from each other and from the bundled knowledge data."""

import json
import re
from importlib import resources

import pytest

from seal_trl.continual.stream import STREAM_SIZE, bundled_stream

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _answers(questions):
    return [a for q in questions for a in q["answers"]]


def _bundled_knowledge():
    titles, answers = [], set()
    for name in ("knowledge_train.json", "knowledge_validation.json"):
        data = json.loads(resources.files("seal_trl.data").joinpath(name).read_text(encoding="utf-8"))
        for article in data["data"]:
            titles.append(re.sub(r"\s*\(.*\)$", "", article["title"]))  # 'Hollin Crane (schooner)': the name
            answers.update(a["text"].lower() for p in article["paragraphs"] for q in p["qas"] for a in q["answers"])
    return titles, answers


def test_the_stream_has_24_documents_with_unique_ids_and_two_question_halves():
    docs = bundled_stream()
    assert len(docs) == STREAM_SIZE == 24
    assert [d.doc_id for d in docs] == [f"stream-{i:02d}" for i in range(1, 25)]
    for d in docs:
        assert len(d.questions) == 6 and len(d.report_questions) == 6, d.doc_id
        assert 9 <= len(_SENTENCE.split(d.text)) <= 12 and 150 <= len(d.text.split()) <= 230, d.doc_id
        assert d.for_learner().report_questions == () and d.report_view().questions == d.report_questions


def test_every_answer_is_a_short_verbatim_span_and_the_halves_ask_about_different_facts():
    for d in bundled_stream():
        gate, report = _answers(d.questions), _answers(d.report_questions)
        every = gate + report
        assert len({a.lower() for a in every}) == 12, f"{d.doc_id}: answers repeat"
        assert not {a.lower() for a in gate} & {a.lower() for a in report}, d.doc_id
        for q in (*d.questions, *d.report_questions):
            for a in q["answers"]:
                assert a in d.text, f"{d.doc_id}: {a!r} is not verbatim in the text"
                assert 1 <= len(a.split()) <= 4, f"{d.doc_id}: {a!r} is not a short span"
                assert a.lower() not in q["question"].lower(), f"{d.doc_id}: the question gives away {a!r}"
                assert a.lower() not in d.title.lower(), f"{d.doc_id}: the probe prompt's title gives away {a!r}"
                assert not any(a.lower() in b.lower() for b in every if b != a), f"{d.doc_id}: {a!r} inside another"
        # a question asking for a year or a count picks out the candidates with digits, so a base model gets those
        # right by type alone: equal numbers of them keep the two halves' chance floors equal
        digits = [sum(bool(re.search(r"\d", a)) for a in half) for half in (gate, report)]
        assert digits[0] == digits[1], f"{d.doc_id}: {digits[0]} gate vs {digits[1]} report answers with digits"
        sentences = _SENTENCE.split(d.text)
        gate_sents = {i for i, s in enumerate(sentences) for a in gate if a in s}
        report_sents = {i for i, s in enumerate(sentences) for a in report if a in s}
        assert not gate_sents & report_sents, f"{d.doc_id}: both halves ask about sentences {gate_sents & report_sents}"


def test_the_stream_shares_no_title_or_answer_with_the_bundled_knowledge_data():
    titles, answers = _bundled_knowledge()
    for d in bundled_stream():
        assert d.title not in titles
        mentioned = [t for t in titles if t.lower() in d.text.lower()]
        assert not mentioned, f"{d.doc_id} mentions bundled knowledge titles {mentioned}"
        shared = {a for a in _answers((*d.questions, *d.report_questions)) if a.lower() in answers}
        assert not shared, f"{d.doc_id}: answers also in the knowledge data: {shared}"


def test_bundled_stream_takes_the_first_n_and_refuses_n_out_of_range():
    first = bundled_stream(3)
    assert [d.doc_id for d in first] == ["stream-01", "stream-02", "stream-03"]
    assert first == bundled_stream()[:3] and len(bundled_stream(24)) == 24
    for bad in (0, 25, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="n must be an integer from 1 to 24"):
            bundled_stream(bad)


def _positions(doc, questions):
    text = doc.text.lower()
    found = [text.find(q["answers"][0].lower()) for q in questions]
    assert min(found) >= 0, doc.doc_id
    return [f / len(text) for f in found]


def test_the_two_halves_ask_about_the_same_stretches_of_the_text():
    """A short self-edit restates a document's opening facts most: a gate half that held the early facts and a report
    half the late ones would score the self-edit on what it covers and report on what it skips. The halves
    interleave along the text (in position order, neither half runs more than 2 answers ahead), their mean
    positions differ by at most 0.02 of the text, and the earliest answer alternates between the halves."""
    docs = bundled_stream()
    for i, d in enumerate(docs):
        gate, report = _positions(d, d.questions), _positions(d, d.report_questions)
        assert abs(sum(gate) / 6 - sum(report) / 6) <= 0.02, d.doc_id
        walk = 0
        for _, side in sorted([(p, 1) for p in gate] + [(p, -1) for p in report]):
            walk += side
            assert abs(walk) <= 2, f"{d.doc_id}: one half runs {abs(walk)} answers ahead"
        assert (min(gate) < min(report)) == (i % 2 == 0), f"{d.doc_id}: the earliest answer is on the wrong side"
