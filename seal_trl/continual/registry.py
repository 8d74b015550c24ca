"""A versioned, crash-safe registry of continual-adaptation adapters on disk.

Layout of a registry directory::

    registry.json            the manifest: every version, the promoted pointer, the promotion log
    versions/v0001/          one version: adapter_model.safetensors + adapter_config.json (PEFT format),
                             documents.json (what it learned: texts, probes, training examples), README.md
    .lock                    a file lock: one writer at a time

Each version's adapter is a LoRA delta on top of its *parent* (the version promoted when it was trained);
the model a version stands for is the base model plus the adapters of its chain, root first. Promotion
and rollback only move the `promoted` pointer, so rolling back restores the earlier adapters bit for bit.

Every write is atomic: a version is written into a temporary directory and renamed into place, the
manifest is written to a temporary file, fsynced and `os.replace`d. A crash at any point leaves the
previous manifest, and so the previous promoted state, intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..safe_json import check_regular_file, read_json_file
from .registry_schema import (FORMAT, FORMAT_VERSION, VERSION_PATTERN, format_problem, validate_adapter_config,
                              validate_documents, validate_manifest)

if TYPE_CHECKING:
    import torch

MANIFEST = "registry.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: A manifest lists versions, their documents' ids and gate verdicts: megabytes for thousands of versions.
MAX_MANIFEST_BYTES = 64 * 2**20
_DAMAGED = "; the manifest is damaged: restore registry.json from a backup, or start a new registry directory"

#: Test seam: called with a hook name at each step of a write ("version_files_written", "version_renamed",
#: "manifest_temp_written", "manifest_replaced"); a crash test kills the process from here.
_hook: Callable[[str], None] | None = None


def set_write_hook(hook: Callable[[str], None] | None) -> None:
    """Install a function called at each step of a registry write (for crash tests)."""
    global _hook
    _hook = hook


def _at(name: str) -> None:
    if _hook is not None:
        _hook(name)


class RegistryError(ValueError):
    """A registry problem the user can fix: not a registry, an unknown version, a mismatched base model."""


class RegistryLockedError(RegistryError):
    """Another process holds the registry's lock."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: done once, at import, not while threads may run
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _creation_mode(kind: int) -> int:
    """`kind` (0o666 files, 0o777 directories) less the umask: what open()/mkdir() would give, where mkstemp/mkdtemp
    give 0o600/0o700 (a registry shared by a group would lock the group out at its first write)."""
    return kind & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes, *, hook: str | None = None) -> None:
    """Write `data` to `path` so that readers see either the old file or the new one, never a torn one; the file
    keeps the permissions it had (a new one gets the usual ones)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = _creation_mode(0o666)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if hook:
            _at(hook)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any, *, hook: str | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), hook=hook)


def _leftover_of_creation(path: Path) -> bool:
    """What a registry creation killed before its manifest was written leaves behind."""
    return (path.name in (".lock", ".lock.json")
            or (path.name.startswith(f".{MANIFEST}.") and path.name.endswith(".tmp"))  # killed before its replace
            or (path.name == "versions" and path.is_dir() and not any(path.iterdir())))


def check_new_registry_location(root: str | os.PathLike) -> None:
    """Raise `RegistryError` unless `root` can become a new registry (missing, empty, or what a killed creation
    left); nothing is created."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RegistryError(f"{root} is a file, not a registry directory; pass a directory (--registry)")
    if root.exists() and any(not _leftover_of_creation(p) for p in root.iterdir()):
        raise RegistryError(f"{root} is not a seal-trl registry (no {MANIFEST}) and is not empty; pass an existing "
                            "registry or a new/empty directory (nothing was changed)")


def _same_model(recorded: str, given: str) -> bool:
    """Whether two spellings name the same base model: equal, or the same local directories (`models/x`,
    `models/x/`, its absolute path), a policy adapter joined with "+" compared part by part."""
    if recorded == given:
        return True

    def canonical(name: str) -> list[str]:
        parts = [name] if Path(name).expanduser().exists() else name.split("+")
        return [str(Path(p).expanduser().resolve()) if Path(p).expanduser().exists() else p for p in parts]

    return canonical(recorded) == canonical(given)


