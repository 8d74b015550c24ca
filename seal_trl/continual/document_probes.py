"""Probes for continual adaptation: labelled questions, or questions the model writes itself, and scoring.

A document with labelled questions is probed with them. Without labels the model is asked to write
`Q: ... A: ...` pairs from the document; pairs whose answer is not in the document are dropped (a model
cannot be checked against an answer it invented). When fewer than `min_items` remain (a small model
often writes nothing usable) a *cloze* probe is built from the document's own sentences: one content word
is blanked and asked for. The sentences a self-written or cloze probe is built from are held out of the
training examples, so the probe never tests text the candidate was trained on verbatim.

Scores (all higher-is-better, stored side by side, never collapsed):
- `accuracy`: percent of questions whose gold answer has the highest mean token log-prob among the
  probe's candidate answers (the other questions' answers of the same document plus distractors);
- `soft_accuracy`: the mean softmax weight of the gold answer over those candidates, in percent;
- `loglik`: the mean token log-prob of the best gold answer (what the inner loop's loglik grader uses).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .documents import Document
from ..generation import generate_text
from ..inner.shared_prompt import shared_prompt_logprobs
from ..probes import Probe, ProbeItem, knowledge_prompt
from ..tasks.knowledge import qa_pairs

PROBE_WRITER_INSTRUCTION = (
    "Read the passage below. Then write {n} short quiz questions about its facts, each with its answer taken "
    "word for word from the passage. Write each on one line as 'Q: <question> A: <answer>'."
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|\d[\d,.-]*\d|\d")
_STOP = set("""a an the and or but of in on at to for from by with as is are was were be been being this that these
those it its their his her they them he she we you i our your which who whom whose what when where why how not no
than then there here also into onto over under about after before during while since until very more most much many
such some any each every other another one two three all both can could would should may might must will shall do does
did has have had""".split())


@dataclass(frozen=True)
class DocumentProbe:
    """A probe for one document: the questions, how they were made, the candidate answers for accuracy, and
    the document sentences held out of training (empty for labelled probes)."""

    probe: Probe
    kind: str  # "labelled" | "self_written" | "cloze"
    distractors: tuple[str, ...] = ()
    held_out: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"kind": self.kind, "context_id": self.probe.context_id, "distractors": list(self.distractors),
                "held_out": list(self.held_out),
                "items": [{"prompt": i.prompt, "question": i.question, "answers": list(i.answers)}
                          for i in self.probe.items]}

    @classmethod
    def from_json(cls, data: dict) -> DocumentProbe:
        items = tuple(ProbeItem(prompt=i["prompt"], answers=tuple(i["answers"]), question=i.get("question", ""))
                      for i in data["items"])
        return cls(Probe(items=items, context_id=data.get("context_id")), data["kind"],
                   tuple(data.get("distractors", ())), tuple(data.get("held_out", ())))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def parse_probe_pairs(text: str, document_text: str, *, max_answer_words: int = 8) -> list[tuple[str, str]]:
    """`Q: ... A: ...` pairs from model output, kept only when the answer is short and appears in the document."""
    pairs, seen = [], set()
    lowered = document_text.lower()
    for q, a in qa_pairs(text or ""):  # the self_qa parser: linear in its input
        q, a = q.strip(), a.strip().rstrip(".").strip()
        if not q or not a or len(a.split()) > max_answer_words or a.lower() not in lowered or a.lower() in seen:
            continue
        seen.add(a.lower())
        pairs.append((q, a))
    return pairs


def _content_word(sentence: str, taken: set[str]) -> str | None:
    words = [w for w in _WORD.findall(sentence) if w.lower() not in _STOP and w.lower() not in taken and len(w) > 2]
    if not words:
        return None
    # prefer numbers and capitalised words (names): the facts a document is about
    def rank(w: str) -> tuple[int, int]:
        return (2 if w[0].isdigit() else 1 if w[0].isupper() else 0, len(w))

    return max(words, key=rank)


def cloze_pairs(document: Document, n: int) -> list[tuple[str, str, str]]:
    """Up to `n` (question, answer, source sentence) cloze items from every other sentence of the document,
    so that at least half the sentences stay available for training."""
    sents = sentences(document.text)
    chosen = sents[1::2] if len(sents) > 1 else sents
    out, taken = [], set()
    for s in chosen:
        if len(out) >= n:
            break
        word = _content_word(s, taken)
        if word is None:
            continue
        taken.add(word.lower())
        blanked = s.replace(word, "____", 1)
        out.append((f"Fill in the blank: {blanked}", word, s))
    return out


def labelled_probe(document: Document) -> DocumentProbe:
    """The document's own questions, with distractors from its text: a one-question probe would otherwise rank
    only gold answers and score 100 whatever the model knows."""
    items = tuple(ProbeItem(prompt=knowledge_prompt(document.title, q["question"]), answers=tuple(q["answers"]),
                            question=q["question"]) for q in document.questions)
    golds = [a for q in document.questions for a in q["answers"]]
    return DocumentProbe(Probe(items=items, context_id=document.doc_id), "labelled", _distractors(document, golds))


def write_probe_text(model, tokenizer, document: Document, *, n: int = 4, max_new_tokens: int = 160) -> str:
    """The model's own quiz for `document` (greedy), as raw text."""
    body = f"{PROBE_WRITER_INSTRUCTION.format(n=n)}\n\nTitle: {document.title}\n{document.text}"
    prompt = [{"role": "user", "content": body}] if getattr(tokenizer, "chat_template", None) else f"{body}\n\nQuiz:\n"
    return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens)


