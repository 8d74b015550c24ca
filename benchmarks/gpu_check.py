"""The steps of benchmarks/gpu_check.sh: one function per step, each recorded as pass, fail or skip (with the reason)
and its wall time, into one JSON of figures and a Markdown summary. A failing step does not stop the others; the
exit code is 1 when any step failed.

    python benchmarks/gpu_check.py run --out runs/gpu-check        # on a CUDA machine (what gpu_check.sh run calls)
    python benchmarks/gpu_check.py dry-run --out /tmp/gc           # on a CPU: toy sizes, fp32, CUDA-only steps skipped

No weights travel: models are randomly initialised with real shapes (benchmarks/model_configs/) or the tests' tiny
ones, with the tests' 1,024-token tokenizer.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import knowledge_example as example  # noqa: E402

PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "deepspeed", "bitsandbytes", "datasets", "vllm")
SLOTS = (1, 4, 8, 16)
# Dense bf16 tensor-core peak by device name (NVIDIA datasheets: H100 SXM5 989.4 TFLOP/s dense, H100 PCIe 756,
# H200 the same GH100 chip as H100 SXM, A100 312); None where the name is not known.
PEAK_BF16_TFLOPS = (("H200", 989.4, "NVIDIA H200 datasheet: same GH100 chip as H100 SXM, 989.4 TFLOP/s bf16 dense"),
                    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet (PCIe): 756 TFLOP/s bf16 dense"),
                    ("H100", 989.4, "NVIDIA H100 datasheet (SXM5): 989.4 TFLOP/s bf16 dense"),
                    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense"))


class Skip(Exception):
    """A step that cannot run here; the message is the recorded reason."""


@dataclass
class Context:
    """What every step needs: the mode, the device, where to put models and outputs."""

    mode: str  # "run" (CUDA, real shapes, bf16) or "dry-run" (CPU, toy sizes, fp32)
    out: Path
    models: Path
    figures: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.mode == "run"

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.cuda else torch.float32

    def tiny(self, architecture: str) -> Path:
        """The tests' tiny model ("qwen2": biases on q/k/v; "llama": no bias), saved once."""
        from seal_trl.testing import save_tiny_model

        directory = self.models / f"tiny-{architecture}"
        if not (directory / "config.json").exists():
            save_tiny_model(directory, architecture=architecture)
        return directory

    def shaped(self, name: str) -> Path:
        """A random model with `name`'s real shapes on the GPU; the tiny qwen2 model in the dry run."""
        if not self.cuda:
            return self.tiny("qwen2")
        from random_model import save_random_model

        directory = self.models / name
        if not (directory / "config.json").exists():
            save_random_model(HERE / "model_configs" / f"{name}.json", directory, dtype="bfloat16")
        return directory


def plans(ctx: Context, n: int) -> list:
    """`n` knowledge self-edit plans: 2 epochs on the GPU; in the dry run capped at 1 optimizer step each."""
    import dataclasses

    chosen = example.benchmark_plans(n, 2)
    return chosen if ctx.cuda else [dataclasses.replace(p, max_steps=1) for p in chosen]


def synchronize(ctx: Context) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.synchronize()


