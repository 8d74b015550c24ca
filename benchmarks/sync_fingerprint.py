"""Seconds per policy sync plus policy version, before and after issue 30, at a real model's shape (random weights).

Before: `policy_version` was a sha256 over every byte of the inner model's base and policy adapter
(`tensors_fingerprint`), after every sync. After: a sampled digest of the base (once per base copy) plus the
update's step, and a full hash of the LoRA policy's adapter only (`InnerLoop.policy_version`). Both are timed in
the same process on the same inner model, for a full-weight policy and for a LoRA policy (r=16 on the default
modules), over a few syncs each, each sync after an in-place update of the policy.

    python benchmarks/sync_fingerprint.py                                     # Qwen2.5-1.5B shape, bf16
    python benchmarks/sync_fingerprint.py --layers 1 --syncs 1                # a dry run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(loop, policy, syncs: int, update) -> list[dict[str, float]]:
    """Per sync: seconds of `sync_from`, of the old full hash and of the new `policy_version`."""
    from seal_trl.inner.jobs import INNER_ADAPTER
    from seal_trl.inner.store import tensors_fingerprint

    rows = []
    for step in range(1, syncs + 1):
        update(step)
        _, sync_s = timed(lambda: loop.sync_from(policy, step=step))
        state = loop.model.state_dict()
        _, old_s = timed(lambda: tensors_fingerprint({k: v for k, v in state.items() if f".{INNER_ADAPTER}." not in k}))
        _, new_s = timed(lambda: loop.policy_version)
        rows.append({"step": step, "sync_s": sync_s, "old_fingerprint_s": old_s, "new_fingerprint_s": new_s})
        print(f"  sync {step}: sync {sync_s:.2f} s, old fingerprint {old_s:.2f} s, new {new_s:.3f} s", flush=True)
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    n = len(rows)
    sync = sum(r["sync_s"] for r in rows) / n
    old = sum(r["old_fingerprint_s"] for r in rows) / n
    new = sum(r["new_fingerprint_s"] for r in rows) / n
    return {"sync_s": sync, "old_fingerprint_s": old, "new_fingerprint_s": new, "old_total_s": sync + old,
            "new_total_s": sync + new, "total_ratio": (sync + old) / (sync + new), "fingerprint_ratio": old / new}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "model_configs" / "qwen2.5-1.5b.json"))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (dry runs)")
    parser.add_argument("--syncs", type=int, default=3, help="timed syncs per policy kind")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.config import DEFAULT_TARGET_MODULES
    from seal_trl.testing import build_tiny_tokenizer

    raw = json.loads(Path(args.config).read_text())
    if args.layers is not None:
        raw["num_hidden_layers"] = args.layers
    torch.manual_seed(0)
    policy, build_s = timed(lambda: AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw),
                                                                     dtype=getattr(torch, args.dtype)))
    params = sum(p.numel() for p in policy.parameters())
    print(f"{Path(args.config).name}: {raw['num_hidden_layers']} layers, {params / 1e9:.2f} B parameters, "
          f"{args.dtype}, {torch.get_num_threads()} threads (built in {build_s:.0f} s)", flush=True)
    loop = InnerLoop(copy.deepcopy(policy), build_tiny_tokenizer(), InnerLoopConfig())
    probe = policy.model.layers[0].mlp.up_proj.weight

    def update_full(step: int) -> None:
        with torch.no_grad():
            probe.view(-1)[step] += 1.0

    print("full-weight policy:", flush=True)
    full = measure(loop, policy, args.syncs, update_full)
    lora = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, target_modules=list(DEFAULT_TARGET_MODULES),
                                             init_lora_weights=False))
    _, first_s = timed(lambda: (loop.sync_from(lora, step=0), loop.policy_version))
    print(f"LoRA policy (first sync copies the base once: {first_s:.2f} s with its version):", flush=True)
    lora_b = next(p for n, p in lora.named_parameters() if "lora_B" in n)

    def update_lora(step: int) -> None:
        with torch.no_grad():
            lora_b.view(-1)[step] += 1.0

    adapter = measure(loop, lora, args.syncs, update_lora)
    report = {"config": Path(args.config).name, "layers": raw["num_hidden_layers"], "parameters": params,
              "dtype": args.dtype, "threads": torch.get_num_threads(), "full": summary(full),
              "lora": {**summary(adapter), "first_sync_with_version_s": first_s}, "rows": {"full": full, "lora": adapter}}
    for kind in ("full", "lora"):
        s = report[kind]
        print(f"{kind}: sync + fingerprint {s['old_total_s']:.2f} s before, {s['new_total_s']:.2f} s after "
              f"(x{s['total_ratio']:.1f}); fingerprint alone {s['old_fingerprint_s']:.2f} s -> "
              f"{s['new_fingerprint_s']:.3f} s (x{s['fingerprint_ratio']:.0f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
