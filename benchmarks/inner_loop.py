"""Self-edit evaluations per minute: seal-trl's InnerLoop against a reference-style loop.

The reference-style loop is what a user would write from the SEAL reference code: a fresh
`get_peft_model` per self-edit, HF `Trainer` on examples padded to a fixed max length, the adapter saved
to disk and loaded back for scoring, and the score before adaptation recomputed every time. Both use
the same plans, LoRA settings, learning rate, epochs, batch size and grader (answer log-likelihood).

Each variant runs in its own subprocess so peak RSS is its own. Results are appended to the day's log, benchmarks/log/.

    python benchmarks/inner_loop.py --model tiny                 # quick (seconds)
    python benchmarks/inner_loop.py --model embedded --plans 3   # SmolLM2-135M (tens of minutes on 2 cores)

With the engine it also reports the FLOP floor (FLOPs at the square-matmul rate) and the matmul floor at the run's
real shapes (`matmul_shapes.py`: every matmul of one run recorded, each shape timed alone).

Batched mode: the same InnerLoop training K self-edits at once in K adapter slots (`batch_self_edits=K`)
against K=1 (one at a time), same plans and seeds; also the FLOPs of one self-edit evaluation (counted with
torch's FlopCounterMode) and the share of this machine's measured fp32 matmul throughput each K achieves.

    python benchmarks/inner_loop.py --model embedded --batched 1 2 4 8 --plans 8 --epochs 3

Profile (where one sequential step's CPU time goes, by kind of op) and bf16 autocast (`--autocast bf16`, for
CPUs with native bf16; compare its rewards and speed with an fp32 run):

    python benchmarks/inner_loop.py --model embedded --profile --epochs 2
    python benchmarks/inner_loop.py --model embedded --profile --batched 1 8 --plans 8 --epochs 1   # per self-edit
    (the profiler keeps every op event in memory: 8 plans x 3 epochs at K=8 ran out of 24 GiB)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import knowledge_example as example  # noqa: E402
from results_file import append_section, utc_stamp  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_path(name: str) -> str:
    if name == "tiny":
        from seal_trl.testing import save_tiny_model

        directory = Path(tempfile.gettempdir()) / "seal-trl-bench-tiny"
        if not (directory / "config.json").exists():
            save_tiny_model(directory)
        return str(directory)
    if name == "embedded":
        from seal_trl.models import embedded_model_path

        return str(embedded_model_path())
    return name


def lora_settings(args) -> dict:
    return dict(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=list(args.targets))


def load_timed_model(args, path: str):
    """The model under test on --device in --dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_engine(args, path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal_trl.inner import InnerLoop, InnerLoopConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_timed_model(args, path)
    lora = lora_settings(args)
    loop = InnerLoop(model, tokenizer, InnerLoopConfig(
        lora_r=lora["r"], lora_alpha=lora["lora_alpha"], target_modules=tuple(lora["target_modules"]),
        max_seq_length=args.max_length, autocast=args.autocast, compile=args.compile))
    probe = example.probe()
    plans = list(example.benchmark_plans(args.plans, args.epochs))
    flops = count_flops(loop, plans[0], probe) if args.count_flops else None  # untimed; also warms up
    shape_floor = None
    if args.count_flops:  # the same run's matmuls, each shape timed alone (untimed here)
        from matmul_shapes import matmul_flops, record_matmuls, replay_seconds

        calls = record_matmuls(lambda: loop.run(plans[0], probe, seed=0))
        shape_floor = {"seconds": replay_seconds(calls), "calls": sum(calls.values()), "signatures": len(calls),
                       "flops": matmul_flops(calls)}
    rewards, seconds, tokens = [], [], 0
    start = time.perf_counter()
    for i, plan in enumerate(plans):
        result = loop.run(plan, probe, seed=i)
        assert result.ok, result.error_message
        rewards.append(result.reward)
        seconds.append(result.seconds)
        tokens += result.tokens_trained
    total = time.perf_counter() - start
    return {"rewards": rewards, "seconds": seconds, "total_seconds": total, "tokens_processed": tokens,
            "flops_first_run": flops, "shape_floor": shape_floor}


def count_flops(loop, plan, probe) -> int:
    """FLOPs of one self-edit evaluation (training and scoring), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loop.run(plan, probe, seed=0)
    return counter.get_total_flops()


# Profile rows: an op's self time goes to the first category whose name fragment it contains.
CATEGORIES = (
    ("matmuls (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::_grouped_mm", "mkldnn")),
    ("attention (sdpa)", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("log-softmax and cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("optimizer and grad clipping", ("adamw", "_foreach", "clip_grad", "norm")),
    ("copies, casts, indexing, allocation", ("copy_", "aten::to", "_to_copy", "empty", "cat", "index", "clone",
                                             "contiguous", "zeros", "fill_", "slice", "select", "masked")),
    ("elementwise (add, mul, silu, rsqrt, pow, mean)", ("add", "mul", "silu", "rsqrt", "pow", "mean", "neg", "div",
                                                        "sigmoid", "exp", "sum", "sub", "rotary", "cos", "sin")),
)


def run_profile(args, path: str) -> dict:
    """Self-edits through InnerLoop under torch.profiler: where a training step's CPU time goes. `--slots 1`: one
    self-edit through `run`; `--slots K`: `--plans` self-edits through `run_many` in K slots (per self-edit)."""
    from torch.profiler import ProfilerActivity, profile

    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.jobs import InnerJob

    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(path)
    lora = lora_settings(args)
    loop = InnerLoop(load_timed_model(args, path), tokenizer, InnerLoopConfig(
        lora_r=lora["r"], lora_alpha=lora["lora_alpha"], target_modules=tuple(lora["target_modules"]),
        max_seq_length=args.max_length, autocast=args.autocast, batch_self_edits=args.slots))
    probe = example.probe()
    plans = list(example.benchmark_plans(1 if args.slots == 1 else args.plans, args.epochs))
    jobs = [InnerJob(plan, probe, context_id="profile", seed=i) for i, plan in enumerate(plans)]
    loop.score(probe, context_id="profile")
    loop.run_many(jobs)  # warm-up: allocator, kernels, lazy init
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        results = loop.run_many(jobs)
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error_message for r in results]
    result = results[0]
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        label = next((c for c, parts in CATEGORIES if any(p in name for p in parts)), "other (Python, autograd, ...)")
        groups[label] = groups.get(label, 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"train_seconds": result.train_seconds, "score_seconds": result.score_seconds, "steps": result.steps,
            "tokens": result.tokens_trained, "self_cpu_s": total / 1e6, "self_edits": len(jobs), "wall_s": wall,
            "groups": {k: v / 1e6 for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [[e.key, e.self_cpu_time_total / 1e6, e.count] for e in top]}


def run_reference(args, path: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from seal_trl.inner.graders import LogLikelihoodGrader

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    grader = LogLikelihoodGrader()
    probe = example.probe()
    rewards, seconds, tokens = [], [], 0
    start = time.perf_counter()
    for i, plan in enumerate(example.benchmark_plans(args.plans, args.epochs)):
        t0 = time.perf_counter()
        base.eval()
        before = grader.score(base, tokenizer, probe)  # the reference recomputes its baseline every time
        texts = [e.completion for e in plan.examples]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_length)
        enc["labels"] = [
            [t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])
        ]
        tokens += len(texts) * args.max_length * plan.epochs
        peft_model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora_settings(args)))
        with tempfile.TemporaryDirectory() as tmp:
            training_args = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=plan.batch_size, num_train_epochs=plan.epochs,
                learning_rate=plan.learning_rate, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear",
                logging_strategy="no", save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                disable_tqdm=True, seed=i, dataloader_num_workers=0,
            )
            Trainer(model=peft_model, args=training_args, train_dataset=Dataset.from_dict(dict(enc)),
                    data_collator=default_data_collator).train()
            adapter_dir = os.path.join(tmp, "adapter")
            peft_model.save_pretrained(adapter_dir)
            base = peft_model.unload()
            scored = PeftModel.from_pretrained(base, adapter_dir)
            scored.eval()
            after = grader.score(scored, tokenizer, probe)
            base = scored.unload()
        rewards.append(after - before)
        seconds.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"rewards": rewards, "seconds": seconds, "total_seconds": total, "tokens_processed": tokens}


def run_slots(args, path: str) -> dict:
    """`--plans` self-edits through InnerLoop.run_many with batch_self_edits=args.slots."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.jobs import InnerJob

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_timed_model(args, path)
    lora = lora_settings(args)
    loop = InnerLoop(model, tokenizer, InnerLoopConfig(
        lora_r=lora["r"], lora_alpha=lora["lora_alpha"], target_modules=tuple(lora["target_modules"]),
        max_seq_length=args.max_length, batch_self_edits=args.slots, autocast=args.autocast))
    probe = example.probe()
    jobs = [InnerJob(plan, probe, context_id="harrowmere", seed=i)
            for i, plan in enumerate(example.benchmark_plans(args.plans, args.epochs))]
    loop.score(probe, context_id="harrowmere")  # the cached before-score is not part of the timing
    measure = {}
    if args.slots == "auto":  # the one-off measurement, timed apart from the runs
        synchronize(args.device)
        t0 = time.perf_counter()
        loop.batch_slots(jobs)
        measure = {"chosen_slots": loop.slot_choice.slots, "measure_seconds": time.perf_counter() - t0,
                   "measured": loop.slot_choice.seconds}
    flops = None
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loop.run_many(jobs[:1])
        flops = counter.get_total_flops()
    synchronize(args.device)
    start = time.perf_counter()
    results = loop.run_many(jobs)
    synchronize(args.device)
    total = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error_message for r in results]
    return {"rewards": [r.reward for r in results], "total_seconds": total, "flops_first_run": flops,
            "tokens_processed": sum(r.tokens_trained for r in results), **measure}


