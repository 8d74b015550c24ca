"""One ReST-EM step of SEALTrainer on a toy ARC puzzle with the tiny model: JSON self-edits -> TTT -> success."""

import pytest
import torch

from seal_trl.config import SEALConfig
from seal_trl.inner import InnerLoop
from seal_trl.plans import PlanBounds
from seal_trl.tasks.arc.task import ArcTask, arc_inner_config
from seal_trl.tasks.arc.config import ArcConfig
from seal_trl.trainer import SEALTrainer

# Every output is the 1x1 grid "3": a good enough plan teaches the tiny model to solve the test input.
PUZZLES = [{"context_id": f"constant-{k}", "train": [{"input": [[c]], "output": [[3]]} for c in (1, 2, 4)],
            "test": [{"input": [[k]], "output": [[3]]}]} for k in (5, 6)]
BOUNDS = PlanBounds(max_examples=20, step_budget=40, max_epochs=20)
SOLVES = ArcConfig(use_basic_augmentations=False, learning_rate=1e-2, num_train_epochs=12).to_json()
SELF_EDITS = [
    f"Here is the plan: {SOLVES}",  # solves the puzzle -> reward 1
    ArcConfig(use_basic_augmentations=False, learning_rate=1e-6, num_train_epochs=1).to_json(),  # parses, fails
    SOLVES.replace('"training"', '"extra": 1, "training"'),  # unknown key -> unparseable
    ArcConfig(use_basic_augmentations=False, learning_rate=1e-2, num_train_epochs=20).to_json(),  # over budget
]


def test_rest_em_step_keeps_the_self_edit_that_solves_the_puzzle(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    task = ArcTask(tokenizer=tiny_tokenizer, leave_out=(1,), bounds=BOUNDS)
    dataset = task.build_dataset(PUZZLES, tiny_tokenizer)
    inner = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer, arc_inner_config(
        lora_r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"), max_new_tokens=6, bounds=BOUNDS))
    args = SEALConfig(output_dir=str(tmp_path / "out"), max_steps=2, num_iterations=2, num_generations=4,
                      per_device_train_batch_size=8, max_completion_length=200, use_cpu=True, report_to=[],
                      save_strategy="no", seed=0, learning_rate=5e-3)
    trainer = SEALTrainer(str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tiny_tokenizer,
                          task=task, inner_loop=inner)
    # The tiny random policy cannot write JSON: its sampled self-edits are replaced by the four above, per puzzle.
    completion_ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
                      for t in SELF_EDITS]
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([completion_ids[i % 4] for i in
                                                                  range(len(prompt_ids))], None)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    captured = []
    original = trainer._apply_variant
    trainer._apply_variant = lambda output: captured.append(original(output)) or captured[-1]
    trainer.train()

    runs = [r[0] for r in trainer.seal_reward.last_results]
    assert [r.reward for r in runs] == [1.0, 0.0, 0.0, 0.0] * 2
    assert [r.error for r in runs] == [None, None, "unparseable", "over_budget"] * 2
    assert all(r.score_before == 0.0 for r in runs)  # in-context only does not solve it
    batch = captured[0]
    keep = batch["advantages"] > 0
    assert keep.tolist() == [True, False, False, False] * 2

    def mean_logp(model):
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        n = batch["completion_ids"].shape[1]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -n - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
        m = batch["completion_mask"].float()
        return (logp * m).sum(1) / m.sum(1)

    rise = mean_logp(trainer.model.eval()) - mean_logp(start)
    assert rise[keep].mean() > 0.3  # the M-step trained the policy on the kept self-edit
    metrics, second = trainer.state.log_history[0], trainer.state.log_history[1]
    assert second["seal/kept_nll"] < metrics["seal/kept_nll"]
    assert metrics["seal/keep_fraction"] == pytest.approx(0.25)
    assert metrics["inner/failed/unparseable"] == pytest.approx(0.25)


def test_arc_recipe_runs_on_a_directory_of_puzzles(tiny_model_dir, tmp_path):
    import json

    from seal_trl.cli.train import cli

    data = tmp_path / "arc"
    data.mkdir()
    for k, puzzle in enumerate(PUZZLES):
        (data / f"p{k}.json").write_text(json.dumps({"train": puzzle["train"], "test": puzzle["test"]}))
    trainer = cli(["--config", "recipes/llama3.2-1b/arc_rest_em_1xgpu.yaml",
                   "--model_name_or_path", str(tiny_model_dir), "--arc_data", str(data),
                   "--output_dir", str(tmp_path / "out"), "--bf16", "false", "--use_cpu", "true", "--use_peft",
                   "false", "--num_generations", "2", "--per_device_train_batch_size", "4",
                   "--steps_per_generation", "1", "--max_steps", "1", "--max_completion_length", "8",
                   "--inner_lora_r", "4", "--inner_target_modules", "q_proj", "v_proj", "--inner_max_examples", "8",
                   "--inner_step_budget", "40", "--arc_answer_tokens", "4",
                   "--inner_min_uniform_failures", "0"])  # all 4 self-edits fail alike: would stop training
    assert trainer.inner_loop.config.grader == "arc" and trainer.inner_loop.config.reward == "success"
    assert trainer.inner_loop.config.bounds.step_budget == 40 and trainer.task.bounds.max_examples == 8
    runs = [r[0] for r in trainer.seal_reward.last_results]
    assert len(runs) == 4 and all(r.reward == 0.0 and r.error for r in runs)  # 8 random tokens are not a config
    assert (tmp_path / "out" / "config.json").is_file()
