"""Copying the current policy's weights into the inner model, in memory, without reloading.

A full-weight policy: its state dict goes into the inner model's base weights (re-quantised when the inner
model is 4-bit). A PEFT LoRA policy: its base weights are copied once, its adapter tensors every time,
into a frozen "policy" adapter that stays active under the inner adapter.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

POLICY_ADAPTER = "policy"


def unwrap(model):
    """The module inside DDP/accelerate/compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _base_key(key: str) -> str:
    return key.replace(".base_layer.", ".")


def base_parameters(peft_model) -> dict[str, torch.Tensor]:
    """The non-adapter parameters and buffers of a PEFT model, keyed as in the plain model's state dict.

    Built from named parameters (not the state dict) so 4-bit quantisation state is not listed as weights.
    """
    base = peft_model.get_base_model()
    tensors = list(base.named_parameters(remove_duplicate=False)) + list(base.named_buffers(remove_duplicate=False))
    return {_base_key(k): v for k, v in tensors if "lora_" not in k}


def _requantize_into(module_param: torch.nn.Parameter, source: torch.Tensor):
    import bitsandbytes as bnb

    fresh = bnb.nn.Params4bit(
        source.detach().to("cpu", torch.float32).contiguous(),
        requires_grad=False,
        quant_type=module_param.quant_type,
        blocksize=module_param.blocksize,
        compress_statistics=module_param.compress_statistics,
        quant_storage=module_param.quant_storage,
        module=module_param.module,
    )
    return fresh.to(module_param.device)


@torch.no_grad()
def copy_full_weights(inner_peft_model, source: Mapping[str, torch.Tensor]) -> int:
    """Copy a full state dict into the inner model's base weights; returns the number of tensors copied."""
    targets = base_parameters(inner_peft_model)
    source_keys = set(source)
    # non-persistent buffers (rotary tables) are absent from a state dict and need no copy
    targets = {k: v for k, v in targets.items() if k in source_keys or isinstance(v, torch.nn.Parameter)}
    missing = sorted(set(targets) - source_keys)
    unknown = sorted(source_keys - set(targets))
    if missing or unknown:
        raise ValueError(
            "sync_from: the policy's weights do not match the inner model's architecture "
            f"(missing {missing[:5]}, unexpected {unknown[:5]}); build the InnerLoop from the same "
            "model the policy was loaded from"
        )
    quantized = _quantized_params(inner_peft_model)
    for key, target in targets.items():
        src = source[key]
        if key in quantized:
            module, name = quantized[key]
            fresh = _copy_4bit(src, module) if _is_4bit(src) else _requantize_into(target, src)
            setattr(module, name, fresh)
        else:
            if _is_4bit(src):  # a QLoRA policy's base weight into a full-precision inner model
                src = _dequantize(src)
            if target.shape != src.shape:
                raise ValueError(f"sync_from: {key} has shape {tuple(src.shape)}, inner model {tuple(target.shape)}")
            target.copy_(src.detach())
    return len(targets)


def _is_4bit(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "Params4bit"


def _dequantize(param: torch.Tensor) -> torch.Tensor:
    """The full-precision weight a 4-bit parameter stands for (what its layer multiplies by)."""
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(param.data, param.quant_state)


def _copy_4bit(param: torch.Tensor, module: torch.nn.Module) -> torch.nn.Parameter:
    """A 4-bit policy weight into a 4-bit inner layer: the same packed bytes and quantisation state, so the
    inner layer computes exactly what the policy's does (re-quantising the packed bytes as if they were
    weights would give garbage)."""
    fresh = copy.deepcopy(param)
    fresh.module = module
    module.quant_state = fresh.quant_state
    return fresh.to(module.weight.device)


def _quantized_params(peft_model) -> dict[str, tuple[torch.nn.Module, str]]:
    """4-bit weights by plain key, with the module that owns each (they must be replaced, not copied)."""
    out = {}
    for module_name, module in peft_model.get_base_model().named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and type(weight).__name__ == "Params4bit":
            out[_base_key(f"{module_name}.weight")] = (module, "weight")
    return out


@torch.no_grad()
def copy_lora_policy(inner_peft_model, policy_peft_model, *, copy_base: bool) -> None:
    """Mirror a PEFT LoRA policy: base weights (when `copy_base`) and the active adapter's tensors."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    name = policy_peft_model.active_adapter
    if isinstance(name, (list, tuple)):
        if len(name) != 1:
            raise ValueError(f"sync_from: the policy has several active adapters {name}; activate one")
        name = name[0]
    config = policy_peft_model.peft_config[name]
    if getattr(config, "peft_type", None) is None or str(config.peft_type) not in ("LORA", "PeftType.LORA"):
        raise ValueError(f"sync_from: only LoRA policies are supported, got {config.peft_type}")
    if copy_base:
        copy_full_weights(inner_peft_model, base_parameters(policy_peft_model))
    if POLICY_ADAPTER not in inner_peft_model.peft_config:
        mirrored = config.__class__(**{**config.to_dict(), "lora_dropout": 0.0, "inference_mode": True})
        # PEFT initialises the new adapter from torch's global RNG (its values are overwritten just below): fork
        # it, so the caller's random stream (the policy's sampling) does not depend on when the first sync ran,
        # e.g. before or after a resumed run restored its RNG state.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            inner_peft_model.add_adapter(POLICY_ADAPTER, mirrored)
        # In the policy's adapter dtype too: TRL keeps a QLoRA policy's adapter in bf16, and PEFT runs an adapter
        # in its weights' dtype, so an fp32 mirror of the same values would compute something slightly different.
        dtype = next(p.dtype for k, p in policy_peft_model.named_parameters() if f".{name}." in k and "lora_" in k)
        for key, param in inner_peft_model.named_parameters():
            if f".{POLICY_ADAPTER}." in key:
                param.data = param.data.to(dtype)
    state = get_peft_model_state_dict(policy_peft_model, adapter_name=name)
    result = set_peft_model_state_dict(inner_peft_model, state, adapter_name=POLICY_ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"sync_from: policy adapter tensors did not fit the inner model: {unexpected[:5]}")
