"""InnerLoop.policy_version: cheap (no hash of the whole base), yet distinct for every policy update, and equal for
the same weights at the same step in a resumed run, so store keys still hit."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from seal_trl.inner import InnerLoop, InnerLoopConfig
from seal_trl.inner import engine
from seal_trl.inner.store import SAMPLES_PER_TENSOR, run_key, sampled_fingerprint

CONFIG = dict(lora_r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"), num_epochs=1)


@pytest.fixture()
def fresh_loop(tiny_model_dir, tiny_tokenizer):
    return lambda: InnerLoop(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer,
                             InnerLoopConfig(**CONFIG))


def key(version: str) -> str:
    return run_key(policy=version, context="c", self_edit="e", settings={}, seed=0)


def unsampled_weight(model) -> tuple[torch.Tensor, int]:
    """A weight and an element index of it that `sampled_fingerprint` does not read."""
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.numel() >= 2 * SAMPLES_PER_TENSOR  # so the sample skips every other element at least
    return weight, 1


def test_a_full_policy_update_the_sample_misses_still_changes_the_store_key(fresh_loop, tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loop = fresh_loop()
    loop.sync_from(policy, step=3)
    first = loop.policy_version
    weight, index = unsampled_weight(policy)
    sample_before = sampled_fingerprint(policy.state_dict())
    with torch.no_grad():
        weight.view(-1)[index] += 1.0  # an optimizer step that moved one element only
    assert sampled_fingerprint(policy.state_dict()) == sample_before  # the sample alone would miss it
    loop.sync_from(policy, step=4)
    assert key(loop.policy_version) != key(first)
    before = loop.policy_version
    loop.sync_from(policy)  # no step given: every sync is a new version
    assert loop.policy_version != before


def test_the_same_weights_at_the_same_step_in_a_new_process_keep_their_version(fresh_loop, tiny_model_dir):
    """What a resumed run needs: a fresh inner loop synced to the checkpoint's weights at the checkpoint's step gets
    the version (so the store keys) of the killed run's sync at that step."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    killed, resumed = fresh_loop(), fresh_loop()
    killed.sync_from(policy, step=0)
    with torch.no_grad():
        policy.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    killed.sync_from(policy, step=1)
    resumed.sync_from(policy, step=1)
    assert resumed.policy_version == killed.policy_version
    assert fresh_loop().policy_version == fresh_loop().policy_version  # never synced: the weights it was built with
    with torch.no_grad():
        policy.model.layers[1].mlp.up_proj.weight.add_(0.25)  # the same step, other weights (the sample sees them)
    resumed.sync_from(policy, step=1)
    assert resumed.policy_version != killed.policy_version


def test_a_lora_policy_version_hashes_the_adapter_and_samples_the_base_once(fresh_loop, tiny_model_dir,
                                                                            monkeypatch):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    digests = []
    monkeypatch.setattr(engine, "sampled_fingerprint", lambda t: digests.append(1) or sampled_fingerprint(t))
    loop, resumed = fresh_loop(), fresh_loop()
    loop.sync_from(policy, step=0)
    first = loop.policy_version
    lora_b = next(p for n, p in policy.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.view(-1)[1] += 1e-3  # any element: the adapter is hashed whole
    loop.sync_from(policy, step=1)
    second = loop.policy_version
    assert key(second) != key(first)
    assert len(digests) == 1  # the base was sampled once, at its copy; later syncs hash the adapter only
    resumed.sync_from(policy, step=1)
    assert resumed.policy_version == second