# ----- steps ---------------------------------------------------------------------------------------------------
def step_versions(ctx: Context) -> dict:
    """Which versions were actually imported (None: not importable here), and the device."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            versions[name] = {"version": getattr(module, "__version__", None), "file": module.__file__}
        except Exception as err:  # noqa: BLE001 - any import failure is a figure, not a crash
            versions[name] = {"version": None, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    device = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
              "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "python": sys.version.split()[0]}
    if ctx.cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device (use dry-run on a CPU)")
        device["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        missing = [n for n in ("trl", "deepspeed", "bitsandbytes", "datasets") if versions[n]["version"] is None]
        if missing:
            raise RuntimeError(f"not importable: {missing} (run 'bash benchmarks/gpu_check.sh prepare' and carry .whl)")
    ctx.figures["versions"] = versions
    return {"versions": {k: v["version"] for k, v in versions.items()}, "device": device}


def step_inner_4bit(ctx: Context) -> dict:
    """CUDA 4-bit inner runs on a model with biases (Qwen2-style) and a bias-free one (Llama-style)."""
    if not ctx.cuda:
        raise Skip("bitsandbytes 4-bit inner runs need CUDA (the CPU path is covered by the test suite)")
    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.jobs import InnerJob

    figures = {}
    for architecture in ("qwen2", "llama"):
        loop = InnerLoop.from_pretrained(str(ctx.tiny(architecture)),
                                         InnerLoopConfig(lora_r=8, lora_alpha=16, load_in_4bit=True))
        layers = [m for m in loop.model.modules() if type(m).__name__ == "Linear4bit"]
        if not layers or any(m.weight.device.type != "cuda" for m in layers):
            raise RuntimeError(f"{architecture}: no Linear4bit layers on CUDA ({len(layers)} found)")
        with_bias = sum(getattr(m, "bias", None) is not None for m in layers)
        if (architecture == "qwen2") != (with_bias > 0):
            raise RuntimeError(f"{architecture}: {with_bias} 4-bit layers with a bias, expected "
                               f"{'some' if architecture == 'qwen2' else 'none'}")
        probe = example.probe()
        results = loop.run_many([InnerJob(p, probe, context_id="harrowmere", seed=i)
                                 for i, p in enumerate(plans(ctx, 4))])
        if not all(r.ok for r in results):
            raise RuntimeError(f"{architecture}: {[r.error_message for r in results if not r.ok][:2]}")
        figures[architecture] = {"linear4bit_layers": len(layers), "with_bias": with_bias,
                                 "rewards": [r.reward for r in results]}
        del loop
    return figures


def _trainer_run(ctx: Context, model_dir: Path, policy: str, *, extra: dict | None = None) -> dict:
    """A 2-step SEALTrainer (GRPO, so every step moves the policy) with `policy` in "full", "lora" or "qlora".
    At each reward call (after the sync at the generation boundary, the second one after an optimizer step) the
    inner model with its adapter neutral must compute the policy's logits on a fixed input."""
    import torch
    from transformers import AutoTokenizer

    from seal_trl.config import SEALConfig
    from seal_trl.models import load_model_and_tokenizer
    from seal_trl.tasks.knowledge import KnowledgeTask
    from seal_trl.tasks.squad import load_bundled
    from seal_trl.trainer import SEALTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = KnowledgeTask(chat=bool(tokenizer.chat_template)).build_dataset(load_bundled("train")[:4], tokenizer)
    settings = dict(output_dir=str(ctx.out / f"trainer-{policy}"), algorithm="grpo", max_steps=2,
                    per_device_train_batch_size=2, num_generations=2, max_completion_length=16 if ctx.cuda else 8,
                    use_cpu=not ctx.cuda, bf16=ctx.cuda, report_to=[], save_strategy="no", seed=0,
                    learning_rate=1e-2, inner_epochs=2, inner_lora_r=8, inner_lora_alpha=16,
                    inner_target_modules=["q_proj", "v_proj"], logging_steps=1, **(extra or {}))
    config = SEALConfig(**settings)
    peft_config = None
    model: object = str(model_dir)
    if policy in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    if policy == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # noqa: BLE001
            raise Skip(f"bitsandbytes is not importable here ({type(err).__name__}: {err})") from None
        model, _ = load_model_and_tokenizer(str(model_dir), load_in_4bit=True)
    trainer = SEALTrainer(model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)
    from seal_trl.inner.sync import unwrap

    device = trainer.accelerator.device
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device=device)
    checks, original = [], trainer.seal_reward.score_many

    def checked(contexts, self_edits):
        trainer.inner_loop.reset_adapter(0)
        with torch.no_grad():
            policy_model = unwrap(trainer.model_wrapped)
            was_training = policy_model.training
            policy_model.eval()
            policy_logits = policy_model(input_ids=ids).logits.float()
            policy_model.train(was_training)
            inner_logits = trainer.inner_loop.model(input_ids=ids).logits.float()
        checks.append({"step": trainer.state.global_step,
                       "gap": (inner_logits - policy_logits).abs().max().item(),
                       "scale": policy_logits.abs().max().item(), "logits": policy_logits.cpu()})
        return original(contexts, self_edits)

    trainer.seal_reward.score_many = checked
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    synchronize(ctx)
    start = time.perf_counter()
    trainer.train()
    synchronize(ctx)
    seconds = time.perf_counter() - start
    if len(checks) < 2:
        raise RuntimeError(f"expected a reward call per step (2), saw {len(checks)}")
    moved = (checks[-1]["logits"] - checks[0]["logits"]).abs().max().item()
    # bf16 rounding on the GPU; on a CPU in fp32 the 4-bit policy's kernel and the inner copy's dequantised matmul
    # differ by ~4e-4 at the tiny model's logit scale, a full-precision policy by ~1e-6
    tolerance = max(1.0, checks[0]["scale"]) * (5e-2 if ctx.cuda else 1e-3 if policy == "qlora" else 1e-4)
    results = trainer.seal_reward.last_results
    figures = {"policy": policy, "seconds": round(seconds, 2), "steps": trainer.state.global_step,
               "resync_gaps": [c["gap"] for c in checks], "resync_steps": [c["step"] for c in checks],
               "tolerance": tolerance, "policy_logits_moved": moved,
               "self_edits_last_step": len(results), "failed_last_step": sum(not r[0].ok for r in results),
               "policy_dtype": str(next(unwrap(trainer.model).parameters()).dtype),
               "inner_dtype": str(next(trainer.inner_loop.model.parameters()).dtype),
               "preflight": trainer.preflight_report.describe() if getattr(trainer, "preflight_report", None) else None,
               "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if ctx.cuda else None}
    if trainer.state.global_step != 2:
        raise RuntimeError(f"trained {trainer.state.global_step} steps, expected 2: {figures}")
    if max(figures["resync_gaps"]) > tolerance:
        raise RuntimeError(f"inner logits differ from the policy's after a sync by {max(figures['resync_gaps']):.3g} "
                           f"(> {tolerance:.3g}): {figures}")
    if moved <= tolerance:
        raise RuntimeError(f"the policy's logits moved only {moved:.3g} between the steps (<= {tolerance:.3g}): the "
                           f"re-sync check proves nothing: {figures}")
    if figures["failed_last_step"] == figures["self_edits_last_step"]:
        raise RuntimeError(f"every inner run failed: {[r[0].error_message for r in results][:2]}")
    return figures


def step_trainer_lora(ctx: Context) -> dict:
    """A LoRA policy through 2 SEALTrainer steps with the re-sync check (bf16 on the GPU)."""
    return _trainer_run(ctx, ctx.shaped("smollm2-135m"), "lora")


def step_trainer_qlora(ctx: Context) -> dict:
    """A QLoRA policy (4-bit base + LoRA) through 2 SEALTrainer steps with the re-sync check."""
    return _trainer_run(ctx, ctx.shaped("smollm2-135m"), "qlora")


def step_bf16_autocast(ctx: Context) -> dict:
    """The inner loop under bf16 autocast (fp32 weights) against fp32: same rewards within bf16 rounding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal_trl.inner import InnerLoop, InnerLoopConfig
    from seal_trl.inner.jobs import InnerJob

    directory = ctx.tiny("qwen2")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    probe = example.probe()
    rewards = {}
    for autocast in ("off", "bf16"):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(ctx.device)
        loop = InnerLoop(model, tokenizer, InnerLoopConfig(lora_r=8, lora_alpha=16, autocast=autocast))
        results = loop.run_many([InnerJob(p, probe, context_id="harrowmere", seed=i)
                                 for i, p in enumerate(plans(ctx, 4))])
        if not all(r.ok for r in results):
            raise RuntimeError(f"autocast={autocast}: {[r.error_message for r in results if not r.ok][:2]}")
        rewards[autocast] = [r.reward for r in results]
    worst = max(abs(a - b) - (0.05 + 0.05 * abs(a)) for a, b in zip(rewards["off"], rewards["bf16"]))
    if worst > 0:
        raise RuntimeError(f"bf16 autocast rewards differ from fp32 beyond 0.05 + 5%: {rewards}")
    return {"rewards_fp32": rewards["off"], "rewards_bf16_autocast": rewards["bf16"]}


def peak_flops(ctx: Context) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and where the figure comes from."""
    if not ctx.cuda:
        from inner_loop import matmul_gflops

        return matmul_gflops() * 1e9, "measured: this CPU's fp32 1024x1024 matmul throughput (best of 3)"
    import torch

    name = torch.cuda.get_device_name(0)
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {source}"
    return None, f"{name}: not in the table of known peaks (benchmarks/gpu_check.py PEAK_BF16_TFLOPS)"


def _slot_loop(ctx: Context, directory: Path, slots: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal_trl.inner import InnerLoop, InnerLoopConfig

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=ctx.dtype).to(ctx.device)
    return InnerLoop(model, AutoTokenizer.from_pretrained(directory),
                     InnerLoopConfig(lora_r=16, lora_alpha=32, batch_self_edits=slots, seed=0))


def step_k_timings(ctx: Context) -> dict:
    """Seconds per self-edit at K in {1, 4, 8, 16} slots, against the FLOP floor (FLOPs of one self-edit at the
    device's peak)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seal_trl.inner.jobs import InnerJob

    name = "qwen2.5-0.5b"
    directory = ctx.shaped(name)
    probe = example.probe()
    jobs = [InnerJob(p, probe, context_id="harrowmere", seed=i) for i, p in enumerate(plans(ctx, 16))]
    peak, source = peak_flops(ctx)
    rows, flops, first_rewards = {}, None, None
    for k in SLOTS:
        loop = _slot_loop(ctx, directory, k)
        loop.score(probe, context_id="harrowmere")  # the cached before-score is not timed
        if flops is None:
            with FlopCounterMode(display=False) as counter:
                loop.run_many(jobs[:1])
            flops = counter.get_total_flops()
        else:
            loop.run_many(jobs[:1])  # warm-up at this K's shapes
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        synchronize(ctx)
        start = time.perf_counter()
        results = loop.run_many(jobs)
        synchronize(ctx)
        seconds = time.perf_counter() - start
        if not all(r.ok for r in results):
            raise RuntimeError(f"K={k}: {[r.error_message for r in results if not r.ok][:2]}")
        rewards = [r.reward for r in results]
        first_rewards = first_rewards or rewards
        per_edit = seconds / len(jobs)
        rows[str(k)] = {"seconds_per_self_edit": per_edit,
                        "floor_share": (flops / peak) / per_edit if peak else None,
                        "max_reward_diff_vs_k1": max(abs(a - b) for a, b in zip(rewards, first_rewards)),
                        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if ctx.cuda else None}
        del loop
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"model": name if ctx.cuda else "tiny-qwen2", "dtype": str(ctx.dtype), "self_edits": len(jobs),
            "flops_per_self_edit": flops, "peak_flops": peak, "peak_source": source,
            "floor_seconds_per_self_edit": flops / peak if peak else None, "by_k": rows}


def _planner_prediction(directory: Path, report, lora_r: int, dtype: str) -> dict:
    """seal_trl.planning's inner-run memory for the preflight's shape, or why there is none."""
    try:
        from seal_trl.planning import PlanSettings, load_shape, plan_memory
    except ImportError as err:
        return {"skipped": f"seal_trl.planning is not importable here ({err}); no planner line"}
    try:
        plan = plan_memory(load_shape(str(directory)), PlanSettings(
            dtype=dtype, slots=report.slots, inner_batch_size=report.batch_size, inner_lora_r=lora_r,
            inner_max_tokens=report.tokens_per_example, inner_target_modules=("q_proj", "v_proj"),
            inner_on_device=False))
        return {"predicted_bytes": plan.peak_bytes, "components": {c.name: c.bytes for c in plan.components}}
    except Exception as err:  # noqa: BLE001 - another helper's API may differ; recorded, not fatal
        return {"skipped": f"seal_trl.planning's API did not accept the call ({type(err).__name__}: {err})"}


def step_preflight_memory(ctx: Context) -> dict:
    """The preflight's reported peak memory against an outside measurement (torch.cuda.max_memory_allocated on
    the GPU, resident-set growth on a CPU), and the planner's prediction when seal_trl.planning exists."""
    import torch

    from seal_trl.inner.preflight import peak_memory, run_preflight

    directory = ctx.shaped("qwen2.5-0.5b")
    loop = _slot_loop(ctx, directory, 4)
    loop.config.max_seq_length = min(loop.config.max_seq_length, 512 if ctx.cuda else 64)
    measured_bytes, baseline = None, None
    if ctx.cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        report = run_preflight(loop)  # resets the peak statistics itself at its start
        torch.cuda.synchronize()
        measured_bytes = torch.cuda.max_memory_allocated() - baseline
        kind = "torch.cuda.max_memory_allocated() minus the allocation before"
    else:
        with peak_memory(torch.device("cpu")) as outer:
            report = run_preflight(loop)
        measured_bytes = outer[0]
        kind = "resident-set growth around the call (an outer sampler)"
    if not report.fits:
        raise RuntimeError(report.describe())
    figures = {"describe": report.describe(), "slots": report.slots, "batch_size": report.batch_size,
               "tokens_per_example": report.tokens_per_example, "preflight_peak_bytes": report.peak_memory_bytes,
               "measured_peak_bytes": measured_bytes, "measured_kind": kind,
               "ratio": report.peak_memory_bytes / measured_bytes if measured_bytes else None,
               "planner": _planner_prediction(directory, report, 16, "bf16" if ctx.cuda else "fp32")}
    if ctx.cuda and not 0.75 <= (figures["ratio"] or 0) <= 1.25:
        raise RuntimeError(f"preflight peak {report.peak_memory_bytes} B vs measured {measured_bytes} B: off by more "
                           f"than 25%")
    if report.peak_memory_bytes <= 0:
        raise RuntimeError(f"the preflight reported no memory growth: {figures}")
    return figures


