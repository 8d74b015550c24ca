"""SEALTrainer: TRL's GRPOTrainer whose reward is the nested fine-tune-and-evaluate of each self-edit.

What it adds to GRPOTrainer, and nothing more:
- builds one `InnerLoop` per process and syncs the current policy into it at every generation boundary
  (LoRA policies: adapter tensors; full policies: the state dict, gathered by all ranks under ZeRO-3);
- plugs `SelfEditReward` in as the first reward function (your own `reward_funcs` may follow);
- replaces the advantages with the chosen variant's weights (`grpo`: group-normalised advantages;
  `rest_em`: a keep mask) and, for `rest_em`, the loss with a masked NLL on the kept self-edits;
- logs keep fraction, gains and inner-loop timings; tags the model card `seal` and cites the paper.
"""

from __future__ import annotations

import logging
import os
import textwrap
from contextlib import contextmanager

import torch
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import add_fused_lm_head

from .config import SEALConfig, check_not_fsdp
from .inner import sync
from .inner.engine import InnerLoop
from .inner.preflight import PreflightFailure, run_preflight
from .inner.store import ResultStore
from .models import keep_4bit_trainable, load_model_and_tokenizer, quantization_config_4bit, resolve_dtype
from .reward import SelfEditReward
from .reward_terms import RewardTerms
from .tasks.knowledge import KnowledgeTask
from .variants import get_variant, rank_failures_last, rest_em_loss

logger = logging.getLogger(__name__)

SEAL_CITATION = textwrap.dedent("""\
    @misc{zweiger2025selfadaptinglanguagemodels,
        title        = {{Self-Adapting Language Models}},
        author       = {Adam Zweiger and Jyothish Pari and Han Guo and Ekin Aky{\\"u}rek and Yoon Kim and Pulkit Agrawal},
        year         = 2025,
        eprint       = {arXiv:2506.10943},
    }""")


# TRL's and transformers' private (or undocumented) members that SEALTrainer overrides, calls or reads: for a
# function, the parameters it relies on, in order; None for an attribute. tests/test_trl_internals.py checks each
# against the installed TRL and transformers (and that this list misses none): a release that changes one fails
# there, by name.
TRL_INTERNALS: dict[str, tuple[str, ...] | None] = {
    # overridden (TRL calls them on SEALTrainer)
    "_get_train_sampler": ("dataset",),
    "_save_checkpoint": ("model", "trial"),
    "_load_rng_state": ("checkpoint",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("inputs",),
    "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep",
                                           "compute_entropy"),
    "_compute_loss": ("model", "inputs"),
    # called
    "_get_output_dir": ("trial",),
    # read or written
    "_step": None, "_buffered_inputs": None, "_metrics": None, "_logs": None,
    "_tag_names": None, "_name": None, "_paper": None,
    "temperature": None, "use_vllm": None, "vllm_importance_sampling_correction": None, "num_generations": None,
    "num_generations_eval": None, "reward_weights": None, "scale_rewards": None, "model_wrapped": None,
    "is_fsdp_enabled": None, "current_gradient_accumulation_steps": None,
    # module members (dotted)
    "trl.trainer.utils.add_fused_lm_head": ("model", "temperature", "cast_lm_head_to_fp32", "outputs"),
    "transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref": None,
}


