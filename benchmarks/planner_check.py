"""Check `seal-trl plan`'s inner-loop memory against measured peak RSS on CPU, at real model shapes.

For each shape, in a fresh subprocess: build the model with random weights from its config (fp32, no download),
build `InnerLoop` with the planner's settings (LoRA r, all 7 projections, K slots), run K self-edits of one example
of `--tokens` tokens each in one batched pass, and measure peak RSS (ru_maxrss) minus the peak before the model
was built (taken after the same run on a tiny model, so imports, thread pools and kernel set-up are not counted). The planner's prediction compared is the inner loop's alone, as on a CPU run: the fp32 inner copy, its
LoRA adapter, the K slots (adapters, gradients, AdamW moments), one training step's activations and the fp32
logits (no policy is loaded here).

    python benchmarks/planner_check.py                      # SmolLM2-135M, Qwen2.5-0.5B, Qwen2.5-1.5B shapes
    python benchmarks/planner_check.py --shapes smollm2-135m --tokens 64   # a quick run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHAPES = {"smollm2-135m": "SmolLM2-135M", "qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-1.5b": "Qwen2.5-1.5B"}
TOLERANCE = 0.25


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _text_of(tokenizer, tokens: int) -> str:
    """A text that encodes to exactly `tokens` tokens (as the inner loop encodes it, eos included)."""
    from seal_trl.inner.tensors import encode_example

    words = " ".join(f"fact{i} river{i % 7} ledger" for i in range(tokens))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    for cut in range(tokens, 0, -1):
        text = tokenizer.decode(ids[:cut])
        if len(encode_example(tokenizer, "", text, loss_on_prompt=True, add_eos=False).input_ids) <= tokens:
            return text
    raise ValueError("no text fits")


def measure(shape_file: str, *, slots: int, tokens: int, rank: int) -> dict:
    """Peak RSS growth of one batched inner run at this shape, in this process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from seal_trl.inner import InnerJob, InnerLoop
    from seal_trl.inner.tensors import encode_example
    from seal_trl.plans import TrainingPlan
    from seal_trl.probes import knowledge_probe
    from seal_trl.testing import build_tiny_model, build_tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    text = _text_of(tokenizer, tokens)
    used = len(encode_example(tokenizer, "", text, loss_on_prompt=True, add_eos=False).input_ids)
    probe = knowledge_probe("Ostrand", [("Which river?", "Velmora")], context_id="c")
    raw = json.loads(Path(shape_file).read_text())
    config = AutoConfig.for_model(**raw)
    _run(InnerLoop, InnerJob, TrainingPlan, build_tiny_model(tokenizer), tokenizer, text, probe, slots, tokens, rank)
    baseline = _rss_peak_bytes()  # after a tiny model's run: imports, thread pools and kernels are paid for
    _run(InnerLoop, InnerJob, TrainingPlan, AutoModelForCausalLM.from_config(config, dtype=torch.float32),
         tokenizer, text, probe, slots, tokens, rank)
    return {"measured_bytes": _rss_peak_bytes() - baseline, "tokens": used}


def _run(InnerLoop, InnerJob, TrainingPlan, model, tokenizer, text, probe, slots, tokens, rank) -> None:
    from seal_trl.inner import InnerLoopConfig

    loop = InnerLoop(model, tokenizer, InnerLoopConfig(lora_r=rank, lora_alpha=2 * rank, num_epochs=1,
                                                       batch_self_edits=slots, max_seq_length=max(tokens, 8)))
    jobs = [InnerJob(TrainingPlan.from_texts([text], epochs=1), probe, context_id="c", seed=i) for i in range(slots)]
    errors = [r.error_message for r in loop.run_many(jobs) if r.error]
    if errors:
        raise RuntimeError(f"inner runs failed: {errors}")


def predict(shape_name: str, *, slots: int, tokens: int, rank: int) -> dict:
    from seal_trl.planning import PlanSettings, load_shape, plan_memory

    settings = PlanSettings(dtype="fp32", slots=slots, inner_max_tokens=tokens, inner_lora_r=rank,
                            inner_on_device=False)
    plan = plan_memory(load_shape(shape_name), settings)
    return {"predicted_bytes": plan.peak_bytes,
            "components": {c.name: round(c.gib, 3) for c in plan.components}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--slots", type=int, default=2, help="K: self-edits trained at once")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of each self-edit's one example")
    parser.add_argument("--rank", type=int, default=32, help="inner LoRA rank")
    parser.add_argument("--out", default=str(HERE / "planner_check.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the subprocess: measure this shape and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(str(HERE / "model_configs" / f"{args.one}.json"), slots=args.slots,
                                 tokens=args.tokens, rank=args.rank)))
        return
    rows = []
    for key in args.shapes:
        done = subprocess.run([sys.executable, __file__, "--one", key, "--slots", str(args.slots), "--tokens",
                               str(args.tokens), "--rank", str(args.rank)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{key}: the measuring process failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        predicted = predict(SHAPES[key], slots=args.slots, tokens=measured["tokens"], rank=args.rank)
        ratio = measured["measured_bytes"] / predicted["predicted_bytes"]
        rows.append({"shape": SHAPES[key], "slots": args.slots, "tokens_per_example": measured["tokens"],
                     "lora_r": args.rank, "predicted_gib": round(predicted["predicted_bytes"] / 2**30, 3),
                     "measured_gib": round(measured["measured_bytes"] / 2**30, 3), "measured/predicted":
                     round(ratio, 3), "within_25pct": abs(ratio - 1) <= TOLERANCE,
                     "predicted_components_gib": predicted["components"]})
    Path(args.out).write_text(json.dumps({"compared": "peak RSS growth (ru_maxrss after the inner run minus before "
                                          "the model) vs the planner's fp32 inner copy + adapter + K slots + "
                                          "activations + logits", "rows": rows}, indent=2) + "\n")
    print("| shape | K | tokens | predicted GiB | measured GiB | measured/predicted |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['slots']} | {r['tokens_per_example']} | {r['predicted_gib']:.2f} | "
              f"{r['measured_gib']:.2f} | {r['measured/predicted']:.2f} |")
    if not all(r["within_25pct"] for r in rows):
        raise SystemExit(f"outside {TOLERANCE:.0%}: {[r['shape'] for r in rows if not r['within_25pct']]}")


if __name__ == "__main__":
    main()
