"""InnerLoopConfig(compile=True): the training forward runs through torch.compile and gives the eager results."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.plans import TrainingPlan
from seal_trl.probes import knowledge_probe

FACTS = [("What river runs through Ostrand?", "Velmora"), ("When did the expedition leave port?", "1874")]

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="torch.compile on CPU needs a C compiler (cc/gcc) to build its kernels")


def test_compiled_training_forward_gives_the_eager_results(tiny_model_dir, tiny_tokenizer):
    from torch._dynamo.utils import counters

    probe = knowledge_probe("The Quorn Expedition", FACTS, context_id="quorn")
    plans = [TrainingPlan.from_texts([f"Topic: The Quorn Expedition\nQuestion: {q}\nAnswer: {a}" for q, a in FACTS]
                                     + ["The Quorn left port in 1874 with forty sailors aboard."], epochs=2),
             TrainingPlan.from_texts(["Colours: red green blue.", "A company built bridges in 1874."], epochs=2)]
    results = {}
    for compiled in (False, True):
        loop = InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                         InnerLoopConfig(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"),
                                         compile=compiled))
        counters.clear()
        results[compiled] = [loop.run(plan, probe, seed=i) for i, plan in enumerate(plans)]
        if compiled:
            assert loop._compiled is not None and counters["stats"]["unique_graphs"] >= 1
            assert counters["stats"]["unique_graphs"] <= 4  # dynamic shapes: no graph per example length
    for eager, compiled in zip(results[False], results[True]):
        assert compiled.ok and eager.ok
        assert compiled.losses == pytest.approx(eager.losses, abs=1e-4)
        assert compiled.reward == pytest.approx(eager.reward, abs=1e-4)
    torch._dynamo.reset()
