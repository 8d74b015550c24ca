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
import textwrap
from contextlib import contextmanager

import torch
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from .config import SEALConfig
from .inner import sync
from .inner.engine import InnerLoop
from .reward import SelfEditReward
from .tasks.knowledge import KnowledgeTask
from .variants import get_variant, rest_em_loss

logger = logging.getLogger(__name__)

SEAL_CITATION = textwrap.dedent("""\
    @misc{zweiger2025selfadaptinglanguagemodels,
        title        = {{Self-Adapting Language Models}},
        author       = {Adam Zweiger and Jyothish Pari and Han Guo and Ekin Aky{\\"u}rek and Yoon Kim and Pulkit Agrawal},
        year         = 2025,
        eprint       = {arXiv:2506.10943},
    }""")


@contextmanager
def _unsharded_loading():
    """Load the inner model whole: under ZeRO-3, transformers would otherwise partition it like the policy.

    Each rank needs its own complete inner model (the per-rank inner loops run independently).
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


class SEALTrainer(GRPOTrainer):
    """Trains a policy to write self-edits whose LoRA fine-tunes raise its own probe scores (SEAL).

    Args:
        model: a model id/path or a loaded causal LM (the policy; LoRA via `peft_config`).
        args: a `SEALConfig`.
        train_dataset: rows with a `prompt` column and the task's context columns; build it with
            `task.build_dataset(contexts, tokenizer)`.
        task: the SEAL task (default: `KnowledgeTask(style=args.self_edit_style)`).
        reward_funcs: extra TRL reward functions added after the self-edit reward (e.g. a format reward).
        inner_loop: an `InnerLoop` to use instead of building one from the policy's weights.
    """

    _tag_names = ["trl", "seal", "self-adapting", "self-edit"]
    _name = "SEAL"
    _paper = {"title": "Self-Adapting Language Models", "id": "2506.10943", "citation": SEAL_CITATION}

    def __init__(self, model, args: SEALConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, task=None, reward_funcs=None, inner_loop: InnerLoop | None = None,
                 peft_config=None, callbacks=None, optimizers=(None, None), **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SEALConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-SEAL")
        if not isinstance(args, SEALConfig):
            raise TypeError(f"args must be a SEALConfig, got {type(args).__name__}; SEALConfig accepts every "
                            "GRPOConfig field")
        self.task = task or KnowledgeTask(style=args.self_edit_style)
        self.variant = get_variant(args.algorithm)
        self.seal_reward = SelfEditReward(self.task, inner_loop, repeats=args.reward_repeats, seed=args.seed)
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
        if self.seal_reward.inner_loop is None:
            self.seal_reward.inner_loop = self._build_inner_loop()
        self.inner_loop = self.seal_reward.inner_loop
        self._gathered_rewards: torch.Tensor | None = None

    # ----- the inner loop --------------------------------------------------------------------
    def _build_inner_loop(self) -> InnerLoop:
        with _unsharded_loading():
            return self._load_inner_loop()

    def _load_inner_loop(self) -> InnerLoop:
        config = self.args.inner_loop_config()
        policy = sync.unwrap(self.model)
        plain = policy.get_base_model() if sync.is_peft_model(policy) else policy
        path = getattr(plain.config, "_name_or_path", None)
        dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else torch.float32)
        if path:
            # Its own copy of the weights the policy came from (never a deepcopy: trainers patch methods on the
            # policy instance that a copy would share); sync_from then makes it current.
            from .models import load_model_and_tokenizer

            inner_model, _ = load_model_and_tokenizer(path, dtype=dtype, load_in_4bit=config.load_in_4bit)
        elif config.load_in_4bit:
            raise ValueError("inner_load_in_4bit=True needs a policy loaded from a path or Hub name (its config "
                             "has no _name_or_path); pass the model by name, or set inner_load_in_4bit=False")
        else:
            from transformers import AutoModelForCausalLM

            inner_model = AutoModelForCausalLM.from_config(plain.config, dtype=dtype)
        if not config.load_in_4bit:
            inner_model.to(self.accelerator.device, dtype=dtype)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        return InnerLoop(inner_model, tokenizer, config)

    def _sync_inner_loop(self) -> None:
        # Every rank enters together (all generate at the same boundary), so the ZeRO-3 gather is collective.
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=True) as unwrapped:
            self.inner_loop.sync_from(unwrapped)

    # ----- rewards -> variant weights -------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._sync_inner_loop()
        output = super()._generate_and_score_completions(inputs)
        return self._apply_variant(output)

    def _apply_variant(self, output: dict) -> dict:
        mode = "train" if self.model.training else "eval"
        per_func = self._gathered_rewards
        group = self.num_generations if mode == "train" else self.num_generations_eval
        unscorable = torch.isnan(per_func).all(dim=1)
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        weights = self.variant.weights(
            rewards.cpu(), group, scale=self.scale_rewards != "none", top_k=self.args.rest_em_top_k,
            margin=self.args.rest_em_margin,
        )
        n_local = output["advantages"].shape[0]
        start = self.accelerator.process_index * n_local
        output["advantages"] = weights[start : start + n_local].to(output["advantages"].device)
        for _ in range(min(len(weights), len(self._logs["advantages"]))):
            self._logs["advantages"].pop()
        self._logs["advantages"].extend(weights.tolist())

        gains = per_func[:, 0].cpu()
        metrics = self._metrics[mode]
        metrics["seal/gain_mean"].append(torch.nanmean(gains).item())
        metrics["seal/gain_max_per_context"].append(torch.nan_to_num(gains.view(-1, group), nan=-1e9).max(1)
                                                   .values.mean().item())
        if not self.variant.uses_grpo_loss:
            kept = weights > 0
            metrics["seal/keep_fraction"].append(kept.float().mean().item())
            metrics["seal/gain_kept_mean"].append(gains[kept].mean().item() if kept.any() else float("nan"))
        return output

    # ----- the loss ----------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.variant.uses_grpo_loss:
            return super()._compute_loss(model, inputs)
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=False
        )
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        loss = rest_em_loss(per_token_logps, mask, inputs["advantages"])
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["seal/kept_nll"].append(self.accelerator.gather(loss.detach()).mean().item())
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        return loss
