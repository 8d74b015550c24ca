"""A randomly initialised model with a real model's shapes, saved with the tiny offline tokenizer.

For timing where no weights can travel (the GPU check): the compute of a step depends on the shapes, not on
the values. The tokenizer is the tests' 1,024-token byte-level BPE, so token ids stay inside any real vocabulary.

    python benchmarks/random_model.py benchmarks/model_configs/qwen2.5-0.5b.json /tmp/qwen-0.5b --dtype bfloat16
    python benchmarks/random_model.py benchmarks/model_configs/smollm2-135m.json /tmp/s --layers 2   # a dry run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def save_random_model(config_json: str | Path, out: str | Path, *, dtype: str = "float32",
                      layers: int | None = None, seed: int = 0) -> Path:
    """Build the model that `config_json` describes with random weights and save it (and the tokenizer) to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from seal_trl.testing import build_tiny_tokenizer

    raw = json.loads(Path(config_json).read_text())
    if layers is not None:
        raw["num_hidden_layers"] = layers
    config = AutoConfig.for_model(**raw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    tokenizer = build_tiny_tokenizer()
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{config_json}: vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_json")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (dry runs)")
    args = parser.parse_args()
    path = save_random_model(args.config_json, args.out, dtype=args.dtype, layers=args.layers)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
