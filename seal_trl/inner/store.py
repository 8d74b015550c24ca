"""Finished inner runs on disk, keyed by their content, so a killed run restarted with the same command
recomputes none of them.

A key covers everything a run's result depends on: the policy version (a fingerprint of the weights the inner
model was synced to), the context, the self-edit text, the inner-loop settings and the seed. The file is
append-only JSON lines, one result per line, flushed and fsynced as each run finishes; a line torn by a kill
is ignored on the next start. Every line is validated when the store opens (bounded nesting, every field of
`InnerResult` with its type, numbers finite, a known failure reason): a line that does not parse or validate is
skipped, counted in one warning, and its run recomputed rather than trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..plans import FAILURE_REASONS
from ..safe_json import check_regular_file, parse_json
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
            # a directory, FIFO or device (/dev/zero) is refused before a read that could fail, block or never end
            check_regular_file(self.path, hint="; the inner-run store must be a JSON-lines file: move it away (the "
                                               "runs are recomputed)")
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a line torn by a kill: cut it, so the next append starts on a fresh line
            with self.path.open("r+b") as fh:
                fh.truncate(complete)
            logger.warning("%s: dropped a torn last line (a run killed while writing)", self.path)
        skipped = 0
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_stored_line(line)
                if parsed is None:
                    skipped += 1
                else:
                    self._results[parsed[0]] = parsed[1]
        if skipped:
            logger.warning("%s: skipped %d line(s) that do not parse or validate as an inner run (damaged or "
                           "edited); those runs are recomputed", self.path, skipped)

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


@functools.cache
def _result_schema():
    """A strict pydantic model of `InnerResult`'s fields (built from the dataclass, so the two cannot drift):
    `"5"` is not a number, `5` not a list, NaN and infinity not scores; unknown fields are ignored."""
    from pydantic import ConfigDict, Field, create_model

    hints = typing.get_type_hints(InnerResult)
    fields = {}
    for f in dataclasses.fields(InnerResult):
        if f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ... if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name], default)
    return create_model("StoredInnerResult", __config__=ConfigDict(strict=True, allow_inf_nan=False), **fields)


def parse_stored_line(line: str) -> tuple[str, InnerResult] | None:
    """(key, result) of one store line, or None when it is not JSON (torn, nested too deeply) or not a valid
    `{"key": str, "result": InnerResult}`."""
    from pydantic import ValidationError

    try:
        record = parse_json(line, "store line")
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            return None
        result = InnerResult(**dict(_result_schema().model_validate(record.get("result"))))
    except (ValueError, ValidationError):  # parse_json's error is a ValueError
        return None
    if result.error is not None and result.error not in FAILURE_REASONS:
        return None
    return record["key"], result
