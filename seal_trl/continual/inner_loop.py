"""ContinualInnerLoop: the inner loop of continual adaptation, whose base can be moved to any promoted version.

`merge` mode folds each promoted adapter into the base weights (recomputed from a pristine copy of W0, so any
version is reproduced bit for bit); `separate` mode stacks each as its own frozen PEFT adapter under the
candidate. Training can pay an L2 pull toward the promoted weights and a KL anchor (`anchor.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from ..inner.config import InnerLoopConfig
from ..inner.engine import InnerLoop
from ..inner.jobs import INNER_ADAPTER, InnerResult
from ..plans import TrainingPlan
from .anchor import KLAnchor


class ContinualInnerLoop(InnerLoop):
    """An `InnerLoop` whose base can be moved to any promoted version, with an optional L2 pull toward it."""

    def __init__(self, model, tokenizer, config: InnerLoopConfig | None = None, *, regularization: float = 0.0,
                 **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        self.regularization = regularization
        self.anchor: KLAnchor | None = None
        self.anchor_weight = 0.0
        self._pristine = {name: layer.base_layer.weight.detach().clone() for name, layer in self.lora_layers().items()}
        self._separate: list[str] = []

    def lora_layers(self) -> dict[str, Any]:
        """The LoRA-wrapped modules carrying the candidate adapter, by module name."""
        from peft.tuners.lora import LoraLayer

        return {n: m for n, m in self.model.named_modules() if isinstance(m, LoraLayer) and INNER_ADAPTER in m.lora_A}

    def base_weights(self) -> dict[str, torch.Tensor]:
        """The current (effective) base weights of the adapted modules."""
        return {n: layer.base_layer.weight for n, layer in self.lora_layers().items()}

    @torch.no_grad()
    def load_candidate(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put a saved candidate adapter back into the inner adapter."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, dict(state), adapter_name=INNER_ADAPTER)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise ValueError(f"the adapter does not fit this model (unexpected tensors {bad[:3]})")

    @contextmanager
    def candidate_disabled(self):
        """Inside, the model computes the promoted version alone: the candidate's lora_B tensors are zeroed (its
        update B @ A is then exactly 0) and put back on exit."""
        layers = [layer.lora_B[INNER_ADAPTER].weight for layer in self.lora_layers().values()]
        saved = [b.detach().clone() for b in layers]
        with torch.no_grad():
            for b in layers:
                b.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in zip(layers, saved):
                    b.copy_(value)

    @torch.no_grad()
    def set_promoted(self, chain: Sequence[tuple[str, Mapping[str, torch.Tensor], float]],
                     mode: Literal["merge", "separate"]) -> None:
        """Make the model compute base + the chain's adapters (name, tensors, scaling), root first."""
        layers = self.lora_layers()
        for name in self._separate:
            self.model.delete_adapter(name)
        self._separate = []
        for name, layer in layers.items():
            layer.base_layer.weight.copy_(self._pristine[name])
        if mode == "merge":
            if chain and any(type(layer.base_layer.weight).__name__ == "Params4bit" for layer in layers.values()):
                raise ValueError("mode='merge' folds adapters into full-precision weights; with a 4-bit model use "
                                 "mode='separate' (--mode separate)")
            for version, state, scaling in chain:
                deltas = _deltas(state, scaling)
                unknown = sorted(set(deltas) - set(layers))
                if unknown:
                    raise ValueError(f"adapter {version} targets modules this model lacks: {unknown[:3]}")
                for name, delta in deltas.items():
                    layers[name].base_layer.weight.add_(delta.to(layers[name].base_layer.weight))
        else:
            from peft import LoraConfig, set_peft_model_state_dict

            for version, state, scaling in chain:
                adapter = f"promoted_{version}"
                modules = {k[: -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")}
                if not modules:
                    raise ValueError(f"adapter {version} holds no LoRA tensors")
                r = next(v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight"))
                # the adapter's own modules, which need not be the inner adapter's (another config trained it)
                self.model.add_adapter(adapter, LoraConfig(
                    r=r, lora_alpha=scaling * r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                    target_modules=sorted({m.rsplit(".", 1)[-1] for m in modules}), inference_mode=True))
                result = set_peft_model_state_dict(self.model, dict(state), adapter_name=adapter)
                bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
                if bad:
                    raise ValueError(f"adapter {version} does not fit this model (unexpected tensors {bad[:3]})")
                self._separate.append(adapter)
        self.model.base_model.set_adapter([*self._separate, INNER_ADAPTER])
        for pname, p in self.model.named_parameters():
            p.requires_grad_(f".{INNER_ADAPTER}." in pname and "lora_" in pname)
        self.reset_adapter(0)

    @contextmanager
    def _l2_toward_promoted(self):
        """Add the gradient of `regularization * sum ||scaling * B @ A||^2` (the candidate's weight delta)."""
        handles = []
        if self.regularization > 0:
            lam = self.regularization
            for layer in self.lora_layers().values():
                a, b = layer.lora_A[INNER_ADAPTER].weight, layer.lora_B[INNER_ADAPTER].weight
                k = 2.0 * lam * layer.scaling[INNER_ADAPTER] ** 2
                # d/dB k/2 ||BA||^2 = k B (A A^T);  d/dA = k (B^T B) A
                handles.append(b.register_hook(lambda g, a=a, b=b, k=k: g + k * (b.detach() @ (a @ a.T).detach())))
                handles.append(a.register_hook(lambda g, a=a, b=b, k=k: g + k * ((b.T @ b).detach() @ a.detach())))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def set_anchor(self, texts: Sequence[str], weight: float, *, max_tokens: int = 64) -> None:
        """Anchor every later fine-tune to the model as it is now (inner adapter at identity) on `texts`."""
        self.reset_adapter(0)
        self.anchor = KLAnchor.from_model(self.model, self.tokenizer, texts, max_tokens=max_tokens) if weight else None
        self.anchor_weight = weight

    def auxiliary_loss(self) -> torch.Tensor | None:
        if self.anchor is None:
            return None
        return self.anchor_weight * self.anchor.loss(self.model)

    def run(self, plan: TrainingPlan, probe, **kwargs) -> InnerResult:
        with self._l2_toward_promoted():
            return super().run(plan, probe, **kwargs)


def _deltas(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Module name -> scaling * B @ A for each LoRA pair of a PEFT adapter state dict."""
    out = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b = state[f"{module}.lora_B.weight"]
            out[module] = (b.float() @ a.float()) * scaling
    return out


def adapter_scaling(adapter_config: Mapping[str, Any]) -> float:
    return float(adapter_config["lora_alpha"]) / float(adapter_config["r"])


def adapter_misfit(model, state: Mapping[str, torch.Tensor]) -> str | None:
    """None when every LoRA pair of `state` (PEFT keys) targets a linear module of `model` with its shapes
    (`lora_B @ lora_A` the shape of the module's weight); else what does not fit (an adapter of another model)."""
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module_name = key[: -len(".lora_A.weight")]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return f"tensor {key!r} targets {module_name!r}, which this model does not have"
        module = getattr(module, "base_layer", module)
        expected = (getattr(module, "out_features", None), getattr(module, "in_features", None))
        found = (state[f"{module_name}.lora_B.weight"].shape[0], a.shape[1])
        if found != expected:
            return (f"the LoRA pair of {module_name!r} maps {found[1]} -> {found[0]} features, but the module maps "
                    f"{expected[1]} -> {expected[0]} (an adapter of another model)")
    return None
