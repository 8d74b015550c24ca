"""Model shapes for the planner: a few real ones by name, or any local config.json (no Hub access)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer (Llama/Qwen2 layout) that memory and FLOPs depend on."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    attention_bias: bool = False  # Qwen2: biases on q, k, v

    @classmethod
    def from_config(cls, config: dict, name: str = "config.json") -> ModelShape:
        """From a Hugging Face config.json's values (Llama, Qwen2, Mistral and alike)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(name=name, hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
                       num_layers=int(config["num_hidden_layers"]), num_heads=heads,
                       num_kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       vocab_size=int(config["vocab_size"]),
                       tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                       attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")))
        except KeyError as err:
            raise ValueError(f"{name} lacks {err.args[0]!r}: the planner needs a decoder config with "
                             "hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each adapted projection of one layer."""
        h, q, kv, m = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}

    @property
    def linear_parameters(self) -> int:
        """Weights of every layer's projections (what 4-bit quantisation packs)."""
        return self.num_layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def other_parameters(self) -> int:
        """Embeddings, the LM head when untied, norms and biases (what stays in 16 or 32 bits under 4-bit)."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        shapes = self.linear_shapes()
        biases = sum(shapes[n][1] for n in ("q_proj", "k_proj", "v_proj")) if self.attention_bias else 0
        return embeddings + self.num_layers * (2 * self.hidden_size + biases) + self.hidden_size

    @property
    def num_parameters(self) -> int:
        return self.linear_parameters + self.other_parameters

    def lora_parameters(self, rank: int, target_modules: tuple[str, ...] | list[str]) -> int:
        """Parameters of one LoRA adapter of `rank` on `target_modules` in every layer."""
        shapes = self.linear_shapes()
        unknown = sorted(set(target_modules) - set(shapes))
        if unknown:
            raise ValueError(f"target modules {unknown} are not projections of this shape; use some of {sorted(shapes)}")
        return self.num_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in target_modules)

    def kv_bytes_per_token(self, bytes_per_value: float) -> float:
        """KV-cache bytes one token takes across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value


def _shape(name, hidden, inter, layers, heads, kv, head_dim, vocab, tied, bias) -> ModelShape:
    return ModelShape(name, hidden, inter, layers, heads, kv, head_dim, vocab, tied, bias)


# The public config.json values of each model (hidden, intermediate, layers, heads, KV heads, head dim, vocabulary,
# tied embeddings, q/k/v bias).
KNOWN_SHAPES: dict[str, ModelShape] = {s.name: s for s in (
    _shape("SmolLM2-135M", 576, 1536, 30, 9, 3, 64, 49152, True, False),
    _shape("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 64, 151936, True, True),
    _shape("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 128, 151936, True, True),
    _shape("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 128, 152064, False, True),
    _shape("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 64, 128256, True, False),
)}


def load_shape(spec: str) -> ModelShape:
    """A known shape by name (case-insensitive; an org prefix and an -Instruct suffix are ignored), a model
    directory holding config.json, or a config.json file."""
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--model {spec}: cannot read {path} as JSON ({err})") from None
        if not isinstance(config, dict):
            raise ValueError(f"--model {spec}: {path} is not a JSON object")
        return ModelShape.from_config(config, name=str(spec))
    key = spec.rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    for name, shape in KNOWN_SHAPES.items():
        if name.lower() == key:
            return shape
    raise ValueError(f"--model {spec!r} is neither a model directory, a config.json nor a known shape; use a local "
                     f"path or one of {sorted(KNOWN_SHAPES)}")
