"""The inner loop: fine-tune a fresh LoRA adapter on a plan, score the probe, report the gain.

One inner model lives for the whole life of an `InnerLoop`. Before every run its adapter is reset in
place (A from a seeded Kaiming init, B zero, a fresh optimizer), so runs are independent and
reproducible, and the base weights never change. The training loop is a plain PyTorch loop: dynamic
padding, labels -100 on padding (and on prompts when the plan says so), no Trainer, no Accelerator,
no files. A failing self-edit ends its own run with reward 0 and a reason; the engine carries on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import traceback
import weakref
from contextlib import AbstractContextManager, contextmanager, nullcontext
from collections.abc import Callable, Sequence

import torch

from ..plans import SelfEditError, TrainingPlan
from ..models import keep_4bit_trainable
from ..probes import Probe
from . import sync
from .auto_slots import SlotChoice, choose_slots, slot_candidates
from .batched import BatchedTrainer, run_batched
from .config import InnerLoopConfig
from .graders import Grader, make_grader
from .jobs import INNER_ADAPTER, InnerJob, InnerResult, Measure, checked_measures
from .store import sampled_fingerprint, tensors_fingerprint
from .steps import learning_rate_at, lora_a_inits, plan_batches
from .tensors import EncodedExample, encode_example, labelled_logits, labelled_nll, pad_right

logger = logging.getLogger(__name__)

class InnerLoop:
    """Executes self-edits as real LoRA fine-tunes of one in-memory inner model.

    Build it from a model you hand over (`InnerLoop(model, tokenizer, config)`) or by name/path
    (`InnerLoop.from_pretrained(...)`). Call `sync_from(policy)` whenever the policy changes.
    """

    def __init__(self, model, tokenizer, config: InnerLoopConfig | None = None, *, grader: Grader | None = None,
                 judge=None):
        from peft import LoraConfig, get_peft_model

        self.config = config or InnerLoopConfig()
        if sync.is_peft_model(model):
            raise ValueError(
                "InnerLoop needs the plain base model, not a PEFT model: build it from the base "
                "weights and call sync_from(policy) to mirror a LoRA policy"
            )
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.tokenizer = tokenizer
        self.grader = grader or make_grader(self.config.grader, max_new_tokens=self.config.max_new_tokens,
                                            judge=judge)
        for p in model.parameters():
            p.requires_grad_(False)
        keep_4bit_trainable(model)
        lora = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            self.model = get_peft_model(model, lora, adapter_name=INNER_ADAPTER)
        except ValueError as err:
            raise ValueError(f"InnerLoopConfig.target_modules={self.config.target_modules}: {err}") from None
        if self.config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.model.eval()
        self.device = next(model.parameters()).device
        if self.config.autocast == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("InnerLoopConfig.autocast='bf16' on a CPU without native bf16 (AVX512-BF16 or AMX): "
                           "the bf16 matmuls are emulated and likely slower than fp32; set autocast='off'")
        self._score_cache: dict[tuple, float] = {}  # (grader, context id, probe items)
        self._batched = None  # BatchedTrainer, built on first use of run_many with batch_self_edits > 1
        self.slot_choice: SlotChoice | None = None  # what batch_self_edits="auto" measured and chose
        self._synced_policy = None  # weakref to the LoRA policy whose base weights are already copied
        self._policy_version: str | None = None
        self._syncs = 0
        self._lora_base_copies = 0
        self._base_update = "as built"  # which update put the base weights there (see `policy_version`)
        self._base_digest: str | None = None
        self._compiled = None  # the compiled training forward (config.compile), built on first use
        self._activate_adapters()

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, config: InnerLoopConfig | None = None,
                        **kwargs) -> InnerLoop:
        """Load the inner model by Hub name or local path (None: the embedded SmolLM2-135M-Instruct)."""
        from ..models import load_model_and_tokenizer

        config = config or InnerLoopConfig()
        model, tokenizer = load_model_and_tokenizer(name_or_path, load_in_4bit=config.load_in_4bit)
        return cls(model, tokenizer, config, **kwargs)

    def _training_forward(self):
        """The module training steps call: the model, or (with `config.compile`) its compiled twin."""
        if not self.config.compile:
            return self.model
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=True)
        return self._compiled

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast for forward passes when `config.autocast == "bf16"`; otherwise nothing."""
        if self.config.autocast == "off":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # ----- adapters -------------------------------------------------------------------------
    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [m for m in self.model.modules() if isinstance(m, LoraLayer) and INNER_ADAPTER in m.lora_A]

    def _activate_adapters(self) -> None:
        names = [INNER_ADAPTER]
        if sync.POLICY_ADAPTER in self.model.peft_config:
            # last: PEFT casts a layer's input to each active adapter's dtype in turn and keeps the cast, so a bf16
            # policy adapter (a QLoRA policy's) run first would hand the inner adapter bf16-rounded inputs
            names.append(sync.POLICY_ADAPTER)
        self.model.base_model.set_adapter(names)
        for name, p in self.model.named_parameters():
            p.requires_grad_(f".{INNER_ADAPTER}." in name and "lora_" in name)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._layers = self._lora_layers()

    @torch.no_grad()
    def reset_adapter(self, seed: int) -> None:
        """A from a seeded Kaiming-uniform init (as PEFT does), B zero: the adapter is the identity."""
        shapes = [layer.lora_A[INNER_ADAPTER].weight.shape for layer in self._layers]
        for layer, fresh in zip(self._layers, lora_a_inits(shapes, seed)):
            layer.lora_A[INNER_ADAPTER].weight.copy_(fresh)
            layer.lora_B[INNER_ADAPTER].weight.zero_()
        for p in self._trainable:
            p.grad = None

    @torch.no_grad()
    def _neutralise_adapter(self) -> None:
        # A too: after a run that diverged, A can hold NaN, and B = 0 alone would still give 0 * NaN = NaN
        for layer in self._layers:
            layer.lora_A[INNER_ADAPTER].weight.zero_()
            layer.lora_B[INNER_ADAPTER].weight.zero_()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the inner adapter as trained by the last run (valid until the next score/run)."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model, adapter_name=INNER_ADAPTER).items()}

    # ----- policy sync ----------------------------------------------------------------------
    def sync_from(self, policy, *, step: int | None = None) -> None:
        """Make the inner model compute what the current policy computes.

        `policy`: a PEFT LoRA model (base copied once, adapter tensors every call), a full model, or a
        full state dict (e.g. gathered under ZeRO-3). Clears the cached before-scores. `step`: the number of
        optimizer updates the policy has had (SEALTrainer passes its global step), so a resumed run gives a full
        policy the same version as the run it resumes (see `policy_version`); None counts the syncs instead.
        """
        self._syncs += 1
        full_update = f"step {step}" if step is not None else f"sync {self._syncs}"
        if isinstance(policy, dict):
            sync.copy_full_weights(self.model, policy)
            self._base_changed(full_update)
        else:
            policy = sync.unwrap(policy)
            if sync.is_peft_model(policy):
                known = self._synced_policy is not None and self._synced_policy() is policy
                sync.copy_lora_policy(self.model, policy, copy_base=not known)
                if not known:  # a LoRA policy's base is frozen: counted per copy, not per optimizer step
                    self._lora_base_copies += 1
                    self._base_changed(f"LoRA base copy {self._lora_base_copies}")
                self._synced_policy = weakref.ref(policy)
                self._activate_adapters()
            else:
                sync.copy_full_weights(self.model, policy.state_dict())
                self._base_changed(full_update)
        self._score_cache.clear()
        self._policy_version = None

    def _base_changed(self, update: str) -> None:
        self._base_update, self._base_digest = update, None

    # ----- scoring ----------------------------------------------------------------------------
    def score(self, probe: Probe, *, context_id: str | None = None) -> float:
        """The current policy's score on `probe` (no inner adaptation), cached per context id."""
        context_id = context_id or probe.context_id
        key = None if context_id is None else (self.grader.name, context_id, probe.items)
        if key is not None and key in self._score_cache:
            return self._score_cache[key]
        self._neutralise_adapter()
        value = self._score_now(probe)
        if key is not None:
            self._score_cache[key] = value
        return value

    def measure_unadapted(self, measure: Measure, probe: Probe | None = None) -> dict[str, float]:
        """`measure` of the current policy weights without inner adaptation (the inner adapter at identity)."""
        self._neutralise_adapter()
        return self._measure_now(measure, probe)

    def _measure_now(self, measure: Measure, probe: Probe | None) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            return checked_measures(measure(self.model, self.tokenizer, probe))

    def _score_now(self, probe: Probe) -> float:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            value = float(self.grader.score(self.model, self.tokenizer, probe))
        if not math.isfinite(value):
            raise SelfEditError("nan_loss", f"the probe score is {value}", field="score_after")
        return value

    # ----- one self-edit ------------------------------------------------------------------------
    def run(self, plan: TrainingPlan, probe: Probe, *, context_id: str | None = None, seed: int | None = None,
            measure: Measure | None = None) -> InnerResult:
        """Fine-tune a fresh adapter on `plan`, score `probe`, return the gain. Never raises for a bad plan.
        `measure`: also measure the adapted model, after the probe and before anything resets the adapter
        (`InnerResult.measures`)."""
        start = time.perf_counter()
        seed = self.config.seed if seed is None else seed
        before = self.score(probe, context_id=context_id)
        result = InnerResult(score_before=before, score_after=None, reward=0.0, seed=seed)
        try:
            encoded = self._encode(plan)
            self.reset_adapter(seed)
            with _seeded(seed, self.device):
                t0 = time.perf_counter()
                self._train(plan, encoded, seed, result)
                result.train_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            result.score_after = self._score_now(probe)
            result.score_seconds = time.perf_counter() - t0
            if measure is not None:
                t0 = time.perf_counter()
                result.measures = self._measure_now(measure, probe)
                result.measure_seconds = time.perf_counter() - t0
            result.reward = self.reward_from(before, result.score_after)
        except SelfEditError as err:
            result.error, result.error_message = err.reason, str(err)
        except torch.OutOfMemoryError as err:
            result.error, result.error_message = "out_of_memory", str(err).splitlines()[0]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as err:  # a self-edit must never take the trainer down
            logger.exception("inner run failed (context %s, seed %s)", context_id or probe.context_id, seed)
            result.error, result.error_message = "exception", f"{type(err).__name__}: {err}"
            result.traceback = traceback.format_exc()
        finally:
            self.model.eval()
            for p in self._trainable:
                p.grad = None
        if result.error is not None:
            result.score_after, result.reward = None, 0.0
            logger.info("self-edit scored 0: %s", result.error_message)
        result.seconds = time.perf_counter() - start
        return result

    def run_many(self, jobs: Sequence[InnerJob], *, on_result: Callable[[int, InnerResult], None] | None = None
                 ) -> list[InnerResult]:
        """Run several self-edits; with `config.batch_self_edits = K > 1`, K at a time in one batched pass.

        Results come back in the order of `jobs` and equal those of `run` on each job (same seeds) up to
        float rounding, a job's `measure` included (K slots: measured through its own slot). `on_result(index, result)` is called as each run finishes (to persist it, or to count).
        """
        slots = min(self.batch_slots(jobs), len(jobs))  # no slot is allocated for a job that is not there
        if slots <= 1:
            results = []
            for i, job in enumerate(jobs):
                results.append(self.run(job.plan, job.probe, context_id=job.context_id, seed=job.seed,
                                        measure=job.measure))
                if on_result is not None:
                    on_result(i, results[-1])
            return results
        return run_batched(self, jobs, slots, on_result=on_result)

    def batch_slots(self, jobs: Sequence[InnerJob] = ()) -> int:
        """K for `run_many`: `config.batch_self_edits`, or with "auto" the K measured on the first `jobs` it is
        given (more than one job, at least one that can train); 1 until then."""
        setting = self.config.batch_self_edits
        if setting != "auto":
            return setting
        if self.slot_choice is None and len(jobs) > 1:
            self.slot_choice = choose_slots(self, jobs)
            if self.slot_choice is not None:
                logger.info(self.slot_choice.describe())
        return 1 if self.slot_choice is None else self.slot_choice.slots

    @property
    def max_batch_slots(self) -> int:
        """The largest K `run_many` may use: the set K, or with "auto" the largest this device type tries."""
        setting = self.config.batch_self_edits
        return max(slot_candidates(self.device)) if setting == "auto" else setting

    @property
    def policy_version(self) -> str:
        """A version of the weights the inner model computes with before training (base and synced policy
        adapter, not the trained inner adapter): what a run's result depends on besides its job, so the store's
        key. Computed on first use after each sync, at a cost that does not grow with the base model:

        - the policy adapter (a LoRA policy) is hashed whole (`tensors_fingerprint`): its cost grows with the
          adapter;
        - the base weights get a digest of sampled elements (`sampled_fingerprint`, once per base copy) plus
          the update that put them there: the optimizer step a full policy was synced at (`sync_from(step=)`, else
          the sync's number in this process), or the how-manieth copy of a LoRA policy's frozen base. An update the
          sample misses still changes the version; a resumed run syncs the same weights at the same step, so its
          versions (and store keys) match the killed run's.
        """
        if self._policy_version is None:
            state = self.model.state_dict()
            adapter = {k: v for k, v in state.items() if f".{sync.POLICY_ADAPTER}." in k}
            if self._base_digest is None:
                self._base_digest = sampled_fingerprint(
                    {k: v for k, v in state.items() if f".{INNER_ADAPTER}." not in k and k not in adapter})
            parts = (self._base_update, self._base_digest, tensors_fingerprint(adapter))
            self._policy_version = hashlib.sha256("|".join(parts).encode()).hexdigest()
        return self._policy_version

    def _batched_trainer(self, num_slots: int):
        if self._batched is None or self._batched.num_slots != num_slots:
            self._batched = None  # free the old slot buffers first
            self._batched = BatchedTrainer(self, num_slots)
        return self._batched

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A term added to every training step's loss (not to the logged loss); none here. Subclasses use it for
        regularisers that need a forward pass of their own, e.g. the continual learner's KL anchor."""
        return None

    def reward_from(self, before: float, after: float) -> float:
        """The reward of a score `after` against a reference score `before`, as `config.reward` defines it."""
        if self.config.reward == "success":
            return after
        if self.config.reward == "binary":
            return 1.0 if after > before else 0.0
        return after - before

    def _encode(self, plan: TrainingPlan) -> list[EncodedExample]:
        bounds = self.config.bounds
        bounds.check(plan)
        encoded = [
            encode_example(
                self.tokenizer, ex.prompt, ex.completion, loss_on_prompt=plan.loss_on == "all", add_eos=ex.is_pair
            )
            for ex in plan.examples
        ]
        counts = [len(e.input_ids) for e in encoded]
        limit = self.config.example_token_limit
        for i, n in enumerate(counts):
            if n > limit:
                raise SelfEditError(
                    "too_long", f"{n} tokens; at most {limit} per example (max_seq_length)", field=f"examples[{i}]"
                )
        bounds.check_token_counts(counts)
        if not any(label != -100 for e in encoded for label in e.labels[1:]):
            raise SelfEditError("empty", "no token of the plan carries loss", field="examples")
        return encoded

    def _train(self, plan: TrainingPlan, encoded: list[EncodedExample], seed: int, result: InnerResult) -> None:
        # fused: one kernel over all LoRA tensors (hundreds of small ones), on CPU as on GPU
        optimizer = torch.optim.AdamW(self._trainable, lr=plan.learning_rate, weight_decay=0.0, fused=True)
        self.model.train()
        step = 0
        forward = self._training_forward()
        for examples in plan_batches(encoded, plan, seed):
            batch = pad_right(examples, self.pad_token_id, self.device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(plan, step, self.config.lr_schedule)
            with self.autocast():
                logits = labelled_logits(forward, batch["labels"], input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"])
            loss = labelled_nll(logits, batch["labels"])
            value = loss.item()
            if not math.isfinite(value):
                raise SelfEditError("nan_loss", f"training loss became {value} at step {step}", field="learning_rate")
            auxiliary = self.auxiliary_loss()
            if auxiliary is not None:
                loss = loss + auxiliary
            loss.backward()
            if self.config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self._trainable, self.config.max_grad_norm, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(value)
            result.tokens_trained += int(batch["attention_mask"].sum())
            step += 1
        result.steps = step
        self.model.eval()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX), as torch detects it."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's global RNG (dropout) for the duration, restoring the caller's RNG state after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2**63))
        yield
