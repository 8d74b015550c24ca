"""Per-device memory of a SEAL run, from parameter arithmetic (an estimate, not a measurement).

What is resident for the whole run (the policy shard, its gradients and optimizer state, the inner copy and its
adapter) is added to the largest of the transient phases: generation (the ZeRO-3 gather of the whole policy and the
KV cache), an inner run (K slots' adapters, gradients and AdamW moments, and the activations of one training step),
and the M-step (the policy's activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .shapes import ModelShape

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5 + 4 / 64 / 8 + 4 / 256 / 64  # 4-bit weights, an 8-bit absmax per 64 and an fp32 one per 256 x 64
LORA_BYTES = 4  # PEFT keeps LoRA weights in fp32 over a bf16 base (autocast_adapter_dtype)
ADAMW_STATE_BYTES = 8  # AdamW's two fp32 moments per trainable parameter
LOGIT_COPIES = 4  # logits, their log-softmax (saved), its gradient and the logits' gradient: vocabulary-wide


@dataclass
class PlanSettings:
    """The run settings memory depends on; `seal-trl plan`'s flags and a recipe's fields."""

    gpus: int = 1
    zero: int = 0
    dtype: str = "bf16"  # the policy's and the inner copy's weights
    policy_lora_r: int | None = None  # None: a full-weight policy
    policy_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj")
    policy_gradient_checkpointing: bool = False
    qlora: bool = False  # a 4-bit nf4 inner copy
    inner_lora_r: int = 32
    inner_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj")
    slots: int = 1  # K = inner_batch_self_edits
    inner_batch_size: int = 1
    inner_max_tokens: int = 1024  # the longest inner training example (inner_max_seq_length)
    inner_gradient_checkpointing: bool = False
    prompt_tokens: int = 512
    completion_tokens: int = 256  # max_completion_length
    generation_batch: int = 8  # sequences one device generates at once (per_device_train_batch_size x steps_per_generation)
    train_batch: int = 8  # M-step rows in one micro-batch (ReST-EM trains only the kept rows of one)
    vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.3
    device_memory_gib: float = 80.0
    inner_on_device: bool = True  # False: a CPU run, where no policy is trained (the planner check)

    def __post_init__(self):
        checks = [("gpus", self.gpus >= 1, ">= 1"), ("zero", self.zero in (0, 1, 2, 3), "one of 0, 1, 2, 3"),
                  ("dtype", self.dtype in DTYPE_BYTES, f"one of {sorted(DTYPE_BYTES)}"),
                  ("policy_lora_r", self.policy_lora_r is None or self.policy_lora_r >= 1, ">= 1"),
                  ("inner_lora_r", self.inner_lora_r >= 1, ">= 1"), ("slots", self.slots >= 1, ">= 1"),
                  ("inner_batch_size", self.inner_batch_size >= 1, ">= 1"),
                  ("inner_max_tokens", self.inner_max_tokens >= 1, ">= 1"),
                  ("vllm_gpu_memory_utilization", 0 < self.vllm_gpu_memory_utilization < 1, "in (0, 1)"),
                  ("device_memory_gib", self.device_memory_gib > 0, "> 0")]
        for name, ok, need in checks:
            if not ok:
                raise ValueError(f"{name} must be {need}, got {getattr(self, name)!r}")


@dataclass
class Component:
    """One line of the plan: a name, bytes per device, the phase it belongs to, and how it was computed."""

    name: str
    bytes: float
    phase: str  # "resident", "generation", "inner run", "M-step", or "vllm"
    source: str

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass
class MemoryPlan:
    """The components and the peak: resident + the largest phase (+ vLLM's reservation)."""

    components: list[Component] = field(default_factory=list)

    def phase_bytes(self, phase: str) -> float:
        return sum(c.bytes for c in self.components if c.phase == phase)

    @property
    def peak_phase(self) -> str:
        phases = {c.phase for c in self.components} - {"resident", "vllm"}
        return max(sorted(phases), key=self.phase_bytes) if phases else "resident"

    @property
    def peak_bytes(self) -> float:
        peak = self.phase_bytes(self.peak_phase) if self.peak_phase != "resident" else 0.0
        return self.phase_bytes("resident") + peak + self.phase_bytes("vllm")


def activation_bytes_per_token(shape: ModelShape, lora_r: int, n_targets: int, bytes_per_value: float,
                               gradient_checkpointing: bool) -> float:
    """Bytes one training token keeps for the backward pass across all layers (flash/sdpa attention: no
    tokens-squared term). Per layer: two RMSNorms' inputs and outputs (4h), q, k and v after RoPE and the attention
    output at the query width (4 x heads x head_dim, k and v repeated to the query heads), the MLP's gate, its SiLU,
    up and their product (4 x intermediate), and each LoRA's r-wide hidden (2r per target). With checkpointing only
    each layer's input (h) is kept, plus one layer recomputed."""
    per_layer = (4 * shape.hidden_size + 4 * shape.num_heads * shape.head_dim + 4 * shape.intermediate_size
                 + 2 * lora_r * n_targets)
    if gradient_checkpointing:
        return (shape.num_layers * shape.hidden_size + per_layer) * bytes_per_value
    return shape.num_layers * per_layer * bytes_per_value


def logits_bytes(shape: ModelShape, tokens: int) -> float:
    """fp32 vocabulary-wide tensors of `tokens` labelled positions alive at once when the loss's backward starts:
    the logits, their log-softmax (saved for backward), its gradient and the logits' gradient."""
    return LOGIT_COPIES * tokens * shape.vocab_size * 4


def inner_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    """The inner loop's memory on one device: the copy, its adapter, K slots and one step's activations."""
    dtype = DTYPE_BYTES[s.dtype]
    out = []
    if s.qlora:
        out.append(Component("inner copy, 4-bit nf4 (projections) + bf16 rest",
                             shape.linear_parameters * NF4_BYTES + shape.other_parameters * 2, "resident",
                             f"{shape.linear_parameters / 1e9:.2f}B x {NF4_BYTES:.3f} B + "
                             f"{shape.other_parameters / 1e9:.2f}B x 2 B"))
    else:
        out.append(Component(f"inner copy, {s.dtype}", shape.num_parameters * dtype, "resident",
                             f"{shape.num_parameters / 1e9:.2f}B params x {dtype} B, whole on every device"))
    lora = shape.lora_parameters(s.inner_lora_r, s.inner_target_modules)
    out.append(Component(f"inner LoRA adapter r={s.inner_lora_r}", lora * LORA_BYTES, "resident",
                         f"{lora / 1e6:.1f}M params x {LORA_BYTES} B (fp32)"))
    per_slot = LORA_BYTES * 2 + ADAMW_STATE_BYTES  # weights (a K > 1 slot buffer; K = 1 trains the adapter) + grads
    slot_weights = 0 if s.slots == 1 else s.slots * lora * LORA_BYTES
    each = per_slot if s.slots > 1 else per_slot - LORA_BYTES
    out.append(Component(f"K={s.slots} slots: adapters, grads, AdamW", slot_weights + s.slots * lora * (
        per_slot - LORA_BYTES), "inner run", f"{s.slots} x {lora / 1e6:.1f}M x {each} B"))
    tokens = s.slots * s.inner_batch_size * s.inner_max_tokens
    compute_bytes = 2 if s.qlora else dtype  # a 4-bit copy computes in bf16
    per_token = activation_bytes_per_token(shape, s.inner_lora_r, len(s.inner_target_modules), compute_bytes,
                                           s.inner_gradient_checkpointing)
    gc = "on" if s.inner_gradient_checkpointing else "off"
    out.append(Component(f"inner activations ({tokens} tokens, checkpointing {gc})", tokens * per_token,
                         "inner run", f"{tokens} tokens x {per_token / 1e6:.2f} MB"))
    out.append(Component("inner logits (fp32)", logits_bytes(shape, tokens), "inner run",
                         f"{LOGIT_COPIES} x {tokens} x {shape.vocab_size} x 4 B"))
    return out


def policy_components(shape: ModelShape, s: PlanSettings) -> list[Component]:
    """The trained policy on one device: its weight shard, gradients and optimizer state, and the phases where
    ZeRO-3 gathers it whole (generation, the sync into the inner copy), the KV cache and the M-step activations."""
    dtype = DTYPE_BYTES[s.dtype]
    n, p = s.gpus, shape.num_parameters
    params_shard = n if s.zero == 3 else 1
    grads_shard = n if s.zero >= 2 else 1
    optim_shard = n if s.zero >= 1 else 1
    out = [Component(f"policy weights, {s.dtype}" + (f", ZeRO-3 shard 1/{n}" if params_shard > 1 else ""),
                     p * dtype / params_shard, "resident", f"{p / 1e9:.2f}B x {dtype} B / {params_shard}")]
    if s.policy_lora_r is None:
        trainable, grad_bytes, what = p, dtype, "full"
        master = 4 if dtype != 4 else 0  # an fp32 master copy under mixed precision
    else:
        trainable = shape.lora_parameters(s.policy_lora_r, s.policy_target_modules)
        grad_bytes, master, what = LORA_BYTES, 0, f"LoRA r={s.policy_lora_r}"
        out.append(Component("policy LoRA weights (fp32)", trainable * LORA_BYTES / params_shard, "resident",
                             f"{trainable / 1e6:.1f}M x 4 B / {params_shard}"))
    out.append(Component(f"policy gradients ({what})", trainable * grad_bytes / grads_shard, "resident",
                         f"{trainable / 1e6:.1f}M x {grad_bytes} B / {grads_shard}"))
    out.append(Component(f"policy AdamW moments{' + fp32 master' if master else ''} ({what})",
                         trainable * (ADAMW_STATE_BYTES + master) / optim_shard, "resident",
                         f"{trainable / 1e6:.1f}M x {ADAMW_STATE_BYTES + master} B / {optim_shard}"))
    if s.zero == 3 and n > 1:  # the M-step gathers one layer at a time: negligible here
        out.append(Component("ZeRO-3: the rest of the policy gathered whole", p * dtype * (n - 1) / n, "generation",
                             f"{p / 1e9:.2f}B x {dtype} B x {n - 1}/{n} (generation and each sync gather it whole)"))
    if not s.vllm:
        seq = s.prompt_tokens + s.completion_tokens
        out.append(Component(f"KV cache ({s.generation_batch} sequences x {seq} tokens)",
                             s.generation_batch * seq * shape.kv_bytes_per_token(dtype), "generation",
                             f"{s.generation_batch} x {seq} x {shape.kv_bytes_per_token(dtype) / 1e3:.0f} KB"))
    rows = s.train_batch * (s.prompt_tokens + s.completion_tokens)
    per_token = activation_bytes_per_token(shape, s.policy_lora_r or 0, len(s.policy_target_modules), dtype,
                                           s.policy_gradient_checkpointing)
    out.append(Component(f"M-step activations ({rows} tokens)", rows * per_token + logits_bytes(
        shape, s.train_batch * s.completion_tokens), "M-step", f"{rows} tokens x {per_token / 1e6:.2f} MB + logits"))
    if s.vllm:
        out.append(Component(f"vLLM (gpu_memory_utilization {s.vllm_gpu_memory_utilization})",
                             s.vllm_gpu_memory_utilization * s.device_memory_gib * GIB, "vllm",
                             f"{s.vllm_gpu_memory_utilization} x {s.device_memory_gib:g} GiB, reserved whole "
                             "(its weights and KV cache)"))
    return out


def plan_memory(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    """Every component on one device; `settings.inner_on_device=False` plans the inner loop alone (a CPU check)."""
    policy = policy_components(shape, settings) if settings.inner_on_device else []
    return MemoryPlan(policy + inner_components(shape, settings))
