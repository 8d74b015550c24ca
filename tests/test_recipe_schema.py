"""The recipe schema (seal_trl/cli/recipe_schema.py) and the YAML reader (seal_trl/safe_yaml.py) refuse bad recipes
and nothing else: every default, every shipped recipe and YAML merge keys pass (issue 32)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig

from seal_trl.cli.flags import UsageError
from seal_trl.cli.recipe_schema import ANNOTATIONS, RANGES, check_settings, schema
from seal_trl.cli.train import SEALScriptArguments, make_parser
from seal_trl.config import SEALConfig
from seal_trl.safe_yaml import load_yaml

ROOT = Path(__file__).resolve().parents[1]
GROUPS = (SEALScriptArguments, SEALConfig, ModelConfig)


def test_every_range_and_annotation_names_a_field():
    assert set(RANGES) - set(schema(GROUPS)) == set() and set(ANNOTATIONS) - set(schema(GROUPS)) == set()


def test_every_default_passes_the_schema(tmp_path):
    namespace, _ = make_parser().parse_known_args(["--output_dir", str(tmp_path)])  # checks the parsed defaults
    assert namespace.num_generations == 4


RECIPES = sorted(str(p.relative_to(ROOT / "recipes")) for p in (ROOT / "recipes").rglob("*.yaml"))


def test_there_are_shipped_recipes():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_passes_the_schema(name):
    check_settings(load_yaml((ROOT / "recipes" / name).read_text()), GROUPS)


@pytest.mark.parametrize("values", [
    {"lora_target_modules": "all-linear"},  # PEFT's one-name form of a list field
    {"inner_target_modules": ["q_proj", "v_proj"]}, {"max_steps": -1}, {"rest_em_top_k": None},
    {"report_to": "none"}, {"logging_steps": 0.5}, {"learning_rate": 1}, {"lr_scheduler_type": "constant"},
    {"model_init_kwargs": {"max_memory": {0: "10GiB"}}},  # only the keyword names must be text
    {"inner_batch_self_edits": 4}, {"inner_batch_self_edits": "auto"},
])
def test_good_values_pass(values):
    check_settings(values, GROUPS)


@pytest.mark.parametrize("values, words", [
    ({"use_peft": 1}, ("use_peft", "true or false")),
    ({"per_device_train_batch_size": True}, ("per_device_train_batch_size", "an integer")),
    ({"learning_rate": float("inf")}, ("learning_rate", "finite")),
    ({"inner_target_modules": ["q_proj", 1]}, ("inner_target_modules", "a list of strings")),
    ({"max_steps": 0}, ("max_steps", ">= 1 (or -1 for unset)")),
    ({"max_completion_length": 10**8}, ("max_completion_length", "<= 32768")),
])
def test_bad_values_are_named(values, words):
    with pytest.raises(UsageError) as err:
        check_settings(values, GROUPS)
    for word in words:
        assert word in str(err.value)


def test_merge_keys_may_be_overridden_but_keys_may_not_repeat():
    assert load_yaml("base: &b {seed: 1, max_steps: 2}\nrun:\n  <<: *b\n  seed: 3\n")["run"] == {
        "seed": 3, "max_steps": 2}
    with pytest.raises(yaml.YAMLError, match="'seed' appears twice"):
        load_yaml("run:\n  seed: 1\n  seed: 3\n")


def test_an_alias_bomb_is_refused_fast():
    bomb = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    start = time.perf_counter()
    with pytest.raises(yaml.YAMLError, match="alias"):
        load_yaml(bomb)
    assert time.perf_counter() - start < 5
    assert load_yaml("a: &a [1, 2]\nb: *a\nc: *a\n") == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}  # plain aliases