class AdapterRegistry:
    """Versioned adapters with a manifest, a lock, promotion and rollback.

    `AdapterRegistry(path, create=True, base_model=...)` makes a new registry in an empty or missing
    directory; without `create` the directory must already be a registry. A directory that holds other
    files and no manifest is refused (nothing in it is touched).
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = False, base_model: str | None = None,
                 lock_timeout: float = 0.0):
        from filelock import FileLock

        self.root = Path(root)
        self.lock_timeout = lock_timeout
        manifest = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is a file, not a registry directory; pass a directory (--registry)")
        if not manifest.exists():
            check_new_registry_location(self.root)
            if not create:
                raise RegistryError(f"{self.root} is not a seal-trl registry (no {MANIFEST}); create one with "
                                    "`seal-trl adapt --registry DIR` or AdapterRegistry(DIR, create=True)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.root / ".lock"))
        if not manifest.exists():
            with self.locked():
                if not manifest.exists():
                    (self.root / "versions").mkdir(exist_ok=True)
                    atomic_write_json(manifest, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                 "created": _now(), "base_model": base_model, "promoted": None,
                                                 "versions": {}, "log": []})
        data = self.manifest()
        if base_model is not None and data.get("base_model") is not None and not _same_model(data["base_model"],
                                                                                            base_model):
            raise RegistryError(f"{self.root} was built on base model {data['base_model']!r}, not {base_model!r}; "
                                "use the same --model or a new registry directory")

    # ----- reading -------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest as on disk now, checked field by field (bounded in size and depth before it is parsed)."""
        path = self.root / MANIFEST
        data = read_json_file(path, max_bytes=MAX_MANIFEST_BYTES, error=RegistryError, hint=_DAMAGED)
        problem = format_problem(data)
        if problem is not None:
            raise RegistryError(f"{path}: {problem}")
        problem = validate_manifest(data)
        if problem is not None:
            raise RegistryError(f"{path}: {problem}{_DAMAGED}")
        return data

    @property
    def promoted(self) -> str | None:
        return self.manifest()["promoted"]

    @property
    def base_model(self) -> str | None:
        return self.manifest().get("base_model")

    def versions(self) -> list[dict[str, Any]]:
        """Every committed version's manifest entry, oldest first."""
        return [dict(v, version=k) for k, v in self.manifest()["versions"].items()]

    def get(self, version: str) -> dict[str, Any]:
        versions = self.manifest()["versions"]
        if version not in versions:
            known = ", ".join(versions) or "none yet"
            raise RegistryError(f"version {version!r} does not exist in {self.root} (known: {known}); see "
                                "`seal-trl registry list`")
        return dict(versions[version], version=version)

    def version_dir(self, version: str) -> Path:
        """The directory of a committed version, refused unless it resolves inside the registry's versions/ (a
        symlinked version directory pointing elsewhere is never read)."""
        self.get(version)
        return self._inside(self.root / "versions" / version, version)

    def version_file(self, version: str, name: str) -> Path:
        """A file of a committed version, refused unless it resolves inside the registry's versions/ (a symlink
        out of the registry is never followed)."""
        return self._inside(self.version_dir(version) / name, version)

    def _inside(self, path: Path, version: str) -> Path:
        versions = self.root.resolve() / "versions"
        if not path.resolve().is_relative_to(versions):
            raise RegistryError(f"{path} resolves to {path.resolve()}, outside the registry's {versions} (a symlink or "
                                f"`..` out of it); nothing there was read: restore version {version}'s files or roll "
                                "back past it")
        return path

    def damaged(self, version: str, path: Path, problem: str) -> RegistryError:
        """The error for a version file that cannot be used: names the file and says to roll back."""
        return RegistryError(f"{path}: {problem}; version {version}'s files are damaged: roll back past it "
                             "(`seal-trl registry rollback`) or restore them")

    def chain(self, version: str | None) -> list[str]:
        """The versions whose adapters make up `version`'s model, root first ([] for the base model)."""
        out: list[str] = []
        while version is not None:
            if version in out:
                raise RegistryError(f"{self.root}: the parent links of {version!r} form a cycle")
            out.append(version)
            version = self.get(version)["parent"]
        return out[::-1]

    def load_adapter(self, version: str) -> dict[str, torch.Tensor]:
        """The version's adapter tensors (PEFT keys, no adapter name)."""
        from safetensors.torch import load_file

        rank = self.adapter_config(version)["r"]
        path = self.version_file(version, ADAPTER_FILE)
        try:
            check_regular_file(path)  # a FIFO would block the read forever
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for a truncated or damaged file
            raise self.damaged(version, path, f"cannot read the adapter ({type(err).__name__}: {err})") from None
        problem = adapter_problem(tensors, rank)
        if problem is not None:
            raise self.damaged(version, path, problem)
        return tensors

    def adapter_config(self, version: str) -> dict[str, Any]:
        """The version's adapter_config.json, checked: a positive integer `r`, a finite positive `lora_alpha`."""
        return self._read_checked(version, ADAPTER_CONFIG, validate_adapter_config)

    def documents(self, version: str) -> list[dict[str, Any]]:
        """The version's documents.json, checked: per document learned its text, probe and training examples."""
        return self._read_checked(version, "documents.json", validate_documents)

    def _read_checked(self, version: str, name: str, validate: Callable[[Any], str | None]) -> Any:
        data = self.read_json(version, name)
        problem = validate(data)
        if problem is not None:
            raise self.damaged(version, self.version_file(version, name), problem)
        return data

    def read_json(self, version: str, name: str) -> Any:
        return read_json_file(self.version_file(version, name), error=RegistryError,
                              hint=f"; version {version}'s files are damaged: roll back past it or restore them")

    # ----- locking ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self, timeout: float | None = None):
        """Hold the registry's lock (reentrant). Raises `RegistryLockedError` after `timeout` seconds."""
        from filelock import Timeout

        timeout = self.lock_timeout if timeout is None else timeout
        first = not self._lock.is_locked
        try:
            self._lock.acquire(timeout=timeout)
        except Timeout:
            holder = ""
            try:
                info = read_json_file(self.root / ".lock.json", max_bytes=4096)
                holder = f" (pid {info['pid']} on {info['host']}, since {info['since']})"
            except (ValueError, KeyError, TypeError):
                pass
            raise RegistryLockedError(
                f"registry {self.root} is locked by another run{holder}; wait for it to finish, or pass "
                f"--lock-timeout SECONDS to wait (waited {timeout:g} s)") from None
        try:
            if first:
                (self.root / ".lock.json").write_text(json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}))
            yield self
        finally:
            if self._lock.lock_counter == 1:
                (self.root / ".lock.json").unlink(missing_ok=True)
            self._lock.release()

    # ----- writing ---------------------------------------------------------------------------------
    def _next_version(self, manifest: Mapping[str, Any]) -> str:
        names = [*manifest["versions"], *(p.name for p in (self.root / "versions").iterdir())]  # + crashed writes'
        numbers = [int(v[1:]) for v in names if _VERSION_NAME.match(v)]  # `v²` is not a version (isdigit says so)
        return f"v{max(numbers, default=0) + 1:04d}"

    def add_version(self, adapter: Mapping[str, torch.Tensor], adapter_config: Mapping[str, Any], *,
                    parent: str | None, documents: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
                    verdict: Mapping[str, Any], files: Mapping[str, Any] | None = None, promote: bool = False,
                    reason: str = "") -> str:
        """Commit a new version and return its name. With `promote`, it is committed and promoted in one manifest
        write, so an interruption leaves neither (never a committed, gate-passed version left unpromoted); the
        checks `promote()` makes (the gate or a `reason`, a loadable chain) are made first, on the tensors given."""
        from safetensors.torch import save_file

        with self.locked():
            manifest = self.manifest()
            if parent is not None and parent not in manifest["versions"]:
                raise RegistryError(f"parent version {parent!r} does not exist in {self.root}")
            if promote:
                self._check_promotable(adapter, adapter_config, parent, verdict, reason)
            versions_dir = self.root / "versions"
            for stale in versions_dir.glob(".tmp-*"):  # leftovers of a crashed write: never committed
                shutil.rmtree(stale, ignore_errors=True)
            name = self._next_version(manifest)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=versions_dir))
            save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(dict(adapter_config), indent=2))
            for fname, content in (files or {}).items():
                (tmp / fname).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            os.chmod(tmp, _creation_mode(0o777))
            _at("version_files_written")
            os.replace(tmp, versions_dir / name)
            _fsync_dir(versions_dir)
            _at("version_renamed")
            manifest["versions"][name] = {
                "parent": parent, "created": _now(), "documents": list(documents), "metrics": dict(metrics),
                "gate": dict(verdict), "promoted_at": [],
            }
            if promote:
                _point_to(manifest, name, "promote", reason)
            atomic_write_json(self.root / MANIFEST, manifest, hook="manifest_temp_written")
            _at("manifest_replaced")
            return name

    def _check_promotable(self, adapter: Mapping[str, torch.Tensor], adapter_config: Mapping[str, Any],
                          parent: str | None, verdict: Mapping[str, Any], reason: str) -> None:
        """What `promote()` checks, for a version not written yet: nothing is written when one fails."""
        if verdict.get("passed") is not True and not reason:
            raise RegistryError(f"a version that did not pass the gate ({'; '.join(verdict.get('reasons', []))}) "
                                "is promoted only with a reason")
        problem = validate_adapter_config(dict(adapter_config)) or adapter_problem(adapter, adapter_config["r"])
        if problem is not None:
            raise RegistryError(f"cannot commit and promote this adapter: {problem} (nothing was changed)")
        if parent is not None:
            self.check_files(parent, "promote on top of")

    def _set_promoted(self, version: str | None, action: str, reason: str = "") -> dict[str, Any]:
        with self.locked():
            manifest = self.manifest()
            if version is not None and version not in manifest["versions"]:
                self.get(version)  # raises the clear error
            if version is not None:
                self.check_files(version, action)
            entry = _point_to(manifest, version, action, reason)
            atomic_write_json(self.root / MANIFEST, manifest, hook="manifest_temp_written")
            _at("manifest_replaced")
            return entry

    def check_files(self, version: str, action: str = "load") -> None:
        """Raise `RegistryError` unless the model of `version` can be built: its adapter and config, and those of
        every version below it, are there, readable and valid (checked before a promotion or rollback points at
        it)."""
        from safetensors import safe_open

        for v in self.chain(version):
            path = self.version_file(v, ADAPTER_FILE)
            try:
                check_regular_file(path)
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            except Exception as err:  # a missing file is an OSError, a damaged one safetensors' own error type
                raise RegistryError(f"cannot {action} {version!r}: {path} cannot be read ({type(err).__name__}: "
                                    f"{err}); restore version {v}'s files first (nothing was changed)") from None
            self.load_adapter(v)  # its config and tensors validated too (LoRA pairs of its rank, finite)

    def promote(self, version: str, *, reason: str = "") -> dict[str, Any]:
        """Make `version` the promoted one. A version the gate refused needs a `reason` (a manual override)."""
        info = self.get(version)  # the schema makes `gate.passed` a boolean and `gate.reasons` texts
        if info["gate"]["passed"] is not True and not reason:
            reasons = "; ".join(info["gate"].get("reasons", []))
            raise RegistryError(f"version {version!r} did not pass the gate ({reasons})"
                                "; to promote it anyway give a reason (--reason TEXT)")
        return self._set_promoted(version, "promote", reason)

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Re-activate `version`, or by default the promoted version's parent (None: the bare base model).
        The target must have been promoted before."""
        manifest = self.manifest()
        current = manifest["promoted"]
        if version is None:
            if current is None:
                raise RegistryError(f"{self.root}: nothing is promoted, so there is nothing to roll back")
            target = manifest["versions"][current]["parent"]
        else:
            target = version
            if not self.get(version)["promoted_at"]:
                raise RegistryError(f"version {version!r} was never promoted; roll back only to a version that was "
                                    "(or promote it with `seal-trl registry promote`)")
        return self._set_promoted(target, "rollback")

    # ----- the Hub ----------------------------------------------------------------------------------
    def push_to_hub(self, repo_id: str, version: str | None = None, *, api=None, token: str | None = None,
                    private: bool | None = None) -> str:
        """Upload a promoted version with its whole chain (one folder per version) and a model card.

        Only versions that were promoted can be pushed. `api` defaults to `huggingface_hub.HfApi(token=...)`.
        """
        version = version or self.promoted
        if version is None:
            raise RegistryError(f"{self.root}: no version is promoted; nothing to push")
        if not self.get(version)["promoted_at"]:
            raise RegistryError(f"version {version!r} was never promoted; only promoted versions are pushed")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        chain = self.chain(version)
        with tempfile.TemporaryDirectory() as staging:
            staging = Path(staging)
            for v in chain:
                source = self.version_dir(v)
                for path in source.rglob("*"):  # a symlink inside a version must not upload a file from outside
                    self._inside(path, v)
                shutil.copytree(source, staging / v)
            (staging / "chain.json").write_text(json.dumps(
                {"base_model": self.base_model, "version": version,
                 "chain": [{"version": v, **{k: self.get(v)[k] for k in ("parent", "documents", "gate")}}
                           for v in chain]}, indent=2))
            (staging / "README.md").write_text(model_card(self, version))
            api.create_repo(repo_id, exist_ok=True, private=private)
            return api.upload_folder(repo_id=repo_id, folder_path=str(staging),
                                     commit_message=f"seal-trl continual adapter {version}")


_VERSION_NAME = re.compile(VERSION_PATTERN, re.ASCII)


def _point_to(manifest: dict[str, Any], version: str | None, action: str, reason: str = "") -> dict[str, Any]:
    """Move the manifest's promoted pointer to `version` (in memory) and log it; returns the log entry."""
    entry = {"action": action, "version": version, "from": manifest["promoted"], "time": _now()}
    if reason:
        entry["reason"] = reason
    manifest["promoted"] = version
    manifest["log"].append(entry)
    if version is not None and action == "promote":
        manifest["versions"][version]["promoted_at"].append(entry["time"])
    return entry


