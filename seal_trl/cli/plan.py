"""`seal-trl plan`: per-device memory and time per round of a SEAL run, from arithmetic (nothing is loaded)."""

from __future__ import annotations

import argparse
import math

from ..planning import PlanSettings, RoundSettings, load_shape, plan_memory, plan_round
from ..planning.memory import GIB
from ..planning.timing import DEFAULT_GENERATE_MFU, DEFAULT_TRAIN_MFU, DEVICE_FLOPS
from .flags import UsageError, check_recipe_config, integer, number

AUTO_SLOTS = 8  # batch_self_edits "auto" is planned at this K unless --slots says otherwise

# flag -> (recipe field, default). A flag given on the command line wins over the recipe, the recipe over the default.
RECIPE_FIELDS = {
    "model": ("model_name_or_path", None), "qlora": ("inner_load_in_4bit", False), "vllm": ("use_vllm", False),
    "vllm_gpu_memory_utilization": ("vllm_gpu_memory_utilization", 0.3), "slots": ("inner_batch_self_edits", 1),
    "inner_lora_r": ("inner_lora_r", 32), "inner_target_modules": ("inner_target_modules", None),
    "inner_max_tokens": ("inner_max_seq_length", 1024), "inner_batch_size": ("inner_batch_size", 1),
    "policy_target_modules": ("lora_target_modules", None),
    "policy_gradient_checkpointing": ("gradient_checkpointing", False),
    "completion_tokens": ("max_completion_length", 256), "num_generations": ("num_generations", 4),
    "train_batch": ("per_device_train_batch_size", 8), "steps_per_generation": ("steps_per_generation", 1),
    "reward_repeats": ("reward_repeats", 1), "inner_epochs": ("inner_epochs", 10),
    "m_step_epochs": ("num_iterations", 1), "kept_per_context": ("rest_em_top_k", 1),
}


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a local model directory, a config.json, or a known shape: "
                   "SmolLM2-135M, Qwen2.5-0.5B, Qwen2.5-1.5B, Qwen2.5-7B, Llama-3.2-1B (default: the recipe's)")
    p.add_argument("--config", default=None, help="a recipe YAML: K, tokens, ranks, batch sizes come from it")
    p.add_argument("--gpus", type=integer(1), default=1, help="processes (devices), one per GPU")
    p.add_argument("--zero", type=int, choices=[0, 2, 3], default=0, help="DeepSpeed ZeRO stage (0: DDP)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="weights (default bf16; recipe's bf16)")
    p.add_argument("--qlora", action="store_true", default=None, help="a 4-bit nf4 inner copy (inner_load_in_4bit)")
    p.add_argument("--vllm", action="store_true", default=None, help="vLLM colocated on each device (use_vllm)")
    p.add_argument("--vllm-gpu-memory-utilization", type=number(0, 1, exclusive=True), default=None)
    p.add_argument("--device-memory", type=number(0, exclusive=True), default=80.0, help="GiB per device")
    p.add_argument("--policy-lora-r", type=integer(1), default=None,
                   help="the policy's LoRA rank (default: the recipe's lora_r with use_peft, else a full policy)")
    p.add_argument("--policy-target-modules", nargs="+", default=None)
    p.add_argument("--policy-gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--slots", "-K", type=integer(1), default=None, help="inner_batch_self_edits (K adapter slots)")
    p.add_argument("--inner-lora-r", type=integer(1), default=None)
    p.add_argument("--inner-target-modules", nargs="+", default=None)
    p.add_argument("--inner-max-tokens", type=integer(1), default=None,
                   help="the longest inner training example (inner_max_seq_length, default 1024)")
    p.add_argument("--inner-batch-size", type=integer(1), default=None)
    p.add_argument("--inner-gradient-checkpointing", action="store_true", default=False)
    p.add_argument("--prompt-tokens", type=integer(1), default=None,
                   help="a self-edit prompt's length (default 512; an ARC recipe's arc_max_tokens)")
    p.add_argument("--completion-tokens", type=integer(1), default=None, help="max_completion_length")
    p.add_argument("--train-batch", type=integer(1), default=None, help="per_device_train_batch_size")
    p.add_argument("--steps-per-generation", type=integer(1), default=None)
    p.add_argument("--num-generations", type=integer(1), default=None)
    p.add_argument("--reward-repeats", type=integer(1), default=None)
    p.add_argument("--inner-epochs", type=integer(1), default=None)
    p.add_argument("--m-step-epochs", type=integer(1), default=None, help="num_iterations")
    p.add_argument("--kept-per-context", type=integer(1), default=None, help="rest_em_top_k")
    p.add_argument("--device", choices=sorted(DEVICE_FLOPS), default="h100", help="whose peak FLOP rate to assume")
    p.add_argument("--device-flops", type=number(0, exclusive=True), default=None,
                   help="peak FLOP/s, overriding --device's datasheet figure")
    p.add_argument("--train-mfu", type=number(0, 1, exclusive=True), default=DEFAULT_TRAIN_MFU)
    p.add_argument("--generate-mfu", type=number(0, 1, exclusive=True), default=DEFAULT_GENERATE_MFU)


def _recipe(path: str | None) -> dict:
    if path is None:
        return {}
    import yaml

    check_recipe_config(path)
    with open(path, encoding="utf-8-sig") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: a recipe is a YAML mapping of field: value")
    return data


def recipe_task(args: argparse.Namespace) -> str:
    return str(_recipe(args.config).get("task", "knowledge"))


def resolve(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The settings: flag, else recipe field, else default; and notes on what was assumed."""
    recipe, notes = _recipe(args.config), []
    values = {}
    for flag, (field, default) in RECIPE_FIELDS.items():
        given = getattr(args, flag)
        values[flag] = given if given is not None else recipe.get(field, default)
    if values["model"] is None and args.config is not None:
        values["model"] = "SmolLM2-135M"
        notes.append("the recipe names no model_name_or_path: planned for the embedded SmolLM2-135M-Instruct")
    if values["model"] is None:
        raise UsageError("--model is missing: give a model directory, a config.json or a known shape (or --config "
                         "with model_name_or_path)")
    if values["slots"] == "auto":
        values["slots"] = AUTO_SLOTS
        notes.append(f"inner_batch_self_edits 'auto' planned at K={AUTO_SLOTS}; set --slots for another K")
    values["slots"] = int(values["slots"])
    if args.policy_lora_r is None:
        values["policy_lora_r"] = recipe.get("lora_r", 16) if recipe.get("use_peft") else None
    else:
        values["policy_lora_r"] = args.policy_lora_r
    values["dtype"] = args.dtype or ("fp32" if recipe.get("use_cpu") or recipe.get("bf16") is False else "bf16")
    values["prompt_tokens"] = args.prompt_tokens or int(recipe.get("arc_max_tokens", 512))
    if recipe.get("task") == "arc":
        notes.append("arc: an inner run trains on the puzzle's leave-one-out examples, not on the self-edit's "
                     "tokens; the inner training time is planned as for knowledge self-edits (a lower bound)")
    rest_em = recipe.get("algorithm", "rest_em") == "rest_em"
    values["kept_per_context"] = values["kept_per_context"] if rest_em else values["num_generations"]
    # ReST-EM's M-step forwards only a micro-batch's kept rows: their expected number, not the worst case
    kept_share = min(1.0, int(values["kept_per_context"] or values["num_generations"]) / int(values["num_generations"]))
    values["m_step_rows"] = max(1, math.ceil(int(values["train_batch"]) * kept_share))
    if values["m_step_rows"] < int(values["train_batch"]):
        notes.append(f"M-step activations at the expected {values['m_step_rows']} kept rows of a micro-batch of "
                     f"{values['train_batch']}; a micro-batch whose rows are all kept needs up to "
                     f"{int(values['train_batch']) / values['m_step_rows']:.1f}x that (gradient_checkpointing "
                     "lowers it)")
    return values, notes


def run_plan(args: argparse.Namespace) -> int:
    v, notes = resolve(args)
    shape = load_shape(str(v["model"]))
    targets = lambda name: {} if v[name] is None else {name: tuple(v[name])}  # noqa: E731
    generation_batch = v["train_batch"] * v["steps_per_generation"]
    settings = PlanSettings(
        gpus=args.gpus, zero=args.zero, dtype=v["dtype"], policy_lora_r=v["policy_lora_r"], qlora=bool(v["qlora"]),
        policy_gradient_checkpointing=bool(v["policy_gradient_checkpointing"]), inner_lora_r=int(v["inner_lora_r"]),
        slots=v["slots"], inner_batch_size=int(v["inner_batch_size"]), inner_max_tokens=int(v["inner_max_tokens"]),
        inner_gradient_checkpointing=args.inner_gradient_checkpointing, prompt_tokens=v["prompt_tokens"],
        completion_tokens=int(v["completion_tokens"]), generation_batch=generation_batch,
        train_batch=v["m_step_rows"], vllm=bool(v["vllm"]),
        vllm_gpu_memory_utilization=float(v["vllm_gpu_memory_utilization"]), device_memory_gib=args.device_memory,
        **targets("inner_target_modules"), **targets("policy_target_modules"))
    contexts = max(1, generation_batch * args.gpus // int(v["num_generations"]))
    device_flops = args.device_flops or DEVICE_FLOPS[args.device]
    rounds = RoundSettings(contexts=contexts, num_generations=int(v["num_generations"]),
                           reward_repeats=int(v["reward_repeats"]), prompt_tokens=v["prompt_tokens"],
                           completion_tokens=int(v["completion_tokens"]), inner_epochs=int(v["inner_epochs"]),
                           kept_per_context=int(v["kept_per_context"] or v["num_generations"]),
                           m_step_epochs=int(v["m_step_epochs"]), gpus=args.gpus, device_flops=device_flops,
                           train_mfu=args.train_mfu, generate_mfu=args.generate_mfu)
    if recipe_task(args) != "arc" and settings.inner_max_tokens > settings.completion_tokens:
        notes.append(f"inner examples planned at the bound, {settings.inner_max_tokens} tokens (inner_max_seq_length); "
                     f"knowledge self-edits are at most {settings.completion_tokens} tokens (max_completion_length): "
                     f"--inner-max-tokens {settings.completion_tokens} plans that")
    source = "--device-flops" if args.device_flops else ("an assumed round figure" if args.device == "cpu" else
                                                         f"{args.device} dense bf16 peak, datasheet")
    print(render(shape, settings, rounds, notes, flops_source=source))
    return 0


def render(shape, s: PlanSettings, r: RoundSettings, notes: list[str], *, flops_source: str) -> str:
    """The plan as text: the memory table, the peak, the time table and where each assumption comes from."""
    plan = plan_memory(shape, s)
    policy = f"LoRA r={s.policy_lora_r}" if s.policy_lora_r else "full-weight"
    inner = "4-bit nf4" if s.qlora else s.dtype
    lines = [f"{shape.name}: {shape.num_parameters / 1e9:.2f}B parameters; {s.gpus} device(s), ZeRO-{s.zero}, "
             f"{policy} policy, inner copy {inner}, K={s.slots}, inner LoRA r={s.inner_lora_r}, "
             f"{s.inner_max_tokens} tokens per inner example",
             "", f"{'memory per device (an estimate from parameter arithmetic)':58s} {'GiB':>7s}  {'phase':11s} how"]
    for c in plan.components:
        lines.append(f"  {c.name:56s} {c.gib:7.2f}  {c.phase:11s} {c.source}")
    peak, phase = plan.peak_bytes / GIB, plan.peak_phase
    fits = "fits" if peak <= s.device_memory_gib else "DOES NOT FIT: lower K, the tokens, or use --qlora / ZeRO-3"
    lines.append(f"  peak = resident {plan.phase_bytes('resident') / GIB:.2f} + {phase} "
                 f"{plan.phase_bytes(phase) / GIB:.2f}" + (f" + vLLM {plan.phase_bytes('vllm') / GIB:.2f}"
                                                           if s.vllm else "")
                 + f" = {peak:.2f} GiB of {s.device_memory_gib:g} GiB: {fits}")
    phases = plan_round(shape, r)
    lines += ["", f"time per round ({r.contexts} contexts x {r.num_generations} self-edits, {r.reward_repeats} "
              f"inner run(s) each), per device:"]
    for ph in phases:
        lines.append(f"  {ph.name:16s} {ph.seconds / 60:8.1f} min   {ph.flops:.2e} FLOP: {ph.source}")
    lines.append(f"  total            {sum(ph.seconds for ph in phases) / 60:8.1f} min")
    lines += ["", f"assumed: {r.device_flops / 1e12:g} TFLOP/s peak ({flops_source}); MFU {r.train_mfu:g} training "
              f"(--train-mfu), {r.generate_mfu:g} generation (--generate-mfu); 6 x params FLOPs per trained token, "
              f"2 per generated or scored token; each self-edit at max_completion_length ({r.completion_tokens}), "
              f"prompts {r.prompt_tokens} tokens (--prompt-tokens)", *[f"note: {n}" for n in notes]]
    return "\n".join(lines)
