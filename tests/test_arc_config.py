"""The ARC JSON self-edit: good configs parse, bad ones fail with a reason and the offending field."""

import json

import pytest

from seal_trl.plans import SelfEditError
from seal_trl.tasks.arc.config import DEFAULT_CONFIG, ArcConfig, parse_config, sample_parseable_config

GOOD = {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                            "use_chain_augmentations": True, "use_repeat_augmentations": False},
        "training": {"strategy": "train_using_all_tokens", "learning_rate": 5e-4, "num_train_epochs": 3}}


def with_change(section, key, value):
    data = json.loads(json.dumps(GOOD))
    if value is KeyError:
        del data[section][key]
    else:
        data[section][key] = value
    return json.dumps(data)


def test_good_config_parses_inside_prose_and_code_fences():
    text = f"Sure! Here is my plan:\n```json\n{json.dumps(GOOD, indent=2)}\n```\nGood luck {{not json}}."
    config = parse_config(text)
    assert config == ArcConfig(use_basic_augmentations=True, use_chain_augmentations=True,
                               strategy="train_using_all_tokens", learning_rate=5e-4, num_train_epochs=3)
    assert config.groups == ("basic", "chain") and config.loss_on == "all"
    assert parse_config(config.to_json()) == config
    assert parse_config(DEFAULT_CONFIG.to_json()).loss_on == "completion"
    assert parse_config(with_change("training", "num_train_epochs", 2.0)).num_train_epochs == 2


@pytest.mark.parametrize("text, reason, field", [
    ("", "empty", "self_edit"),
    ("use basic augmentations please", "unparseable", "self_edit"),
    ("{'data_generation': {}}", "unparseable", "data_generation"),  # single quotes: only the inner {} is JSON
    ('{"data_generation": {}, "training": {}, "notes": "x"}', "unparseable", "notes"),
    (with_change("data_generation", "use_colour_augmentations", True), "unparseable",
     "data_generation.use_colour_augmentations"),
    (with_change("training", "warmup", 10), "unparseable", "training.warmup"),
    (with_change("training", "learning_rate", KeyError), "unparseable", "training.learning_rate"),
    (with_change("data_generation", "use_size_augmentations", "yes"), "unparseable",
     "data_generation.use_size_augmentations"),
    (with_change("training", "strategy", "train_on_everything"), "unparseable", "training.strategy"),
    (with_change("training", "learning_rate", "1e-4"), "unparseable", "training.learning_rate"),
    (with_change("training", "learning_rate", -0.001), "out_of_bounds", "training.learning_rate"),
    (with_change("training", "num_train_epochs", -2), "out_of_bounds", "training.num_train_epochs"),
    (with_change("training", "num_train_epochs", 0), "out_of_bounds", "training.num_train_epochs"),
    (with_change("training", "num_train_epochs", 2.5), "unparseable", "training.num_train_epochs"),
    (with_change("training", "num_train_epochs", True), "unparseable", "training.num_train_epochs"),
    ('{"data_generation": [], "training": {}}', "unparseable", "data_generation"),
])
def test_bad_configs_fail_naming_the_field(text, reason, field):
    with pytest.raises(SelfEditError) as err:
        parse_config(text)
    assert err.value.reason == reason
    assert err.value.field == field
    assert field in str(err.value)


def test_non_utf8_bytes_are_refused():
    with pytest.raises(SelfEditError) as err:
        parse_config(b"\xff{}")
    assert err.value.reason == "not_utf8"


def test_bounded_resampling_stops_at_the_first_parseable_config():
    texts = ["nonsense", json.dumps({"oops": 1}), DEFAULT_CONFIG.to_json(), "never reached"]
    calls = []

    def generate(attempt):
        calls.append(attempt)
        return texts[attempt]

    config, text, errors = sample_parseable_config(generate, max_attempts=5)
    assert config == DEFAULT_CONFIG and text == texts[2] and calls == [0, 1, 2]
    assert [e.reason for e in errors] == ["unparseable", "unparseable"]
    calls.clear()
    config, text, errors = sample_parseable_config(generate, max_attempts=2)
    assert config is None and calls == [0, 1] and len(errors) == 2 and text == texts[1]
    with pytest.raises(ValueError, match="max_attempts"):
        sample_parseable_config(generate, max_attempts=0)
