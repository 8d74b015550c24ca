"""One completion from a model for a task prompt: plain text, or chat messages rendered with the chat template."""

from __future__ import annotations

from typing import Any

import torch

from .inner.tensors import encode_chat, encode_text

#: A positive sampling temperature is at least this: logits divided by less overflow to inf (1e-320 gives "probability
#: tensor contains inf/nan") and sampling that cold is greedy anyway.
MIN_TEMPERATURE = 1e-2
#: And at most this: hotter, every token is about equally likely and a self-edit is noise.
MAX_TEMPERATURE = 100.0


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """`temperature` as a float when it is 0 (greedy) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]; else ValueError."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ValueError(f"{name} must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got "
                         f"{temperature!r}")
    return float(temperature)


def generate_text(model, tokenizer, prompt: str | list[dict[str, Any]], *, max_new_tokens: int,
                  temperature: float = 0.0, seed: int | None = None) -> str:
    """The model's continuation of `prompt` (new tokens only): greedy when `temperature` is 0, otherwise sampled
    with torch's RNG seeded from `seed` so the same call gives the same text."""
    return generate_texts(model, tokenizer, prompt, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                          seed=seed)[0]


@torch.no_grad()
def generate_texts(model, tokenizer, prompt: str | list[dict[str, Any]], *, n: int, max_new_tokens: int,
                   temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """`n` continuations of one prompt in one batched `generate` call (n > 1 needs sampling, temperature > 0)."""
    temperature = check_temperature(temperature)
    if n > 1 and temperature <= 0:
        raise ValueError(f"n={n} greedy continuations would all be the same: use temperature > 0")
    device = next(model.parameters()).device
    # the passage inside a prompt is content: its special-token text is never a control token
    ids = encode_chat(tokenizer, prompt) if isinstance(prompt, list) else encode_text(tokenizer, prompt)
    ids = torch.tensor([ids], device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
              "eos_token_id": tokenizer.eos_token_id, "num_return_sequences": n}
    if temperature > 0:
        kwargs["temperature"] = temperature
        if seed is not None:
            torch.manual_seed(seed % (2**32))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