def step_zero3_accelerate(ctx: Context) -> dict:
    """A 2-step SEALTrainer run (full-weight policy, re-sync check) under DeepSpeed ZeRO-3 through `accelerate
    launch` with one process (accelerate_configs/zero3.yaml; zero3_cpu.yaml in the dry run)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("deepspeed is not importable here")
    config = ROOT / "accelerate_configs" / ("zero3.yaml" if ctx.cuda else "zero3_cpu.yaml")
    result = ctx.out / "zero3_worker.json"
    result.unlink(missing_ok=True)
    model = ctx.shaped("smollm2-135m")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
           "--main_process_port", str(free_port()), str(Path(__file__).resolve()), "zero3-worker", "--mode", ctx.mode,
           "--out", str(ctx.out), "--models", str(ctx.models), "--model", str(model)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    (ctx.out / "zero3_worker.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"accelerate launch exited {proc.returncode}: {' | '.join(tail)}")
    data = json.loads(result.read_text())
    if data["status"] != "pass":
        raise RuntimeError(data["reason"])
    return {"config": config.name, **data["figures"]}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_vllm_colocate(ctx: Context) -> dict:
    """One SEALTrainer step generating with vLLM colocated on the same GPU."""
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vLLM is not importable here")
    if not ctx.cuda:
        raise Skip("vLLM colocate needs CUDA")
    return _trainer_run(ctx, ctx.shaped("smollm2-135m"), "full",
                        extra={"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25})


def step_gpu_tests(ctx: Context) -> dict:
    """The GPU-marked tests (tests/test_gpu.py: bf16 vs fp32 inner loop, 4-bit inner loop, grouped-matmul batched
    engine equal to sequential)."""
    if not ctx.cuda:
        raise Skip("tests/test_gpu.py needs CUDA (collected and skipped by the ordinary test run)")
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not importable here")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    (ctx.out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    if proc.returncode != 0 or "skipped" in tail:
        raise RuntimeError(f"pytest exited {proc.returncode}: {tail} (gpu_tests.log)")
    return {"summary": tail}


STEPS = (step_versions, step_gpu_tests, step_inner_4bit, step_trainer_lora, step_trainer_qlora, step_bf16_autocast, step_k_timings,
         step_preflight_memory, step_zero3_accelerate, step_vllm_colocate)


def run_step(ctx: Context, step) -> dict:
    """Run one step; never raises: pass with figures, skip with the reason, or fail with the error."""
    name = step.__name__.removeprefix("step_")
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    entry = {"name": name, "what": (step.__doc__ or "").split("\n")[0]}
    try:
        entry.update(status="pass", reason=None, figures=step(ctx))
    except Skip as skip:
        entry.update(status="skip", reason=str(skip), figures=None)
    except Exception as err:  # noqa: BLE001 - a failing step is recorded and the others still run
        entry.update(status="fail", reason=f"{type(err).__name__}: {err}"[:2000], figures=None,
                     traceback=traceback.format_exc()[-4000:])
    entry["seconds"] = round(time.perf_counter() - start, 2)
    print(f"   {entry['status']} in {entry['seconds']} s{': ' + entry['reason'] if entry['reason'] else ''}",
          flush=True)
    return entry


def summary_markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']}, {report['device'] or 'CPU'}): {report['failed']} failed, "
             f"{report['seconds']} s in all", "", "| step | status | seconds | reason / figures |", "|---|---|---:|---|"]
    for step in report["steps"]:
        note = step["reason"] or ""
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} | {note.replace('|', '/')[:300]} |")
    versions = report["versions"]
    lines += ["", "Imported: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    k = next((s["figures"] for s in report["steps"] if s["name"] == "k_timings" and s["figures"]), None)
    if k:
        lines += ["", f"K timings on {k['model']} ({k['dtype']}), {k['self_edits']} self-edits; FLOP floor "
                  f"{k['floor_seconds_per_self_edit'] or float('nan'):.4f} s per self-edit ({k['peak_source']})", "",
                  "| K | s / self-edit | share of the FLOP floor | peak GPU MiB | max reward diff vs K=1 |",
                  "|---:|---:|---:|---:|---:|"]
        for key, row in k["by_k"].items():
            share = f"{row['floor_share']:.1%}" if row["floor_share"] is not None else "n/a"
            lines.append(f"| {key} | {row['seconds_per_self_edit']:.4f} | {share} | {row['peak_gpu_mib'] or '-'} | "
                         f"{row['max_reward_diff_vs_k1']:.1e} |")
    pre = next((s["figures"] for s in report["steps"] if s["name"] == "preflight_memory" and s["figures"]), None)
    if pre:
        planner = pre["planner"].get("predicted_bytes")
        lines += ["", f"Preflight: {pre['preflight_peak_bytes'] / 2**20:.1f} MiB reported, "
                  f"{pre['measured_peak_bytes'] / 2**20:.1f} MiB measured ({pre['measured_kind']}); planner: "
                  + (f"{planner / 2**20:.1f} MiB" if planner else pre["planner"]["skipped"])]
    return "\n".join(lines) + "\n"


def main_check(mode: str, out: Path, models: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    ctx = Context(mode=mode, out=out, models=models)
    start = time.perf_counter()
    steps = []
    for step in STEPS:  # the files are rewritten after every step: a run cut off by a time limit keeps what it did
        steps.append(run_step(ctx, step))
        device = next((s["figures"]["device"]["name"] for s in steps if s["name"] == "versions" and s["figures"]),
                      None)
        report = {"mode": mode, "device": device, "seconds": round(time.perf_counter() - start, 1),
                  "complete": len(steps) == len(STEPS), "failed": sum(s["status"] == "fail" for s in steps),
                  "versions": {k: v.get("version") for k, v in ctx.figures.get("versions", {}).items()},
                  "steps": steps}
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        markdown = summary_markdown(report)
        (out / "gpu_check.md").write_text(markdown)
    print(markdown)
    return 1 if report["failed"] else 0


def main_zero3_worker(mode: str, out: Path, models: Path, model: Path) -> None:
    """Inside `accelerate launch`: the trainer run under the launched DeepSpeed config, written for the parent."""
    ctx = Context(mode=mode, out=out, models=models)

    def step_zero3_worker(c: Context) -> dict:
        return _trainer_run(c, model, "full")

    entry = run_step(ctx, step_zero3_worker)
    (out / "zero3_worker.json").write_text(json.dumps(entry, default=str))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("run", "dry-run", "zero3-worker"))
    parser.add_argument("--mode", dest="worker_mode", default="dry-run", help="zero3-worker: the parent's mode")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    parser.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "seal-gpu-check-models"))
    parser.add_argument("--model", default=None, help="zero3-worker: the model directory")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.mode == "zero3-worker":
        main_zero3_worker(args.worker_mode, Path(args.out), Path(args.models), Path(args.model))
        return
    sys.exit(main_check(args.mode, Path(args.out), Path(args.models)))


if __name__ == "__main__":
    main()
