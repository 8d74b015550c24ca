"""Shared fixtures: a tiny offline model + tokenizer, built once per test session."""

from __future__ import annotations

import os

import pytest

# No test may reach the network: no Hub downloads, no telemetry pings from the trainers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from seal_trl.testing import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A bias-free (Llama) tiny model, like SmolLM2: 4-bit layers without a bias fail differently from Qwen's."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), architecture="llama")


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def squad_file(tmp_path):
    """A 4-passage SQuAD v1.1 file the tiny tokenizer can handle."""
    import json

    def passage(i):
        context = f"The river Velmora {i} runs through Ostrand."
        answer = {"text": "Ostrand", "answer_start": context.index("Ostrand")}
        return {"context": context, "qas": [{"id": f"q{i}", "question": "Which valley?", "answers": [answer]}]}

    data = {"data": [{"title": f"Place {i}", "paragraphs": [passage(i)]} for i in range(4)]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path
