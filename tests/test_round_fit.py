"""A ReST-EM round (per_device_train_batch_size x processes x steps_per_generation self-edits) must divide the
training contexts: checked at start, with the world size, not left to a recipe comment."""

from pathlib import Path

import pytest
import yaml

from seal_trl.config import SEALConfig, round_fit_error

ROOT = Path(__file__).resolve().parents[1]


def test_one_process_recipe_on_eight_processes_is_refused_with_a_fix():
    assert round_fit_error(100, 10, 1, 25, 5) is None  # 10 x 1 x 25 = 250 self-edits = 50 contexts, 2 rounds
    message = round_fit_error(100, 10, 8, 25, 5)  # the same recipe on 8 GPUs: 400 contexts a round
    assert message == ("a ReST-EM round is per_device_train_batch_size=10 x 8 process(es) x steps_per_generation=25 "
                       "= 2000 self-edits (400 contexts), which does not divide the 100 training contexts; set "
                       "max_train_contexts to a multiple of 400")
    assert "\n" not in message


def test_the_fix_named_fits():
    message = round_fit_error(200, 8, 8, 4, 8)  # 32 contexts a round; 200 is not a multiple
    assert "steps_per_generation=1 or max_train_contexts to a multiple of 32" in message
    assert round_fit_error(200, 8, 8, 1, 8) is None  # 8 contexts a round: 25 rounds
    assert "set per_device_train_batch_size=2 " in round_fit_error(3, 4, 1, 1, 2)
    assert round_fit_error(3, 2, 1, 1, 2) is None
    assert round_fit_error(96, 6, 8, 5, 5) is None  # the 8-GPU recipe: 48 contexts a round, 2 rounds


def test_config_check_uses_the_world_size(tmp_path, monkeypatch):
    config = SEALConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                        steps_per_generation=1, report_to="none")
    config.check_round_fits(4)  # one process: 2 contexts a round
    monkeypatch.setattr(SEALConfig, "world_size", property(lambda self: 3))
    with pytest.raises(ValueError, match=r"x 3 process\(es\) x steps_per_generation=1 = 12 self-edits \(6 contexts\), "
                                         r"which does not divide the 4 training contexts"):
        config.check_round_fits(4)
    config.algorithm = "grpo"  # a GRPO step has no rounds to keep whole
    config.check_round_fits(4)


def test_trainer_refuses_a_round_that_does_not_divide_the_data_before_loading(tmp_path):
    from datasets import Dataset

    from seal_trl import SEALTrainer

    config = SEALConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                        steps_per_generation=2, report_to="none")
    data = Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)])  # 4 contexts a round; 6 is not a multiple
    with pytest.raises(ValueError, match="does not divide the 6 training contexts; set steps_per_generation=1"):
        SEALTrainer(model="no/such-model", args=config, train_dataset=data)


@pytest.mark.parametrize("recipe, processes", [
    ("smollm2-135m/cpu_demo.yaml", 1), ("smollm2-135m/cpu_rest_em_rounds.yaml", 1),
    ("qwen2.5-7b/rest_em_1xgpu_qlora.yaml", 1), ("qwen2.5-7b/rest_em_8xgpu_zero3.yaml", 8),
    ("llama3.2-1b/arc_rest_em_1xgpu.yaml", 1),
])
def test_shipped_rest_em_recipes_fit_their_process_count(recipe, processes):
    raw = yaml.safe_load((ROOT / "recipes" / recipe).read_text())
    assert raw["algorithm"] == "rest_em"
    assert round_fit_error(raw["max_train_contexts"], raw["per_device_train_batch_size"], processes,
                           raw["steps_per_generation"], raw["num_generations"]) is None
