"""benchmarks/rest_em_from_scores.py: the M-step of a ReST-EM round whose rewards were measured elsewhere."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from rest_em_from_scores import rest_em_m_step  # noqa: E402

PROMPTS = ["Write facts about Zorvath:", "Write facts about Quillan:"]
COMPLETIONS = [["Zorvath is a lake.", "Zorvath has red sand and tall pines.", "No."],
               ["Quillan was founded by Mera.", "Quillan is cold.", "Quillan exports glass and salt."]]


def _policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


def _nll(policy, tokenizer, prompt, completion):
    """Summed NLL of the completion tokens (EOS appended) and their count, computed directly."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
    logps = torch.log_softmax(logits.float(), -1)
    return -sum(logps[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(ids)), len(ids)


def test_the_loss_is_the_kept_completions_token_mean_nll(tiny_model_dir, tiny_tokenizer):
    policy = _policy(tiny_model_dir)
    # passage 0 keeps its best sample above 0 (index 1); passage 1 has none above 0, so keeps nothing
    rewards = [[0.2, 0.5, -1.0], [-0.1, -0.3, 0.0]]
    result = rest_em_m_step(policy, tiny_tokenizer, PROMPTS, COMPLETIONS, rewards, max_new_tokens=64,
                            learning_rate=0.0, iterations=1, passages_per_step=1)
    assert result["kept_rows"] == [1]
    nll, tokens = _nll(policy, tiny_tokenizer, PROMPTS[0], COMPLETIONS[0][1])
    assert result["kept_tokens"] == tokens
    assert sum(result["losses"]) == pytest.approx(nll / tokens, rel=1e-5)


def test_kept_completions_become_likelier_and_nothing_kept_moves_no_weight(tiny_model_dir, tiny_tokenizer):
    policy = _policy(tiny_model_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" in k}
    result = rest_em_m_step(policy, tiny_tokenizer, PROMPTS, COMPLETIONS, [[-1.0, -2.0, 0.0], [-0.5, -0.1, -3.0]],
                            max_new_tokens=64, learning_rate=1e-2)
    assert result["kept"] == 0 and result["losses"] == [0.0] * result["steps"]
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items() if "lora_" in k)

    start, _ = _nll(policy, tiny_tokenizer, PROMPTS[1], COMPLETIONS[1][2])
    other, _ = _nll(policy, tiny_tokenizer, PROMPTS[1], COMPLETIONS[1][0])
    result = rest_em_m_step(policy, tiny_tokenizer, PROMPTS, COMPLETIONS, [[-1.0, -2.0, 0.0], [0.1, -0.1, 0.4]],
                            max_new_tokens=64, learning_rate=1e-2, iterations=4)
    assert result["kept_rows"] == [5]
    after, _ = _nll(policy, tiny_tokenizer, PROMPTS[1], COMPLETIONS[1][2])
    assert after < start - 1.0  # the kept sample, not its passage's other samples, is what the policy learned
    assert after - start < _nll(policy, tiny_tokenizer, PROMPTS[1], COMPLETIONS[1][0])[0] - other
