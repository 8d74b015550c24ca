"""A context is what it contains: two different passages never share a before-score, a baseline, a stored result
or a dataset row under one id, and stored results follow the content and every setting that changes them."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner.store import tensors_fingerprint
from seal_trl.reward import SelfEditReward
from seal_trl.tasks.knowledge import KnowledgeTask
from seal_trl.tasks.squad import contexts_from_squad, load_bundled

EDIT = "The river Velmora runs through Ostrand.\nThe Velmora feeds three lakes."


def article(title, passage="The river Velmora runs through Ostrand.", answer="Ostrand"):
    return {"title": title, "paragraphs": [{"context": passage, "qas": [
        {"id": "q", "question": "Which valley?", "answers": [{"text": answer, "answer_start": 0}]}]}]}


def context(cid="velmora", passage="The river Velmora runs through Ostrand.", question="Which valley?"):
    return {"context_id": cid, "title": "Velmora", "context": passage,
            "questions": [{"question": question, "answers": ["Ostrand"]}]}


@pytest.fixture()
def loop(tiny_model_dir, tiny_tokenizer):
    return InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                     InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=1))


def test_titles_that_slug_alike_get_distinct_ids():
    data = {"data": [article("Москва"), article("東京"), article("Velmora"), article("Velmora!"), article("Ostrand")]}
    ids = [c["context_id"] for c in contexts_from_squad(data)]
    assert len(set(ids)) == 5
    assert ids[-1] == "ostrand-0"  # a title of its own keeps the plain id


def test_bundled_ids_are_unique_and_unchanged():
    for split in ("train", "validation"):
        contexts = load_bundled(split)
        assert len({c["context_id"] for c in contexts}) == len(contexts)
    first = load_bundled("train")[0]
    assert first["context_id"].endswith("-0") and "-0-0" not in first["context_id"]


def test_a_dataset_refuses_two_contexts_under_one_id():
    task = KnowledgeTask()
    task.build_dataset([context(), context()])  # the same context twice is harmless
    with pytest.raises(ValueError, match=r"contexts\[0\] and contexts\[1\] are different contexts with the same "
                                         r"context_id 'velmora': give each context its own context_id"):
        task.build_dataset([context(), context(passage="The Velmora is dry.")])


def test_one_reward_call_refuses_two_contexts_under_one_id(loop):
    reward = SelfEditReward(KnowledgeTask(), loop, progress=False)
    with pytest.raises(ValueError, match="same context_id 'velmora'"):
        reward.score_many([context(), context(question="Which lakes?")], [EDIT, EDIT])


def test_the_before_score_follows_the_questions_not_only_the_id(loop):
    task = KnowledgeTask()
    first = loop.score(task.probe(context()), context_id="velmora")
    other = loop.score(task.probe(context(question="Which lakes does the river feed?")), context_id="velmora")
    assert other != first
    assert loop.score(task.probe(context()), context_id="velmora") == first


def test_an_edited_passage_is_not_read_back_from_the_store(loop, tmp_path):
    reward = SelfEditReward(KnowledgeTask(), loop, progress=False, store=tmp_path / "runs.jsonl")
    reward.score_many([context()], [EDIT])
    reward.score_many([context()], [EDIT])
    assert reward.store.hits == 1
    reward.score_many([context(passage="The river Velmora runs through Ostrand and Quell.")], [EDIT])
    assert reward.store.hits == 1 and len(reward.store) == 2


def test_store_settings_include_the_task_fields_and_the_judge(loop):
    with_passage = SelfEditReward(KnowledgeTask(), loop)._settings()
    without = SelfEditReward(KnowledgeTask(include_passage=False), loop)._settings()
    assert with_passage != without
    assert SelfEditReward(KnowledgeTask(chat=True), loop)._settings() == with_passage  # prompts only

    class Judge:
        name_or_path = "judges/a"

    loop.grader.judge_model = Judge()
    try:
        first = SelfEditReward(KnowledgeTask(), loop)._settings()
        Judge.name_or_path = "judges/b"
        assert SelfEditReward(KnowledgeTask(), loop)._settings() != first
    finally:
        del loop.grader.judge_model


def test_fingerprints_take_scalar_tensors():
    one = tensors_fingerprint({"scale": torch.tensor(1.0), "w": torch.ones(2)})
    assert one != tensors_fingerprint({"scale": torch.tensor(2.0), "w": torch.ones(2)})


def test_repeated_ids_in_a_squad_file_are_made_unique():
    # the two "x" articles become x-0-0 and x-1-0, and "x 0" slugs to x-0, so its first passage is x-0-0 too: a
    # legitimate file (issue 32), so the later one gets a suffix instead of the file being refused
    data = {"data": [article("x"), article("x"), article("x 0")]}
    assert [c["context_id"] for c in contexts_from_squad(data)] == ["x-0-0", "x-1-0", "x-0-0-d2"]
