"""`max_copied`: self-edits that are mostly the passage's own words are failed, not run (a training option)."""

import pytest
from transformers import AutoModelForCausalLM

from seal_trl.config import SEALConfig
from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.plans import FAILURE_REASONS
from seal_trl.reward import SelfEditReward
from seal_trl.tasks.arc.task import ArcTask
from seal_trl.tasks.knowledge import KnowledgeTask, copied_share

PASSAGE = ("The Zorvath Canal is a narrow inland waterway in the province of Quendral, linking the salt lake of "
           "Ossiny with the river Tamerle. Construction began in 1812 under the engineer Halvard Mentz.")
CONTEXT = {"context_id": "zorvath", "title": "Zorvath Canal", "context": PASSAGE,
           "questions": [{"question": "Who was the engineer of the Zorvath Canal?", "answers": ["Halvard Mentz"]}]}
COPY = PASSAGE.split(". ")[0] + "."
OWN_WORDS = "Boats could travel from Ossiny to the Tamerle by water.\nHalvard Mentz led the building works."


def columns(n):
    return {k: [CONTEXT[k]] * n for k in ("context_id", "title", "context", "questions")}


def test_copied_share():
    assert copied_share(PASSAGE, PASSAGE) == 1.0
    assert copied_share(COPY.upper().replace(",", " ;"), PASSAGE) == 1.0  # case and punctuation ignored
    assert copied_share(OWN_WORDS, PASSAGE) == 0.0
    assert copied_share("Halvard Mentz built it.", PASSAGE) == 0.0  # under six words: nothing to compare
    half = COPY + " " + " ".join(f"w{i}" for i in range(21))  # 21 copied 6-grams, then 21 of its own
    assert copied_share(half, PASSAGE) == pytest.approx(0.5, abs=0.05)


@pytest.fixture()
def inner(tiny_model_dir, tiny_tokenizer):
    loop = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                     InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=1))
    jobs = []
    original = loop.run_many
    loop.run_many = lambda batch, **kw: jobs.extend(batch) or original(batch, **kw)
    loop.jobs_seen = jobs
    return loop


def test_a_copy_is_failed_without_a_run_and_an_own_words_self_edit_runs(inner):
    reward = SelfEditReward(KnowledgeTask(), inner, progress=False, max_copied=0.5)
    logged, metrics = {}, {}
    rewards = reward([""] * 2, [COPY, OWN_WORDS], log_extra=logged.__setitem__,
                     log_metric=metrics.__setitem__, **columns(2))
    copy_run, own_run = (runs[0] for runs in reward.last_results)
    assert copy_run.error == "copies_context" and "100% of its 6-word sequences" in copy_run.error_message
    assert rewards[0] == 0.0 and copy_run.score_after is None
    assert own_run.ok and rewards[1] == pytest.approx(own_run.reward)
    assert len(inner.jobs_seen) == 1  # only the own-words self-edit was trained
    assert logged["inner_error"] == ["copies_context", ""]
    assert metrics["inner/failed/copies_context"] == 0.5
    # every reason is logged, 0 where absent: TRL averages a metric over the processes that logged it
    assert {k for k in metrics if k.startswith("inner/failed/")} == {f"inner/failed/{r}" for r in FAILURE_REASONS}
    assert metrics["inner/failed/nan_loss"] == 0.0


def test_without_max_copied_a_copy_runs(inner):
    reward = SelfEditReward(KnowledgeTask(), inner, progress=False)
    reward([""], [COPY], **columns(1))
    assert reward.last_results[0][0].ok and len(inner.jobs_seen) == 1


def test_bad_settings_are_refused(tmp_path, inner):
    with pytest.raises(ValueError, match=r"max_copied must be in \[0, 1\)"):
        SelfEditReward(KnowledgeTask(), inner, max_copied=1.5)
    with pytest.raises(ValueError, match="the arc task has none"):
        SelfEditReward(ArcTask(), inner, max_copied=0.5)
    with pytest.raises(ValueError, match="self_edit_max_copied=1.0: use a share"):
        SEALConfig(output_dir=str(tmp_path), self_edit_max_copied=1.0)
    assert SEALConfig(output_dir=str(tmp_path), self_edit_max_copied=0.5).self_edit_max_copied == 0.5


def test_the_trainer_passes_the_setting_to_its_reward(tiny_model_dir, tiny_tokenizer, tmp_path):
    from seal_trl.trainer import SEALTrainer

    args = SEALConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, use_cpu=True, report_to=[], save_strategy="no",
                      self_edit_max_copied=0.3, inner_lora_r=4, inner_lora_alpha=8,
                      inner_target_modules=["q_proj", "v_proj"])
    trainer = SEALTrainer(str(tiny_model_dir), args=args, processing_class=tiny_tokenizer,
                          train_dataset=KnowledgeTask().build_dataset([CONTEXT], tiny_tokenizer))
    assert trainer.seal_reward.max_copied == 0.3


def test_bytes_are_left_to_the_parser(inner):
    reward = SelfEditReward(KnowledgeTask(), inner, progress=False, max_copied=0.5)
    (_, runs, reason), = reward.score_many([CONTEXT], [b"\xff\xfe not text"])
    assert reason == "not_utf8" and not inner.jobs_seen
