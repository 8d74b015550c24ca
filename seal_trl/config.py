"""SEALConfig: GRPOConfig plus the algorithm choice, the ReST-EM keep rule and the inner-loop settings.

Every field is flat with `help` metadata, so `TrlParser` reads it from YAML and the command line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from .inner.config import DEFAULT_TARGET_MODULES, InnerLoopConfig, parse_batch_self_edits
from .plans import PlanBounds
from .reward_terms import GENERAL_METRICS
from .variants import VARIANTS


@dataclass
class SEALConfig(GRPOConfig):
    """Configuration for `SEALTrainer`.

    Differences from `GRPOConfig`'s defaults: `bf16` is on only where a CUDA GPU supports it (fp32 on CPU),
    `gradient_checkpointing` is off, `logging_steps=1`, `num_generations=4`, `max_completion_length=256`,
    `beta=0` and, for ReST-EM, `learning_rate=3e-4` (the paper's M-step).

    ReST-EM maps onto TRL's batching like this: one *round* is one generation batch
    (`generation_batch_size` = contexts per round x `num_generations`) and the M-step is `num_iterations`
    epochs over it.
    """

    algorithm: str = field(
        default="rest_em",
        metadata={"help": "RL variant: 'rest_em' (the paper's filtered SFT, default) or 'grpo'.",
                  "choices": sorted(VARIANTS)},
    )
    rest_em_top_k: int | None = field(
        default=1, metadata={"help": "ReST-EM keeps at most this many self-edits per context (None: no limit)."}
    )
    rest_em_margin: float | None = field(
        default=0.0,
        metadata={"help": "ReST-EM keeps only self-edits whose reward exceeds this (None: no threshold)."},
    )
    reward_repeats: int = field(
        default=1, metadata={"help": "Inner-loop runs per self-edit, averaged (the paper uses 3)."}
    )
    self_edit_style: str = field(
        default="implications",
        metadata={"help": "Knowledge self-edit prompt: implications, rewrite or self_qa (checked by the knowledge "
                          "task, `KnowledgeTask.from_config`)."},
    )
    inner_lora_r: int = field(default=32, metadata={"help": "Inner-loop LoRA rank."})
    inner_lora_alpha: int = field(default=64, metadata={"help": "Inner-loop LoRA alpha."})
    inner_lora_dropout: float = field(default=0.0, metadata={"help": "Inner-loop LoRA dropout."})
    inner_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Modules the inner LoRA adapts (explicit; no guessing)."},
    )
    inner_learning_rate: float = field(default=1e-3, metadata={"help": "Inner-loop learning rate."})
    inner_epochs: int = field(default=10, metadata={"help": "Inner-loop epochs over a self-edit's examples."})
    inner_batch_size: int = field(default=1, metadata={"help": "Inner-loop batch size."})
    inner_max_seq_length: int = field(default=1024, metadata={"help": "Longest inner training example (tokens)."})
    inner_step_budget: int = field(default=400, metadata={"help": "Plans needing more optimizer steps fail."})
    inner_max_examples: int = field(default=64, metadata={"help": "Plans with more examples fail."})
    inner_load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the inner model in 4-bit nf4 (QLoRA; needs bitsandbytes)."}
    )
    inner_grader: str = field(
        default="loglik",
        metadata={"help": "How the probe is scored: loglik, exact_match, f1, or judge (a local model's yes/no "
                          "verdict; set inner_judge_model).",
                  "choices": ["loglik", "exact_match", "f1", "judge"]},
    )
    inner_judge_model: str | None = field(
        default=None, metadata={"help": "With inner_grader=judge: the judge model's local path or Hub name."}
    )
    inner_result_store: bool = field(
        default=True,
        metadata={"help": "Keep every finished inner run in output_dir/inner_results/ (by content: policy version, "
                          "context, self-edit, settings, seed), so a killed run restarted with the same command "
                          "recomputes none of them."},
    )
    inner_max_exception_rate: float = field(
        default=0.5,
        metadata={"help": "A reward call whose inner runs fault (raise an exception or run out of memory) more often "
                          "than this (or all of them) stops training with the reason, the setting to change and the "
                          "first traceback: a setup fault, not bad self-edits."},
    )
    inner_min_uniform_failures: int = field(
        default=4,
        metadata={"help": "A reward call of at least this many self-edits in which every self-edit fails for the same "
                          "reason (all over the step budget, all too long, all unparseable...) stops training with "
                          "the setting to change. 0: never."},
    )
    inner_gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Gradient checkpointing in the inner loop's fine-tunes: less activation memory per "
                          "self-edit (longer examples, more slots), about a third more compute."},
    )
    inner_preflight: bool = field(
        default=True,
        metadata={"help": "Before the first generation, train the most expensive inner run the bounds allow "
                          "(inner_max_seq_length tokens per example, at K = inner_batch_self_edits) for a few steps "
                          "on the real model and device, log its peak memory and time, and refuse to start if it "
                          "does not fit."},
    )
    inner_preflight_max_memory_gb: float | None = field(
        default=None,
        metadata={"help": "With inner_preflight: refuse to start when the preflight's peak memory (GPU memory "
                          "allocated on CUDA, resident-memory growth on CPU) exceeds this many GB, e.g. to leave "
                          "room for vLLM. None: only an out-of-memory error refuses."},
    )
    inner_reward: str = field(
        default="gain", metadata={"help": "'gain' (after - before) or 'binary' (1 if improved).",
                                  "choices": ["gain", "binary"]}
    )
    reward_baseline: str = field(
        default="none",
        metadata={"help": "What a self-edit's adapted score is compared with: 'none' (the unadapted model, the "
                          "paper), 'passage' (the model fine-tuned on the passage alone) or 'passage-matched' (the "
                          "passage repeated to the self-edit's training tokens). Knowledge task only.",
                  "choices": ["none", "passage", "passage-matched"]},
    )
    reward_forgetting_weight: float = field(
        default=0.0,
        metadata={"help": "Subtract this times the forgetting of each self-edit's adapted model (its relative loss on "
                          "a held-out general set, reward_general_metric, measured after the same inner run; only a "
                          "rise is penalised) from its reward. 0 (default): not measured."},
    )
    reward_general_metric: str = field(
        default="perplexity",
        metadata={"help": "The forgetting measure: 'perplexity' (relative perplexity rise on the regression suite's "
                          "held-out text) or 'qa' (relative drop of its multiple-choice QA soft accuracy).",
                  "choices": list(GENERAL_METRICS)},
    )
    reward_constraint_weight: float = field(
        default=0.0,
        metadata={"help": "Subtract this per constraint the adapted model violates (reward_banned_phrases, or "
                          "callables passed to SEALTrainer(reward_constraints=...)) on its greedy answers to the "
                          "probe's and a few fixed prompts. 0 (default): not measured."},
    )
    reward_banned_phrases: list[str] = field(
        default_factory=list,
        metadata={"help": "Phrases (case-insensitive) the adapted model must not say: one constraint, with "
                          "reward_constraint_weight > 0."},
    )
    self_edit_max_copied: float | None = field(
        default=None,
        metadata={"help": "Training only: a self-edit more than this share of whose 6-word sequences are the "
                          "passage's own is failed ('copies_context') and not run, so ReST-EM never keeps it. Off "
                          "by default; e.g. 0.5. Knowledge task only."},
    )
    # typed str so that the command line accepts "auto"; __post_init__ turns digits into an int
    inner_batch_self_edits: str = field(
        default="1",
        metadata={"help": "Train this many self-edits at once in K LoRA slots over one base (1: one at a time), or "
                          "'auto': time a few steps at each K this device allows and keep the fastest. Same results "
                          "as one at a time, up to float rounding; faster when K > 1."},
    )
    inner_autocast: str = field(
        default="off",
        metadata={"help": "'bf16': inner-loop forward passes under bf16 autocast (weights stay in their dtype); for "
                          "CPUs with native bf16 (AVX512-BF16, AMX) or an fp32 inner model on a GPU.",
                  "choices": ["off", "bf16"]},
    )
    inner_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the inner loop's training forward (sequential engine; dynamic shapes). "
                          "The compile is paid once per process."},
    )
    inner_max_new_tokens: int = field(default=32, metadata={"help": "Answer length for generative graders."})

    # GRPOConfig defaults changed for SEAL
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on for CUDA GPUs that "
                                                              "support it, off (fp32) on CPU."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Gradient checkpointing for the policy."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    num_generations: int | None = field(default=4, metadata={"help": "Self-edits sampled per context."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Longest self-edit (tokens)."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Policy learning rate; default 3e-4 for rest_em (paper), 1e-6 for grpo."}
    )

    def __post_init__(self):
        if self.algorithm not in VARIANTS:
            raise ValueError(f"algorithm={self.algorithm!r} is not known; set algorithm to one of {sorted(VARIANTS)}")
        if self.learning_rate is None:
            self.learning_rate = 3e-4 if self.algorithm == "rest_em" else 1e-6
        if self.bf16 is None:
            import torch

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if self.algorithm == "rest_em":
            if self.rest_em_top_k is None and self.rest_em_margin is None:
                raise ValueError("rest_em needs rest_em_top_k and/or rest_em_margin; with neither it keeps everything")
            if self.rest_em_top_k is not None and self.rest_em_top_k < 1:
                raise ValueError(f"rest_em_top_k must be >= 1 (or None), got {self.rest_em_top_k}")
            if self.beta != 0.0:
                raise ValueError(f"beta={self.beta}: ReST-EM has no KL term; set beta=0.0 or algorithm='grpo'")
        elif self.scale_rewards == "batch":
            raise ValueError("SEAL's grpo variant normalises rewards per context group: set scale_rewards to "
                             "'group' or 'none'")
        if self.reward_baseline not in ("none", "passage", "passage-matched"):
            raise ValueError(f"reward_baseline={self.reward_baseline!r}; choose 'none', 'passage' or "
                             "'passage-matched'")
        if self.reward_baseline != "none" and self.inner_reward not in ("gain", "binary"):
            raise ValueError(f"reward_baseline={self.reward_baseline!r} needs inner_reward 'gain' or 'binary'")
        if self.self_edit_max_copied is not None and not 0.0 <= self.self_edit_max_copied < 1.0:
            raise ValueError(f"self_edit_max_copied={self.self_edit_max_copied}: use a share in [0, 1) (e.g. 0.5), "
                             "or leave it unset")
        self._check_reward_terms()
        self.inner_batch_self_edits = parse_batch_self_edits(self.inner_batch_self_edits, "inner_batch_self_edits")
        if self.reward_repeats < 1:
            raise ValueError(f"reward_repeats must be >= 1, got {self.reward_repeats}")
        for name in ("inner_epochs", "inner_batch_size", "inner_step_budget", "inner_max_examples",
                     "inner_max_new_tokens", "max_completion_length", "per_device_train_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("inner_learning_rate", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.inner_grader == "judge" and not self.inner_judge_model:
            raise ValueError("inner_grader='judge' needs inner_judge_model (a local path or Hub name of the judge)")
        if self.inner_judge_model and self.inner_grader != "judge":
            raise ValueError(f"inner_judge_model is set but inner_grader={self.inner_grader!r} does not use a judge: "
                             "set inner_grader: judge, or remove inner_judge_model")
        if not 0.0 <= self.inner_max_exception_rate <= 1.0:
            raise ValueError(f"inner_max_exception_rate must be in [0, 1], got {self.inner_max_exception_rate}")
        if isinstance(self.inner_min_uniform_failures, bool) or not isinstance(self.inner_min_uniform_failures, int) \
                or self.inner_min_uniform_failures < 0:
            raise ValueError(f"inner_min_uniform_failures must be an integer >= 0 (0: off), got "
                             f"{self.inner_min_uniform_failures!r}")
        limit = self.inner_preflight_max_memory_gb
        if limit is not None and not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
            raise ValueError(f"inner_preflight_max_memory_gb must be a number of GB > 0, or unset, got {limit!r}")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported by "
                             "SEAL's variants, which weight the summed rewards; use 'sum_then_normalize'")
        check_not_fsdp(bool(self.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1"))
        if isinstance(self.inner_target_modules, str):  # `inner_target_modules: q_proj` in a recipe: one name
            self.inner_target_modules = [self.inner_target_modules]
        super().__post_init__()
        # Builds (and so validates) the inner-loop settings now, not at the first training step, naming each
        # setting as the recipe and the command line spell it.
        try:
            self.inner_loop_config()
        except ValueError as err:
            message = str(err)
            for inner_name, name in _INNER_FIELD_NAMES.items():
                message = message.replace(f"InnerLoopConfig.{inner_name} ", f"{name} ")
            raise ValueError(message) from None

    def _check_reward_terms(self) -> None:
        for name in ("reward_forgetting_weight", "reward_constraint_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0: term off), got {value!r}")
        if self.reward_general_metric not in GENERAL_METRICS:
            raise ValueError(f"reward_general_metric={self.reward_general_metric!r}; choose one of {GENERAL_METRICS}")
        if isinstance(self.reward_banned_phrases, str):  # `reward_banned_phrases: as an AI` in a recipe: one phrase
            self.reward_banned_phrases = [self.reward_banned_phrases]
        phrases = self.reward_banned_phrases
        if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ValueError(f"reward_banned_phrases must be a list of non-blank phrases, got {phrases!r}")
        if phrases and self.reward_constraint_weight == 0:
            raise ValueError("reward_banned_phrases is set but reward_constraint_weight is 0, so the phrases would "
                             "change nothing: set reward_constraint_weight > 0, or remove reward_banned_phrases")

    def check_round_fits(self, n_contexts: int) -> None:
        """ReST-EM: one round (one generation batch over all processes) must be a whole share of the training
        contexts. Checked at start because the round grows with the number of processes."""
        if self.algorithm == "rest_em":
            message = round_fit_error(n_contexts, self.per_device_train_batch_size, self.world_size,
                                      self.steps_per_generation, self.num_generations)
            if message:
                raise ValueError(message)

    def inner_loop_config(self) -> InnerLoopConfig:
        return InnerLoopConfig(
            lora_r=self.inner_lora_r,
            lora_alpha=self.inner_lora_alpha,
            lora_dropout=self.inner_lora_dropout,
            target_modules=tuple(self.inner_target_modules),
            learning_rate=self.inner_learning_rate,
            num_epochs=self.inner_epochs,
            batch_size=self.inner_batch_size,
            max_seq_length=self.inner_max_seq_length,
            load_in_4bit=self.inner_load_in_4bit,
            grader=self.inner_grader,
            max_new_tokens=self.inner_max_new_tokens,
            reward=self.inner_reward,
            seed=self.seed,
            batch_self_edits=self.inner_batch_self_edits,
            autocast=self.inner_autocast,
            compile=self.inner_compile,
            gradient_checkpointing=self.inner_gradient_checkpointing,
            bounds=PlanBounds(step_budget=self.inner_step_budget, max_examples=self.inner_max_examples,
                              max_example_tokens=self.inner_max_seq_length),
        )


def round_fit_error(n_contexts: int, per_device: int, world_size: int, steps: int, num_generations: int) -> str | None:
    """Why a ReST-EM round of `per_device x world_size x steps` self-edits (`num_generations` per context) does not
    divide `n_contexts` contexts, with a setting that would; None when it does. TRL drops an incomplete round, so a
    round larger than the data trains nothing and a remainder is never trained on."""
    def contexts_per_round(batch: int, steps_: int) -> int | None:
        total = batch * world_size * steps_
        return total // num_generations if total % num_generations == 0 else None

    def fits(batch: int, steps_: int) -> bool:
        size = contexts_per_round(batch, steps_)
        return size is not None and n_contexts % size == 0

    size = contexts_per_round(per_device, steps)
    if size is not None and n_contexts % size == 0:
        return None
    fixes = []
    fitting_steps = next((s for s in range(steps, 0, -1) if fits(per_device, s)), None)
    fitting_batch = next((b for b in range(per_device, 0, -1) if fits(b, steps)), None)
    if fitting_steps is not None:
        fixes.append(f"steps_per_generation={fitting_steps}")
    elif fitting_batch is not None:
        fixes.append(f"per_device_train_batch_size={fitting_batch}")
    if size is not None:
        fixes.append(f"max_train_contexts to a multiple of {size}")
    if not fixes:
        fixes.append("per_device_train_batch_size x steps_per_generation to a multiple of num_generations, and "
                     "max_train_contexts to a multiple of the round")
    round_text = f"{size} contexts" if size is not None else f"not a multiple of num_generations={num_generations}"
    return (f"a ReST-EM round is per_device_train_batch_size={per_device} x {world_size} process(es) x "
            f"steps_per_generation={steps} = {per_device * world_size * steps} self-edits ({round_text}), which does "
            f"not divide the {n_contexts} training contexts; set {' or '.join(fixes)}")


def check_not_fsdp(enabled: bool) -> None:
    """Refuse FSDP (`enabled`: the config or the accelerator uses it) with what to use instead."""
    if enabled:
        raise ValueError("FSDP is not supported: the inner loop needs the policy's whole weights at each sync, "
                         "and FSDP would hand it shards. Use DeepSpeed ZeRO-3 (accelerate_configs/zero3.yaml) "
                         "or plain DDP (accelerate_configs/multi_gpu.yaml)")


# InnerLoopConfig's fields as SEALConfig (the recipes, the command line) names them.
_INNER_FIELD_NAMES = {"lora_r": "inner_lora_r", "lora_alpha": "inner_lora_alpha", "lora_dropout": "inner_lora_dropout",
                      "target_modules": "inner_target_modules", "learning_rate": "inner_learning_rate",
                      "num_epochs": "inner_epochs", "batch_size": "inner_batch_size",
                      "max_seq_length": "inner_max_seq_length", "grader": "inner_grader", "reward": "inner_reward",
                      "autocast": "inner_autocast"}