def adapter_problem(tensors: Mapping[str, torch.Tensor], rank: int) -> str | None:
    """None when `tensors` are LoRA pairs of rank `rank` (`lora_A` [r, in] with its `lora_B` [out, r]), floating point
    and finite; else what is wrong (one line)."""
    import torch

    if not tensors:
        return "the adapter holds no tensors"
    for key, tensor in tensors.items():
        kind = "A" if key.endswith(".lora_A.weight") else "B" if key.endswith(".lora_B.weight") else None
        if kind is None:
            return f"tensor {key!r} is neither a lora_A nor a lora_B weight"
        other = key[: -len("A.weight")] + ("B" if kind == "A" else "A") + ".weight"
        if other not in tensors:
            return f"tensor {key!r} has no {other.rsplit('.', 2)[-2]} partner ({other!r} is missing)"
        if tensor.ndim != 2 or tensor.shape[0 if kind == "A" else 1] != rank:
            return (f"tensor {key!r} has shape {list(tensor.shape)}, not that of a rank-{rank} lora_{kind} "
                    f"(adapter_config.json says r={rank})")
        if not torch.is_floating_point(tensor) or not bool(torch.isfinite(tensor).all()):
            return f"tensor {key!r} is not finite floating point (NaN, infinity or {tensor.dtype})"
    return None