@contextmanager
def _unsharded_loading(deepspeed_config_holder):
    """Load the inner model whole: under ZeRO-3, transformers would otherwise partition it like the policy
    (`from_pretrained` enters `deepspeed.zero.Init` while `is_deepspeed_zero3_enabled()`).

    Each rank needs its own complete inner model (the per-rank inner loops run independently). transformers' public
    `unset_hf_deepspeed_config` / `set_hf_deepspeed_config` switch ZeRO-3 off for the block and back on after, with
    `deepspeed_config_holder`, the live `HfDeepSpeedConfig` (accelerate's `deepspeed_plugin.dschf`, or
    `args.hf_deepspeed_config`). accelerate's `zero3_init_context_manager(enable=False)` is no substitute: it
    re-creates the same ZeRO-3 config, so `is_deepspeed_zero3_enabled()` stays true.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    if deepspeed_config_holder is None:
        raise RuntimeError("DeepSpeed ZeRO-3 is enabled but its HfDeepSpeedConfig was not found on the accelerator "
                           "or the training arguments: cannot load the inner model unsharded")
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(deepspeed_config_holder)


class SEALTrainer(GRPOTrainer):
    """Trains a policy to write self-edits whose LoRA fine-tunes raise its own probe scores (SEAL).

    Args:
        model: a model id/path or a loaded causal LM (the policy; LoRA via `peft_config`).
        args: a `SEALConfig`.
        train_dataset: rows with a `prompt` column and the task's context columns; build it with
            `task.build_dataset(contexts, tokenizer)`.
        task: the SEAL task (default: `KnowledgeTask.from_config(args)`).
        reward_funcs: extra TRL reward functions added after the self-edit reward (e.g. a format reward).
        inner_loop: an `InnerLoop` to use instead of building one from the policy's weights.
        reward_constraints: callables the adapted model's answers must pass (as the continual gate's constraints),
            each violation costing `reward_constraint_weight` (see `RewardTerms`).
    """

    _tag_names = ["trl", "seal", "self-adapting", "self-edit"]
    _name = "SEAL"
    _paper = {"title": "Self-Adapting Language Models", "id": "2506.10943", "citation": SEAL_CITATION}

    def __init__(self, model, args: SEALConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, task=None, reward_funcs=None, inner_loop: InnerLoop | None = None,
                 peft_config=None, callbacks=None, optimizers=(None, None), reward_constraints=(), **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SEALConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-SEAL")
        if not isinstance(args, SEALConfig):
            raise TypeError(f"args must be a SEALConfig, got {type(args).__name__}; SEALConfig accepts every "
                            "GRPOConfig field")
        self.task = task or KnowledgeTask.from_config(args)
        check_config = getattr(self.task, "check_config", None)  # a task checks the settings it depends on
        if check_config is not None:
            check_config(args)
        if train_dataset is not None and hasattr(train_dataset, "__len__"):
            args.check_round_fits(len(train_dataset))
        self.variant = get_variant(args.algorithm)
        self.seal_reward = SelfEditReward(self.task, inner_loop, repeats=args.reward_repeats, seed=args.seed,
                                          max_exception_rate=args.inner_max_exception_rate,
                                          min_uniform_failures=args.inner_min_uniform_failures,
                                          baseline=args.reward_baseline, max_copied=args.self_edit_max_copied,
                                          terms=reward_terms(args, reward_constraints))
        if reward_funcs is None:
            extra = []
        elif callable(reward_funcs) or isinstance(reward_funcs, str):
            extra = [reward_funcs]
        else:
            extra = list(reward_funcs)
        self._tag_names = [*type(self)._tag_names, args.algorithm.replace("_", "-")]
        super().__init__(model=model, reward_funcs=[self.seal_reward, *extra], args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         callbacks=callbacks, optimizers=optimizers, peft_config=peft_config, **kwargs)
        check_not_fsdp(self.is_fsdp_enabled)
        self._prepare_rest_em_loss()
        keep_4bit_trainable(self.model)  # a QLoRA policy is sampled (eval, no grad) and then trained
        if args.inner_result_store and self.seal_reward.store is None:
            self.seal_reward.store = ResultStore(os.path.join(
                args.output_dir, "inner_results", f"rank-{self.accelerator.process_index}.jsonl"))
        if self.seal_reward.inner_loop is None:
            self.seal_reward.inner_loop = self._build_inner_loop()
        self.inner_loop = self.seal_reward.inner_loop
        self._gathered_rewards: torch.Tensor | None = None
        self._generating = False
        self._preflight_done = not args.inner_preflight
        self.preflight_report = None  # the inner-loop preflight's PreflightReport, once it ran

    def _prepare_rest_em_loss(self) -> None:
        """ReST-EM's M-step is the NLL of the kept self-edits themselves (temperature 1), whatever temperature
        sampled them. TRL fixes its temperature into the fused LM head it adds to the policy when the trainer is
        built, and every log-prob TRL computes goes through that head; under ReST-EM the M-step is the only reader
        left (no KL: beta=0; no importance ratio: see below), so the head is added again at temperature 1.
        """
        if self.variant.uses_grpo_loss:
            return
        if self.use_vllm and self.vllm_importance_sampling_correction:
            # vLLM's importance ratio only reweights TRL's GRPO loss, which ReST-EM replaces: computing it would
            # cost a forward pass per generation (and need log-probs at the sampling temperature).
            logger.info("algorithm='rest_em': vllm_importance_sampling_correction has no effect on its loss; off")
            self.vllm_importance_sampling_correction = False
        if self.temperature != 1.0:
            policy = self.model.get_base_model() if sync.is_peft_model(self.model) else self.model
            add_fused_lm_head(policy, temperature=1.0, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
                              outputs=("log_probs", "entropy"))

    # ----- the inner loop --------------------------------------------------------------------
    def _build_inner_loop(self) -> InnerLoop:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        holder = getattr(plugin, "dschf", None) or getattr(self.args, "hf_deepspeed_config", None)
        with _unsharded_loading(holder):
            return self._load_inner_loop()

    def _inner_model_kwargs(self, dtype: torch.dtype) -> dict:
        """`from_pretrained` keyword arguments for the inner model: the policy's (`model_init_kwargs`,
        `trust_remote_code`: revision, attn_implementation, dtype, ...), except its device placement and
        quantisation, which are the inner loop's own (its device; `inner_load_in_4bit`). Without a dtype there, the
        mixed-precision dtype (bf16/fp16/fp32)."""
        kwargs = {k: v for k, v in (self.args.model_init_kwargs or {}).items()
                  if k not in ("device_map", "quantization_config")}
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        kwargs.setdefault("dtype", dtype)
        return kwargs

    def _load_inner_loop(self) -> InnerLoop:
        from transformers import AutoModelForCausalLM
        from trl.trainer.utils import create_model_from_path

        config = self.args.inner_loop_config()
        policy = sync.unwrap(self.model)
        plain = policy.get_base_model() if sync.is_peft_model(policy) else policy
        path = getattr(plain.config, "_name_or_path", None)
        dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else torch.float32)
        kwargs = self._inner_model_kwargs(dtype)
        if path:
            # Its own copy of the weights the policy came from, loaded as TRL loaded the policy (never a deepcopy:
            # trainers patch methods on the policy instance that a copy would share); sync_from then makes it current.
            if config.load_in_4bit:
                compute = resolve_dtype(kwargs["dtype"])
                kwargs["quantization_config"] = quantization_config_4bit(None if compute == "auto" else compute)
            inner_model = create_model_from_path(path, device_map=None, **kwargs)
            if config.load_in_4bit:
                keep_4bit_trainable(inner_model)
        elif config.load_in_4bit:
            raise ValueError("inner_load_in_4bit=True needs a policy loaded from a path or Hub name (its config "
                             "has no _name_or_path); pass the model by name, or set inner_load_in_4bit=False")
        else:
            inner_model = AutoModelForCausalLM.from_config(plain.config, dtype=dtype,
                                                           trust_remote_code=kwargs["trust_remote_code"])
        if not config.load_in_4bit:
            inner_model.to(self.accelerator.device)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        judge = None
        if config.grader == "judge":
            judge_model, judge_tokenizer = load_model_and_tokenizer(self.args.inner_judge_model, dtype=dtype)
            judge = (judge_model.to(self.accelerator.device).eval(), judge_tokenizer)
        return InnerLoop(inner_model, tokenizer, config, judge=judge)

    def _sync_inner_loop(self) -> None:
        # Every rank enters together (all generate at the same boundary), so the ZeRO-3 gather is collective.
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=True) as unwrapped:
            self.inner_loop.sync_from(unwrapped, step=self.state.global_step)

    def _preflight(self) -> None:
        """Once, before the first generation: the most expensive inner run the bounds allow (`inner/preflight.py`),
        on every rank; if it does not fit on any rank, no rank starts."""
        # the batch size every plan of the built-in tasks trains with (their self-edits do not choose it)
        batch = self.seal_reward.default_hyperparameters()["batch_size"]
        limit = self.args.inner_preflight_max_memory_gb
        report = run_preflight(self.inner_loop, batch_size=batch,
                               max_memory_bytes=None if limit is None else int(limit * 2**30))
        logger.info(report.describe())
        self.preflight_report = report
        fits = self.accelerator.gather(torch.tensor([int(report.fits)], device=self.accelerator.device))
        if not report.fits:
            raise PreflightFailure(f"training did not start: {report.describe()}")
        if not bool(fits.all()):
            raise PreflightFailure("training did not start: the inner-loop preflight does not fit on another rank "
                                   "(its log says why)")
        metrics = self._metrics["train"]
        metrics["seal/preflight_peak_memory_gb"].append(report.peak_memory_bytes / 2**30)
        metrics["seal/preflight_seconds_per_step"].append(report.seconds_per_step)
        self._preflight_done = True

    # ----- exact resume ---------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        return _EpochSeeded(super()._get_train_sampler(dataset))

    def _save_checkpoint(self, model, trial):
        # TRL's step counter and buffered generation batch, written before the parent's files: transformers writes
        # trainer_state.json last, so a checkpoint that has one has this file too.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save({"step": self._step, "buffered_inputs": self._buffered_inputs}, self._generation_file(folder))
        super()._save_checkpoint(model, trial)

    def _load_rng_state(self, checkpoint):
        # Trainer calls this once, right before the first resumed step: restore the generation buffer with the RNG.
        super()._load_rng_state(checkpoint)
        path = self._generation_file(checkpoint) if checkpoint else None
        if path and os.path.isfile(path):
            state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
            self._step, self._buffered_inputs = state["step"], state["buffered_inputs"]

    def _generation_file(self, folder: str) -> str:
        rank = "" if self.args.world_size <= 1 else f"_{self.args.process_index}"
        return os.path.join(folder, f"seal_generation_state{rank}.pt")

    # ----- rewards -> variant weights -------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards_per_func
        # Which self-edits failed (parse or run), in the same cross-rank order as the gathered rewards.
        local = torch.tensor([any(not r.ok for r in runs) for runs in self.seal_reward.last_results],
                             device=rewards_per_func.device)
        self._gathered_failed = self.accelerator.gather(local).bool()
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._sync_inner_loop()
        if not self._preflight_done:
            self._preflight()
        self._generating = True
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._generating = False
        return self._apply_variant(output)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        # ReST-EM's loss has no importance ratio, so the "old" log-probs TRL computes (without grad) while it
        # generates, when generation and optimizer steps are misaligned, would be thrown away: skip that forward
        # pass (vLLM's importance-sampling correction, their other reader, is off under ReST-EM).
        if self._generating and not self.variant.uses_grpo_loss and not torch.is_grad_enabled():
            return None, None, None
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _apply_variant(self, output: dict) -> dict:
        mode = "train" if self.model.training else "eval"
        per_func = self._gathered_rewards
        group = self.num_generations if mode == "train" else self.num_generations_eval
        unscorable = torch.isnan(per_func).all(dim=1)
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        rewards = rewards.cpu()
        failed = self._gathered_failed.cpu()
        if failed.any():  # a failed self-edit is never kept (ReST-EM) and ranks below every one that ran (GRPO)
            rewards = (rank_failures_last(rewards, failed, group) if self.variant.uses_grpo_loss
                       else rewards.masked_fill(failed, torch.nan))
        weights = self.variant.weights(
            rewards, group, scale=self.scale_rewards != "none", top_k=self.args.rest_em_top_k,
            margin=self.args.rest_em_margin,
        )
        n_local = output["advantages"].shape[0]
        start = self.accelerator.process_index * n_local
        local = weights[start : start + n_local].to(output["advantages"].device)
        output["advantages"] = local
        for _ in range(min(len(weights), len(self._logs["advantages"]))):
            self._logs["advantages"].pop()
        self._logs["advantages"].extend(weights.tolist())
        if not self.variant.uses_grpo_loss:
            # The M-step's NLL is a mean over the kept tokens of the whole generation batch (every rank), so a
            # kept token weighs the same whichever micro-batch it lands in.
            kept_tokens = (_loss_mask(output).sum(1) * (local > 0)).sum().float()
            total = self.accelerator.reduce(kept_tokens, reduction="sum")
            output["rest_em_kept_tokens"] = total.reshape(1).expand(n_local).clone()
        self._log_scores(per_func[:, 0].cpu(), weights, group, mode)
        return output

    def _log_scores(self, scores: torch.Tensor, weights: torch.Tensor, group: int, mode: str) -> None:
        """seal/<kind>_mean, _max_per_context (and for ReST-EM keep_fraction, _kept_mean), over valid scores
        only. <kind> says what the inner reward is: gain, improved (binary) or success."""
        kind = {"gain": "gain", "binary": "improved", "success": "success"}.get(self.inner_loop.config.reward, "reward")
        if self.seal_reward.terms.active:  # the score is the gain less the terms (each logged as reward/<term>)
            kind = "reward"
        metrics = self._metrics[mode]
        valid = ~torch.isnan(scores)
        if valid.any():
            metrics[f"seal/{kind}_mean"].append(scores[valid].mean().item())
        best = torch.where(valid, scores, torch.full_like(scores, float("-inf"))).view(-1, group).max(1).values
        best = best[torch.isfinite(best)]
        if best.numel():
            metrics[f"seal/{kind}_max_per_context"].append(best.mean().item())
        if not self.variant.uses_grpo_loss:
            kept = weights > 0
            metrics["seal/keep_fraction"].append(kept.float().mean().item())
            if kept.any():
                metrics[f"seal/{kind}_kept_mean"].append(scores[kept].mean().item())

    # ----- the loss ----------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.variant.uses_grpo_loss:
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        kept = (inputs["advantages"] > 0).nonzero().squeeze(1)
        nothing_kept = kept.numel() == 0
        if nothing_kept:
            if self.accelerator.num_processes == 1:  # no forward, no backward, no gradient
                return torch.zeros((), device=inputs["advantages"].device, requires_grad=True)
            # Other ranks may have kept rows: their backward all-reduces gradients (DDP, ZeRO), so this rank must
            # run one too. One row, weighted 0, is the cheapest pass that takes part.
            kept = kept.new_zeros(1)
        completion_ids = inputs["completion_ids"][kept]
        input_ids = torch.cat([inputs["prompt_ids"][kept], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"][kept], inputs["completion_mask"][kept]], dim=1)
        # at temperature 1 (see _prepare_rest_em_loss): the NLL of the self-edit itself
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=False
        )
        mask = _loss_mask(inputs)[kept] * (0 if nothing_kept else 1)
        nll_and_tokens = torch.stack([rest_em_loss(per_token_logps, mask, 1.0).detach(), mask.sum().float()])
        nll_sum, tokens = self.accelerator.gather(nll_and_tokens.reshape(1, 2)).sum(0)
        if tokens > 0:
            self._metrics[mode]["seal/kept_nll"].append((nll_sum / tokens).item())
        # Same normalisation as TRL's token-level losses: the generation batch's kept tokens, spread over its
        # micro-batches; DDP's gradient mean over ranks is undone by the process count.
        normalizer = inputs["rest_em_kept_tokens"][0].clamp_min(1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return rest_em_loss(per_token_logps, mask, normalizer)


def reward_terms(args: SEALConfig, constraints=()) -> RewardTerms:
    """The reward terms a `SEALConfig` sets, with the Python API's constraint callables; the settings named as the
    recipe spells them."""
    try:
        return RewardTerms(forgetting_weight=args.reward_forgetting_weight, general_metric=args.reward_general_metric,
                           constraint_weight=args.reward_constraint_weight, banned_phrases=args.reward_banned_phrases,
                           constraints=list(constraints))
    except ValueError as err:
        message = str(err).replace("RewardTerms.constraint_weight", "reward_constraint_weight")
        raise ValueError(message.replace("RewardTerms.", "reward_")) from None


class _EpochSeeded(Sampler):
    """TRL's RepeatSampler with each epoch's shuffle drawn from (seed, epoch) alone: TRL's draws every epoch from
    one generator, which a resumed run restarts, so a run resumed at epoch e would see epoch 0's order.
    accelerate's DataLoaderShard.set_epoch reaches `set_epoch` here."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        if getattr(self.sampler, "shuffle", False) and self.sampler.seed is not None:
            self.sampler.generator.manual_seed(self.sampler.seed + self.epoch)
        return iter(self.sampler)


def _loss_mask(inputs: dict) -> torch.Tensor:
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]
