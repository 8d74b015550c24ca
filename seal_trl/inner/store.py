"""Finished inner runs on disk, keyed by their content, so a killed run restarted with the same command
recomputes none of them.

A key covers everything a run's result depends on: the policy version (a fingerprint of the weights the inner
model was synced to), the context, the self-edit text, the inner-loop settings and the seed. The file is
append-only JSON lines, one result per line, flushed and fsynced as each run finishes; a line torn by a kill
is ignored on the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .jobs import InnerResult

logger = logging.getLogger(__name__)


def run_key(*, policy: str, context: str, self_edit: str, settings: Mapping[str, Any], seed: int) -> str:
    """The content key of one inner run."""
    payload = json.dumps({"policy": policy, "context": context, "self_edit": self_edit, "settings": settings,
                          "seed": seed}, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A sha256 over names, shapes, dtypes and bytes of `tensors` (a policy version for `run_key`)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        data = tensor.to("cpu").contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")  # 0-dim too
    return digest.hexdigest()


SAMPLES_PER_TENSOR = 1024  # elements `sampled_fingerprint` reads from each tensor


def sampled_fingerprint(tensors: Mapping[str, torch.Tensor], samples: int = SAMPLES_PER_TENSOR) -> str:
    """A sha256 over names, shapes, dtypes and the bytes of up to `samples` evenly spaced elements of each tensor.

    Its cost grows with the number of tensors, not their size (a 7B model: a few hundred thousand elements, read
    where the tensors live, copied to the host at once). It misses an update that leaves every sampled element as
    it was: a policy version built on it must also count the updates (see `InnerLoop.policy_version`)."""
    digest = hashlib.sha256()
    picked: dict[torch.device, list[torch.Tensor]] = {}
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.reshape(-1)
        if flat.numel():
            sample = flat[:: max(1, flat.numel() // samples)][:samples].contiguous()
            picked.setdefault(sample.device, []).append(sample.view(torch.uint8))
    for device in sorted(picked, key=str):
        digest.update(torch.cat(picked[device]).cpu().numpy().tobytes())
    return digest.hexdigest()


class ResultStore:
    """Append-only JSON-lines store of `InnerResult`s by content key (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._results: dict[str, InnerResult] = {}
        self.hits = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a line torn by a kill: cut it, so the next append starts on a fresh line
            with self.path.open("r+b") as fh:
                fh.truncate(complete)
            logger.warning("%s: dropped a torn last line (a run killed while writing)", self.path)
        fields = {f.name for f in dataclasses.fields(InnerResult)}
        torn = 0
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                    self._results[record["key"]] = InnerResult(**{k: v for k, v in record["result"].items()
                                                                 if k in fields})
                except (ValueError, KeyError, TypeError):
                    torn += 1
        if torn:
            logger.warning("%s: skipped %d unreadable line(s) (a run killed while writing)", self.path, torn)

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def get(self, key: str) -> InnerResult | None:
        result = self._results.get(key)
        if result is not None:
            self.hits += 1
            return dataclasses.replace(result, losses=list(result.losses))
        return None

    def put(self, key: str, result: InnerResult) -> None:
        self._results[key] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "result": dataclasses.asdict(result)}, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