def self_written_probe(document: Document, written: str, *, n: int = 4, min_items: int = 2) -> DocumentProbe:
    """A probe from the model's own quiz text, or a cloze probe when it wrote fewer than `min_items` usable pairs."""
    sents = sentences(document.text)
    pairs = parse_probe_pairs(written, document.text)[:n]
    if len(pairs) >= min_items:
        held = []
        for _, a in pairs:  # hold out the sentence each answer comes from
            source = next((s for s in sents if a.lower() in s.lower()), None)
            if source and source not in held:
                held.append(source)
        if len(held) < len(sents):  # something must remain to train on
            items = tuple(ProbeItem(prompt=knowledge_prompt(document.title, q), answers=(a,), question=q)
                          for q, a in pairs)
            return DocumentProbe(Probe(items=items, context_id=document.doc_id), "self_written",
                                 _distractors(document, [a for _, a in pairs]), tuple(held))
    cloze = cloze_pairs(document, n)
    if not cloze:  # a one-word document: nothing can be held out, probe the text itself
        word = _content_word(document.text, set()) or document.text.split()[0]
        cloze = [(f"Fill in the blank: {document.text.replace(word, '____', 1)}", word, "")]
    items = tuple(ProbeItem(prompt=f"Topic: {document.title}\n{q}\nAnswer:", answers=(a,), question=q)
                  for q, a, _ in cloze)
    return DocumentProbe(Probe(items=items, context_id=document.doc_id), "cloze",
                         _distractors(document, [a for _, a, _ in cloze]), tuple(s for _, _, s in cloze if s))


def _distractors(document: Document, answers: Sequence[str], k: int = 4) -> tuple[str, ...]:
    """Other content words of the document, so single-question probes still have candidates to rank."""
    golds = {a.lower() for a in answers}
    words = []
    for w in _WORD.findall(document.text):
        if w.lower() not in _STOP and w.lower() not in golds and len(w) > 2 and w not in words:
            words.append(w)
    words.sort(key=lambda w: (not w[0].isupper() and not w[0].isdigit(), -len(w)))
    return tuple(words[:k])


def drop_held_out(lines: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """Training lines with every held-out sentence removed (lines that contain one verbatim lose it)."""
    out = []
    for line in lines:
        for s in held_out:
            if s and s in line:
                line = line.replace(s, " ")
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            out.append(line)
    return out


def probe_candidates(probe: DocumentProbe) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Per question: its prompt, the completions it ranks (its own gold answers, then every other question's first
    gold answer and the distractors, each with a leading space) and which of them are gold."""
    items = probe.probe.items
    pool: list[str] = []
    for item in items:
        for a in item.answers[:1]:
            if a not in pool:
                pool.append(a)
    for d in probe.distractors:
        if d not in pool:
            pool.append(d)
    candidates = [list(dict.fromkeys([*item.answers, *[c for c in pool if c not in item.answers]])) for item in items]
    return ([item.prompt for item in items], [[" " + c.strip() for c in cands] for cands in candidates],
            [[c in item.answers for c in cands] for item, cands in zip(items, candidates)])


@torch.no_grad()
def score_probe(model, tokenizer, probe: DocumentProbe, *, max_rows: int = 64) -> dict[str, float]:
    """`accuracy`, `soft_accuracy` (percent) and `loglik` of `model` as it is (adapters and all) on `probe`. Each
    question's prompt is encoded once for all its candidate answers (`shared_prompt_logprobs`)."""
    items = probe.probe.items
    prompts, candidates, golds = probe_candidates(probe)
    per_item = shared_prompt_logprobs(model, tokenizer, prompts, candidates, max_rows=max_rows)
    correct, soft, loglik = 0.0, 0.0, 0.0
    for is_gold, v in zip(golds, per_item):
        gold = torch.tensor(is_gold)
        best_gold, best_other = v[gold].max(), (v[~gold].max() if (~gold).any() else torch.tensor(float("-inf")))
        correct += float(best_gold > best_other)
        soft += float(torch.softmax(v, 0)[gold].sum())
        loglik += float(best_gold)
    n = len(items)
    return {"accuracy": 100.0 * correct / n, "soft_accuracy": 100.0 * soft / n, "loglik": loglik / n}