def model_card(registry: AdapterRegistry, version: str) -> str:
    """A model card for a promoted version: base model, chain, documents, the gate's per-objective scores."""
    info = registry.get(version)
    chain = registry.chain(version)
    lines = [
        "---", "library_name: peft", f"base_model: {registry.base_model or 'unknown'}",
        "tags:", "- seal", "- seal-trl", "- continual-learning", "- lora", "---", "",
        f"# seal-trl continual adapter {version}", "",
        "LoRA adapters learned one document at a time by SEAL-style self-edits (Self-Adapting Language Models, "
        "arXiv 2506.10943), each promoted only after a gate checked the new document, every earlier document and "
        "a general regression suite.", "",
        f"The model is the base model plus the adapters of this chain, applied root first: {' -> '.join(chain)}. "
        "Each folder is a PEFT LoRA adapter trained on top of the previous ones; load them in order "
        "(e.g. `PeftModel.from_pretrained(model, repo, subfolder=v)` then `merge_and_unload()`, for each v).", "",
        "## Gate objectives of this version", "", "| objective | value | threshold | passed |", "|---|---|---|---|",
    ]
    for obj in info["gate"].get("objectives", []):
        lines.append(f"| {obj['name']} | {obj['value']:.3f} | {obj['threshold']} | {obj['passed']} |")
    lines += ["", "## Documents", ""]
    for v in chain:
        for d in registry.get(v)["documents"]:
            lines.append(f"- {v}: {d.get('title')} (`{d.get('doc_id')}`, sha256 {d.get('sha256', '')[:12]})")
    lines += ["", "## Citation", "", "```bibtex", "@article{zweiger2025seal,",
              "  title={Self-Adapting Language Models},",
              "  author={Zweiger, Adam and Pari, Jyothish and Guo, Han and Aky{\\\"u}rek, Ekin and Kim, Yoon and "
              "Agrawal, Pulkit},", "  journal={arXiv preprint arXiv:2506.10943},", "  year={2025}", "}", "```", ""]
    return "\n".join(lines)