def slot_setting(text: str) -> int | str:
    """K for --batched/--slots: an integer or 'auto'."""
    return text if text == "auto" else int(text)


def matmul_gflops(size: int = 1024, repeats: int = 30, *, device: str = "cpu", dtype: str = "float32") -> float:
    """This machine's matmul throughput in `dtype` on `device` (CPU: torch's current thread count), best of 3."""
    import torch

    if device.startswith("cuda"):
        size, repeats = max(size, 8192), max(repeats, 50)
    a, b = (torch.randn(size, size, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 * repeats / best / 1e9


def child(args) -> None:
    path = model_path(args.model)
    runner = {"engine": run_engine, "reference": run_reference, "slots": run_slots,
              "profile": run_profile}[args.variant]
    out = runner(args, path)
    out["peak_rss_mib"] = peak_rss_mib()
    if args.device.startswith("cuda"):
        import torch

        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def run_child(args, variant: str, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--model", args.model, "--plans",
           str(args.plans), "--epochs", str(args.epochs), "--max-length", str(args.max_length), "--lora-r",
           str(args.lora_r), "--device", args.device, "--dtype", args.dtype, "--autocast", args.autocast,
           "--targets", *args.targets, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{variant} {' '.join(extra)} failed (exit {proc.returncode})")
    return json.loads(line[len("RESULT "):])


def parent_batched(args) -> None:
    import torch

    model_path(args.model)
    gflops = matmul_gflops(device=args.device, dtype=args.dtype)
    print(f"measured {args.dtype} matmul throughput on {args.device}: {gflops:.1f} GFLOP/s "
          f"({torch.get_num_threads()} CPU threads)", flush=True)
    results = {}
    for k in args.batched:
        extra = ["--slots", str(k)] + (["--count-flops"] if k == args.batched[0] else [])
        print(f"running K={k} ...", flush=True)
        results[k] = run_child(args, "slots", *extra)
        r = results[k]
        chose = f" (chose K={r['chosen_slots']} in {r['measure_seconds']:.1f} s)" if k == "auto" else ""
        print(f"  K={k}{chose}: {r['total_seconds']:.1f} s for {args.plans} self-edits, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB, rewards {[round(x, 4) for x in r['rewards']]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": args.device, "dtype": args.dtype,
                                               "plans": args.plans, "epochs": args.epochs, "matmul_gflops": gflops,
                                               "results": results}, indent=2))
        print(f"results: {args.json}")
        return
    write_batched_results(args, results, gflops)


def write_batched_results(args, results: dict, gflops: float) -> None:
    import torch

    first = results[args.batched[0]]
    flops_per_edit = first["flops_first_run"]
    base = results[1] if 1 in results else first
    base_rate = 60 * args.plans / base["total_seconds"]
    worst = max(max(abs(a - b) for a, b in zip(r["rewards"], base["rewards"])) for r in results.values())
    lines = [
        f"\n## Batched inner loop: {args.model} model, {args.plans} self-edits, K slots ({utc_stamp()})\n",
        f"`python benchmarks/inner_loop.py --model {args.model} --batched {' '.join(map(str, args.batched))} "
        f"--plans {args.plans} --epochs {args.epochs}` on {platform.machine()} with {os.cpu_count()} CPUs, torch "
        f"threads {torch.get_num_threads()}. Same {args.plans} plans (~{len(example.IMPLICATIONS) + 1} examples "
        f"each, {args.epochs} epochs, batch 1) and seeds for every K; LoRA r={args.lora_r} on "
        f"{', '.join(args.targets)}; answer log-likelihood grader. K=1 is the sequential engine. Each K runs in "
        f"its own process.\n",
        f"Measured fp32 matmul throughput (1024x1024 `torch.mm`, same threads): **{gflops:.1f} GFLOP/s**. "
        f"FLOPs of one self-edit evaluation (training + scoring, counted by `FlopCounterMode` on K="
        f"{args.batched[0]}'s first plan): **{flops_per_edit / 1e12:.3f} TFLOP**. Largest reward difference "
        f"between any K and K={1 if 1 in results else args.batched[0]}: {worst:.2e}.\n",
        "| K | self-edits / min | s / self-edit | speed-up vs K=1 | achieved GFLOP/s | share of matmul peak | "
        "peak RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in results.items():
        rate = 60 * args.plans / r["total_seconds"]
        achieved = flops_per_edit * args.plans / r["total_seconds"] / 1e9
        name = f"auto (K={r['chosen_slots']})" if k == "auto" else k
        lines.append(f"| {name} | {rate:.2f} | {r['total_seconds'] / args.plans:.1f} | {rate / base_rate:.2f}x | "
                     f"{achieved:.1f} | {achieved / gflops:.0%} | {r['peak_rss_mib']:.0f} |")
    lines.append("\nAchieved GFLOP/s counts the useful FLOPs of a sequential run (padding in shared batches is "
                 "not counted as work).\n")
    if "auto" in results:
        from seal_trl.inner.auto_slots import MEASURE_STEPS, slot_candidates

        r = results["auto"]
        work = f"first {max(slot_candidates(torch.device(args.device)))} self-edits for {MEASURE_STEPS} steps each"
        timed = ", ".join(f"K={k} {s:.1f} s" for k, s in r["measured"].items())
        lines.append(f"`batch_self_edits=\"auto\"` timed the same {work} at each K ({timed}), chose "
                     f"K={r['chosen_slots']}, and took {r['measure_seconds']:.1f} s to do so, once per process; that "
                     f"time is not in its row.\n")
    append_section(lines)


def parent_autocast(args) -> None:
    """Each K in fp32 and under bf16 autocast, same plans and seeds: speed ratio and reward agreement."""
    import torch

    model_path(args.model)
    rates = {dtype: matmul_gflops(device=args.device, dtype=dtype) for dtype in ("float32", "bfloat16")}
    print(f"matmul throughput: fp32 {rates['float32']:.1f}, bf16 {rates['bfloat16']:.1f} GFLOP/s", flush=True)
    results = {}
    for k in args.batched or [1]:
        for mode in ("off", "bf16"):
            args.autocast = mode
            results[k, mode] = r = run_child(args, "slots", "--slots", str(k))
            print(f"  K={k} autocast {mode}: {r['total_seconds']:.1f} s, rewards {[round(x, 4) for x in r['rewards']]}",
                  flush=True)
    args.autocast = "compare"
    lines = [f"\n## Inner loop under bf16 autocast vs fp32: {args.model} model, {args.plans} self-edits ({utc_stamp()})\n",
             f"`python benchmarks/inner_loop.py --model {args.model} --autocast compare --batched "
             f"{' '.join(str(k) for k in (args.batched or [1]))} --plans {args.plans} --epochs {args.epochs}` on "
             f"{platform.machine()} with {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, native bf16: "
             f"{__import__('seal_trl.inner.engine', fromlist=['x']).cpu_has_native_bf16()}. Same plans and seeds; "
             f"weights, LoRA tensors and optimizer state fp32 in both. Matmul throughput measured in this run "
             f"(1024x1024 `torch.mm`): fp32 {rates['float32']:.1f}, bf16 {rates['bfloat16']:.1f} GFLOP/s.\n",
             "| K | s / self-edit fp32 | s / self-edit bf16 autocast | speed-up | mean reward fp32 | mean reward bf16 | "
             "largest reward difference |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in args.batched or [1]:
        a, b = results[k, "off"], results[k, "bf16"]
        diff = max(abs(x - y) for x, y in zip(a["rewards"], b["rewards"]))
        lines.append(f"| {k} | {a['total_seconds'] / args.plans:.1f} | {b['total_seconds'] / args.plans:.1f} | "
                     f"{a['total_seconds'] / b['total_seconds']:.2f}x | {sum(a['rewards']) / args.plans:+.4f} | "
                     f"{sum(b['rewards']) / args.plans:+.4f} | {diff:.3f} |")
    print("\n".join(lines))
    append_section(lines)


def parent_profile(args) -> None:
    model_path(args.model)
    r = run_child(args, "profile")
    per_step = r["train_seconds"] / max(r["steps"], 1)
    lines = [f"\n## Inner loop profile: {args.model} model, one self-edit ({utc_stamp()})\n",
             f"`python benchmarks/inner_loop.py --model {args.model} --profile --epochs {args.epochs} --autocast "
             f"{args.autocast}` on {platform.machine()} with {os.cpu_count()} CPUs. One plan (~"
             f"{len(example.IMPLICATIONS) + 1} examples, {args.epochs} epochs, batch 1; LoRA r={args.lora_r} on "
             f"{', '.join(args.targets)}) through `InnerLoop.run` under `torch.profiler`, after a warm-up run: "
             f"{r['steps']} steps, {r['tokens']} tokens, training {r['train_seconds']:.2f} s "
             f"({per_step * 1e3:.0f} ms a step), scoring {r['score_seconds']:.2f} s. Profiler overhead "
             "included; an op's self CPU time is its time on the calling thread, its intra-op threads inside it.\n",
             "| where the self CPU time goes | seconds | share |", "|---|---:|---:|"]
    for label, seconds in r["groups"].items():
        lines.append(f"| {label} | {seconds:.2f} | {seconds / r['self_cpu_s']:.0%} |")
    lines += ["", "Top ops by self CPU time:", "", "| op | seconds | calls |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {seconds:.2f} | {count} |" for name, seconds, count in r["top"]]
    print("\n".join(lines))
    if not args.json:
        append_section(lines)


def parent_profile_slots(args) -> None:
    """The profile per self-edit at each --batched K: which kinds of op the slots make cheaper, and which not."""
    model_path(args.model)
    runs = {}
    for k in args.batched:
        print(f"profiling K={k} ...", flush=True)
        runs[k] = run_child(args, "profile", "--slots", str(k))
    labels = list(dict.fromkeys(label for r in runs.values() for label in r["groups"]))
    ks = list(runs)
    lines = [f"\n## Inner loop profile per self-edit, K slots: {args.model} model ({utc_stamp()})\n",
             f"`python benchmarks/inner_loop.py --model {args.model} --profile --batched {' '.join(map(str, ks))} "
             f"--plans {args.plans} --epochs {args.epochs}` on {platform.machine()} with {os.cpu_count()} CPUs. "
             f"K=1: one plan through `InnerLoop.run`; other K: {args.plans} plans through `run_many` in K slots; each "
             f"under `torch.profiler` after a warm-up of the same work, in its own process. Seconds of self CPU time "
             f"per self-edit (an op's intra-op threads count inside it; profiler overhead included).\n",
             "| where the self CPU time goes | " + " | ".join(f"K={k}" for k in ks) + " | " +
             " | ".join(f"K={k} vs K={ks[0]}" for k in ks[1:]) + " |",
             "|---|" + "---:|" * (2 * len(ks) - 1)]
    per_edit = {k: {label: r["groups"].get(label, 0.0) / r["self_edits"] for label in labels} for k, r in runs.items()}
    for label in labels + ["total"]:
        vals = {k: (sum(per_edit[k].values()) if label == "total" else per_edit[k][label]) for k in ks}
        name = "**total**" if label == "total" else label
        lines.append(f"| {name} | " + " | ".join(f"{vals[k]:.2f}" for k in ks) + " | " +
                     " | ".join(f"{vals[ks[0]] / vals[k]:.2f}x" if vals[k] else "-" for k in ks[1:]) + " |")
    lines.append("\n" + ", ".join(f"K={k}: wall {r['wall_s'] / r['self_edits']:.2f} s per self-edit under the profiler"
                                   for k, r in runs.items()) + ".\n")
    for k, r in runs.items():
        lines += [f"Top ops at K={k} (seconds per self-edit, calls per self-edit):", "", "| op | seconds | calls |",
                  "|---|---:|---:|"]
        lines += [f"| `{name}` | {sec / r['self_edits']:.2f} | {count / r['self_edits']:.0f} |"
                  for name, sec, count in r["top"]]
        lines.append("")
    print("\n".join(lines))
    if not args.json:
        append_section(lines)


def parent(args) -> None:
    if args.autocast == "compare":
        return parent_autocast(args)
    if args.profile and args.batched:
        return parent_profile_slots(args)
    if args.batched:
        return parent_batched(args)
    if args.profile:
        return parent_profile(args)
    n_reference = reference_plans(args)  # a bad --reference-plans fails here, before anything runs
    model_path(args.model)  # convert/build once before timing
    gflops = matmul_gflops(device=args.device, dtype=args.dtype)
    print(f"measured {args.dtype} matmul throughput: {gflops:.1f} GFLOP/s", flush=True)
    results = {}
    runs = [("engine", "engine", ["--count-flops"])]
    if args.compile:  # the compiled engine beside the eager one, whose FLOPs stand for both
        runs.append(("engine-compiled", "engine", ["--compile"]))
    if args.with_slots:  # the same plans through run_many in K adapter slots, as an E-step runs them
        runs.append(("engine-slots", "slots", ["--slots", str(args.with_slots)]))
    # the reference may run on the first N plans only (it is ~7x slower); its seconds per self-edit are compared
    for name, variant, extra in [*runs, ("reference", "reference", ["--plans", str(n_reference)])]:
        print(f"running {name} ...", flush=True)
        results[name] = run_child(args, variant, *extra)
        r = results[name]
        print(f"  {name}: {r['total_seconds']:.1f} s for {len(r['rewards'])} self-edits, rewards "
              f"{[round(x, 4) for x in r['rewards']]}, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    write_results(args, results, gflops)


def reference_plans(args) -> int:
    """How many plans the reference-style loop runs: all, or the first N with N a multiple of the plans' cycle of
    self-edit kinds, so that its seconds per self-edit average the same mix as the engine's."""
    n = args.reference_plans or args.plans
    cycle = example.PLAN_KINDS
    if n > args.plans or (n != args.plans and n % cycle):
        raise SystemExit(f"--reference-plans {n}: use a multiple of {cycle} (the plans cycle through {cycle} kinds "
                         f"of self-edit) up to --plans {args.plans}, or leave it out to run all of them")
    return n


def write_results(args, results: dict, gflops: float) -> None:
    eng, ref = results["engine"], results["reference"]
    per_min = {k: 60 * len(v["rewards"]) / v["total_seconds"] for k, v in results.items()}
    n_ref = len(ref["rewards"])
    partial = n_ref != args.plans
    ref_flag = f" --reference-plans {n_ref}" if partial else ""
    ref_note = f"; it runs the first {n_ref} of the plans (the same mix), compared per self-edit" if partial else ""
    ratio = per_min["engine"] / per_min["reference"]
    stamp = utc_stamp()
    lines = [
        f"\n## Inner loop: {args.model} model, {args.plans} self-edits ({stamp})\n",
        f"`python benchmarks/inner_loop.py --model {args.model} --plans {args.plans} --epochs {args.epochs} "
        f"--max-length {args.max_length}{' --compile' if args.compile else ''}"
        f"{f' --with-slots {args.with_slots}' if args.with_slots else ''}{ref_flag}` on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, torch threads "
        f"{__import__('torch').get_num_threads()}. Same plans (~{len(example.IMPLICATIONS) + 1} examples each), "
        f"LoRA r={args.lora_r} alpha={2 * args.lora_r} on {', '.join(args.targets)}, lr 1e-3, {args.epochs} "
        f"epochs, batch 1, answer log-likelihood grader on {len(example.QUESTIONS)} questions. The reference-style "
        f"loop pads to {args.max_length} tokens (the SEAL reference pads to 2048, which is slower still)"
        f"{ref_note}.\n",
        "| loop | self-edits / min | s / self-edit | peak RSS (MiB) | mean reward |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {"engine": "seal-trl InnerLoop", "engine-compiled": "seal-trl InnerLoop, `compile=True`",
              "engine-slots": f"seal-trl InnerLoop, `batch_self_edits={args.with_slots}`",
              "reference": "reference-style (Trainer, padded, disk)"}
    for name, label in labels.items():
        if name not in results:
            continue
        r = results[name]
        lines.append(f"| {label} | {per_min[name]:.2f} | {r['total_seconds'] / len(r['rewards']):.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {sum(r['rewards']) / len(r['rewards']):+.4f} |")
    lines.append(f"\n**Speed-up: {ratio:.1f}x** self-edit evaluations per minute "
                 f"(memory ratio {eng['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x).\n")
    if "engine-slots" in results:
        slots = results["engine-slots"]
        diff = max(abs(a - b) for a, b in zip(slots["rewards"], eng["rewards"]))
        lines.append(f"In {args.with_slots} adapter slots (`run_many`, as an E-step runs a batch of self-edits): "
                     f"**{per_min['engine-slots'] / per_min['reference']:.1f}x** the reference-style loop, "
                     f"{per_min['engine-slots'] / per_min['engine']:.2f}x one at a time; rewards within {diff:.1e} of "
                     f"one at a time.\n")
    floor = eng["flops_first_run"] / (gflops * 1e9)
    per_edit = eng["total_seconds"] / args.plans
    lines.append(f"FLOP floor: one self-edit evaluation is {eng['flops_first_run'] / 1e12:.3f} TFLOP (training and "
                 f"scoring, counted by `FlopCounterMode` on the first plan); at the {args.dtype} matmul rate measured "
                 f"in this run ({gflops:.1f} GFLOP/s, 1024x1024 `torch.mm`) that is **{floor:.1f} s**. InnerLoop "
                 f"takes {per_edit:.1f} s: **{per_edit / floor:.2f}x the floor** ({floor / per_edit:.0%} of it)"
                 f"{'' if args.autocast == 'off' else f', with bf16 autocast against the {args.dtype} rate'}.\n")
    shape = eng.get("shape_floor")
    if shape:
        lines.append(f"Matmuls at their real shapes: the first plan's run does {shape['calls']:,} matmuls "
                     f"({shape['signatures']} distinct shapes and layouts, forward and backward, recorded with a "
                     f"dispatch mode); each shape timed alone, best of 3, they take **{shape['seconds']:.1f} s** "
                     f"(`benchmarks/matmul_shapes.py`): {shape['flops'] / 1e12:.3f} TFLOP at "
                     f"{shape['flops'] / shape['seconds'] / 1e9:.0f} GFLOP/s on average, against {gflops:.0f} for the "
                     f"square one. InnerLoop takes "
                     f"**{per_edit / shape['seconds']:.2f}x** that; the rest is everything that is not a matmul.\n")
    if "engine-compiled" in results:
        c = results["engine-compiled"]
        later = c["seconds"][1:] or c["seconds"]
        lines.append(f"Compiled: first self-edit {c['seconds'][0]:.1f} s (the compile included), later ones "
                     f"{sum(later) / len(later):.1f} s each against {sum(eng['seconds'][1:] or eng['seconds']) / len(later):.1f} s "
                     f"eager; {per_min['engine-compiled'] / per_min['engine']:.2f}x the eager engine over all "
                     f"{args.plans}; largest reward difference "
                     f"{max(abs(a - b) for a, b in zip(c['rewards'], eng['rewards'])):.1e}.\n")
    append_section(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', 'embedded' (SmolLM2-135M) or a local path")
    parser.add_argument("--plans", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"])
    parser.add_argument("--batched", type=slot_setting, nargs="+", default=None, metavar="K",
                        help="compare batch_self_edits=K for these K (e.g. 1 2 4 8 auto) instead of engine vs "
                             "reference")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", default=None, help="--batched: write the results here instead of the log")
    parser.add_argument("--autocast", default="off", choices=["off", "bf16", "compare"],
                        help="InnerLoopConfig.autocast for seal-trl's loop (the reference loop stays as it is); "
                             "'compare': each --batched K (default 1) in fp32 and in bf16, speed and rewards")
    parser.add_argument("--compile", action="store_true",
                        help="also time InnerLoopConfig(compile=True) (in the main comparison; a child: compile)")
    parser.add_argument("--with-slots", type=slot_setting, default=None, metavar="K",
                        help="also time the engine in K adapter slots (batch_self_edits=K) against the reference")
    parser.add_argument("--profile", action="store_true",
                        help="profile one self-edit through InnerLoop: where a step's CPU time goes")
    parser.add_argument("--reference-plans", type=int, default=None, metavar="N",
                        help="run the reference-style loop on the first N plans only (a multiple of the plans' "
                             f"cycle of {example.PLAN_KINDS}), compared per self-edit")
    parser.add_argument("--variant", choices=["engine", "reference", "slots", "profile"])
    parser.add_argument("--slots", type=slot_setting, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
