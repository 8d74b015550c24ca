"""The inner-loop preflight: the most expensive run the bounds allow, measured before training; a run that does not
fit stops training before any generation, naming what to lower."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner.preflight import PreflightFailure, run_preflight, worst_case_work
from seal_trl.plans import PlanBounds
from seal_trl.trainer import SEALTrainer

from test_trainer import dataset, tiny_args  # noqa: F401  (the fixture too)

KNOBS = ("inner_batch_self_edits", "inner_max_seq_length", "inner_load_in_4bit", "inner_gradient_checkpointing")


def tiny_loop(tiny_model_dir, tiny_tokenizer, **config):
    settings = dict(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), max_seq_length=256, **config)
    return InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer, InnerLoopConfig(**settings))


def test_the_worst_case_is_the_longest_plan_the_bounds_admit_at_k(tiny_model_dir, tiny_tokenizer):
    loop = tiny_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=3, batch_size=2,
                     bounds=PlanBounds(max_example_tokens=512, max_total_tokens=16_384))
    work = worst_case_work(loop)
    assert len(work) == 3  # K
    job, encoded = work[0]
    assert [len(e.input_ids) for e in encoded] == [256, 256]  # max_seq_length caps the bound's 512; batch 2
    assert job.plan.num_steps == 2 and job.plan.batch_size == 2
    capped = worst_case_work(loop, batch_size=16)  # the total-token bound caps the batch too
    assert len(capped[0][1]) == 16
    tight = tiny_loop(tiny_model_dir, tiny_tokenizer, bounds=PlanBounds(max_total_tokens=600))
    assert len(worst_case_work(tight, batch_size=16)[0][1]) == 600 // 256


def test_the_preflight_measures_memory_and_time_and_refuses_over_a_limit(tiny_model_dir, tiny_tokenizer):
    loop = tiny_loop(tiny_model_dir, tiny_tokenizer, batch_self_edits=2)
    report = run_preflight(loop)
    assert report.fits and report.slots == 2 and report.steps == 2
    assert report.peak_memory_bytes > 0 and report.seconds > 0
    assert f"{report.step_budget} steps" in report.describe()
    refused = run_preflight(loop, max_memory_bytes=report.peak_memory_bytes // 100)
    assert not refused.fits and "inner_preflight_max_memory_gb" in refused.describe()
    assert all(knob in refused.describe() for knob in KNOBS)


def test_the_preflight_reports_an_out_of_memory_run(tiny_model_dir, tiny_tokenizer, monkeypatch):
    loop = tiny_loop(tiny_model_dir, tiny_tokenizer)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop, "_train", out_of_memory)
    report = run_preflight(loop)
    assert not report.fits and "out of memory (CUDA out of memory" in report.describe()


def test_a_preflight_that_does_not_fit_stops_the_trainer_before_any_generation(tiny_model_dir, tiny_tokenizer,
                                                                               dataset, tmp_path, monkeypatch):
    args = tiny_args(tmp_path, inner_preflight=True, inner_preflight_max_memory_gb=1e-6, inner_max_seq_length=128)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    generated = []
    monkeypatch.setattr(trainer, "_generate", lambda *a, **k: generated.append(1))
    with pytest.raises(PreflightFailure, match="training did not start: inner-loop preflight .* x 128 tokens") as info:
        trainer.train()
    assert not generated and trainer.state.global_step == 0
    assert all(knob in str(info.value) for knob in KNOBS)


def test_a_preflight_that_fits_is_logged_as_metrics(tiny_model_dir, tiny_tokenizer, dataset, tmp_path):
    trainer = SEALTrainer(str(tiny_model_dir), args=tiny_args(tmp_path, max_steps=1, inner_preflight=True),
                          train_dataset=dataset, processing_class=tiny_tokenizer)
    trainer.train()
    assert trainer.preflight_report.fits
    assert trainer.preflight_report.tokens_per_example == trainer.args.inner_max_seq_length
    logged = trainer.state.log_history[0]
    assert logged["seal/preflight_peak_memory_gb"] >= 0 and logged["seal/preflight_seconds_per_step"] > 0
