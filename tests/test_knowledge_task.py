import json

import pytest

from seal_trl.plans import SelfEditError
from seal_trl.tasks.base import Task, completion_text
from seal_trl.tasks.knowledge import KnowledgeTask
from seal_trl.tasks.squad import DatasetFormatError, contexts_from_rows, load_contexts, load_squad_json

SQUAD = {"version": "1.1", "data": [{"title": "Velmora", "paragraphs": [
    {"context": "The river Velmora runs through Ostrand.", "qas": [
        {"id": "q1", "question": "Which valley?", "answers": [{"text": "Ostrand", "answer_start": 32}]}]},
    {"context": "Velmora floods in May.", "qas": [
        {"id": "q2", "question": "When does it flood?", "answers": [{"text": "May", "answer_start": 18},
                                                                    {"text": "May", "answer_start": 18}]}]}]}]}
CONTEXT = {"context_id": "velmora-0", "title": "Velmora", "context": "The river Velmora runs through Ostrand.",
           "questions": [{"question": "Which valley?", "answers": ["Ostrand"]}]}


def test_squad_json_round_trip(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD))
    contexts = load_squad_json(path)
    assert [c["context_id"] for c in contexts] == ["velmora-0", "velmora-1"]
    assert contexts[1]["questions"] == [{"question": "When does it flood?", "answers": ["May"]}]
    assert load_contexts(str(path), limit=1) == contexts[:1]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("data"), "`data`"),
    (lambda d: d["data"][0].pop("title"), "`title`"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "`context`"),
    (lambda d: d["data"][0]["paragraphs"][0].__setitem__("qas", []), "`qas`"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "`question`"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].__setitem__("answers", [{"text": " "}]), "`answers`"),
])
def test_bad_squad_files_name_the_field(tmp_path, mutate, field):
    data = json.loads(json.dumps(SQUAD))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=field):
        load_squad_json(path)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(DatasetFormatError, match="not a JSON file"):
        load_squad_json(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_squad_json(tmp_path / "missing.json")


def test_flat_rows_group_by_passage():
    rows = [{"id": "1", "title": "T", "context": "C one", "question": "q1", "answers": {"text": ["a"], "answer_start": [0]}},
            {"id": "2", "title": "T", "context": "C one", "question": "q2", "answers": {"text": ["b"], "answer_start": [1]}},
            {"id": "3", "title": "T", "context": "C two", "question": "q3", "answers": {"text": ["c"], "answer_start": [2]}}]
    contexts = contexts_from_rows(rows)
    assert len(contexts) == 2 and len(contexts[0]["questions"]) == 2
    with pytest.raises(DatasetFormatError, match="missing field `question`"):
        contexts_from_rows([{"title": "T", "context": "C", "answers": {"text": ["a"]}}])


def test_knowledge_task_is_a_task_and_prompts_for_base_and_chat_models():
    task = KnowledgeTask()
    assert isinstance(task, Task)
    text = task.prompt(CONTEXT)
    assert text.startswith("Read the passage below") and "Title: Velmora" in text and text.endswith("Implications:\n")
    chat = KnowledgeTask(style="rewrite", chat=True).prompt(CONTEXT)
    assert chat[0]["role"] == "user" and "rewrite it in a few different ways" in chat[0]["content"]
    with pytest.raises(ValueError, match="style"):
        KnowledgeTask(style="poem")


def test_implications_plan_strips_markers_prefixes_title_and_appends_passage():
    plan = KnowledgeTask().plan(CONTEXT, "Here are some implications:\n1. Ostrand has a river.\n2. The Velmora is wet.\n",
                                learning_rate=1e-3, epochs=3)
    texts = [e.completion for e in plan.examples]
    assert texts == ["Velmora\nOstrand has a river.", "Velmora\nThe Velmora is wet.",
                     "Velmora\nThe river Velmora runs through Ostrand."]
    assert plan.epochs == 3


def test_self_qa_plan_parses_pairs():
    edit = "Question: Which valley does it cross?\nAnswer: Ostrand\n\nQ: What is Velmora?\nA: A river"
    plan = KnowledgeTask(style="self_qa", include_passage=False).plan(CONTEXT, edit)
    assert [e.completion for e in plan.examples] == [
        "Velmora\nQuestion: Which valley does it cross?\nAnswer: Ostrand", "Velmora\nQuestion: What is Velmora?\nAnswer: A river"]
    with pytest.raises(SelfEditError) as err:
        KnowledgeTask(style="self_qa").plan(CONTEXT, "just prose, no pairs")
    assert err.value.reason == "unparseable"


def test_contexts_without_questions_or_fields_fail_clearly():
    task = KnowledgeTask()
    with pytest.raises(DatasetFormatError, match="no questions"):
        task.probe({**CONTEXT, "questions": []})
    with pytest.raises(DatasetFormatError, match="`title`"):
        task.prompt({**CONTEXT, "title": ""})
    with pytest.raises(DatasetFormatError, match="no questions"):
        task.build_dataset([{**CONTEXT, "questions": []}])
    with pytest.raises(DatasetFormatError, match=r"missing field\(s\) \['context'\]"):
        task.build_dataset([{k: v for k, v in CONTEXT.items() if k != "context"}])


def test_completion_text_handles_trl_shapes():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "xyz"}]) == "xyz"
    assert completion_text(None) == ""


def test_a_datasets_dataset_with_squad_columns_loads():
    from datasets import Dataset

    rows = Dataset.from_list([
        {"id": "1", "title": "T", "context": "C one", "question": "q1", "answers": {"text": ["a"], "answer_start": [0]}},
        {"id": "2", "title": "T", "context": "C one", "question": "q2", "answers": {"text": ["b"], "answer_start": [1]}},
    ])
    (context,) = contexts_from_rows(rows)
    assert [q["answers"] for q in context["questions"]] == [["a"], ["b"]]
