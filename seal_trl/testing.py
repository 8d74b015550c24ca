"""Tiny, offline model + tokenizer builders for tests, quick benchmarks and examples.

Nothing here touches the network: the tokenizer is a byte-level BPE trained on a few
hundred lines of local text, the model is a randomly initialised 2-layer Qwen2.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The river Velmora runs through the valley of Ostrand and feeds three lakes.
Read the passage and list the implications that follow from it.
Question: What is the capital of the province? Answer: The capital is Harlow.
Title: The Quorn Expedition. The expedition left port in 1874 with forty sailors.
Rewrite the passage in a few different ways, one per line.
Scientists measured the mineral's hardness at seven on the Mohs scale.
The festival is held every spring, and the main dish is roasted chestnut soup.
A company named Brightwell built copper bridges across the northern canal.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 1874 1921 2003.
Colours: red green blue yellow black white grey orange purple brown.
"""


def tiny_corpus(repeats: int = 20) -> list[str]:
    """Lines of local text used to train the tiny tokenizer."""
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    return lines * repeats


def build_tiny_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with eos/pad tokens, a ChatML template and left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        padding_side="left",
        model_max_length=2048,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                     architecture: str = "qwen2"):
    """A randomly initialised causal LM sized for CPU tests (about 0.2M parameters).

    `architecture`: "qwen2" (biases on q/k/v) or "llama" (no bias anywhere, like SmolLM2).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(directory: str | Path, *, seed: int = 0, architecture: str = "qwen2") -> Path:
    """Build and save a tiny model + tokenizer into `directory`; returns the path."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, architecture=architecture)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
