"""The adapter registry: versions, manifest, promotion/rollback, crash safety, locking, Hub push."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seal_trl.continual.registry import AdapterRegistry, RegistryError, RegistryLockedError

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "registry_worker.py"
CONFIG = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA"}


def verdict(passed=True, reasons=()):
    return {"passed": passed, "objectives": [], "reasons": list(reasons)}


def adapter(seed):
    g = torch.Generator().manual_seed(seed)
    return {"m.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
            "m.q_proj.lora_B.weight": torch.randn(8, 2, generator=g)}


def add(reg, seed, parent=None, passed=True):
    return reg.add_version(adapter(seed), CONFIG, parent=parent, documents=[{"doc_id": f"d{seed}"}],
                           metrics={"after": {"x": seed}}, verdict=verdict(passed, [] if passed else ["earlier: drop"]))


def worker(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(WORKER), *map(str, args)], env=env, timeout=timeout,
                          capture_output=True, text=True)


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_versions_promotion_and_rollback_restore_exact_adapters(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model="tiny")
    v1 = add(reg, 1)
    reg.promote(v1)
    v2 = add(reg, 2, parent=v1)
    reg.promote(v2)
    assert reg.promoted == v2 and reg.chain(v2) == [v1, v2]
    reg.rollback()
    assert reg.promoted == v1
    assert_same(reg.load_adapter(v1), adapter(1))  # bit-exact from disk
    reg.rollback(v2)  # forward again to a version that was promoted before
    assert reg.promoted == v2
    reg.rollback()
    reg.rollback()
    assert reg.promoted is None  # back to the bare base model
    log = reg.manifest()["log"]
    assert [e["action"] for e in log] == ["promote", "promote", "rollback", "rollback", "rollback", "rollback"]
    reopened = AdapterRegistry(tmp_path / "reg")
    assert [v["version"] for v in reopened.versions()] == [v1, v2]
    assert reopened.get(v2)["parent"] == v1 and reopened.get(v2)["metrics"] == {"after": {"x": 2}}


def test_refused_version_needs_a_reason_and_unknown_versions_are_clear(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = add(reg, 1, passed=False)
    with pytest.raises(RegistryError, match="did not pass the gate.*earlier: drop.*--reason"):
        reg.promote(v1)
    assert reg.promoted is None
    reg.promote(v1, reason="reviewed by hand")
    assert reg.manifest()["log"][-1]["reason"] == "reviewed by hand"
    with pytest.raises(RegistryError, match="'v0042' does not exist.*known: v0001"):
        reg.promote("v0042")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.rollback("v0042")
    v2 = add(reg, 2, parent=v1)
    with pytest.raises(RegistryError, match="never promoted"):
        reg.rollback(v2)
    assert reg.promoted == v1


def test_a_directory_that_is_not_a_registry_is_refused_untouched(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RegistryError, match="not a seal-trl registry.*nothing was changed"):
        AdapterRegistry(other, create=True)
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]
    with pytest.raises(RegistryError, match="not a seal-trl registry"):
        AdapterRegistry(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RegistryError, match="is a file"):
        AdapterRegistry(tmp_path / "afile", create=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "registry.json").write_text('{"format": "something-else"}')
    with pytest.raises(RegistryError, match="not a seal-trl registry manifest"):
        AdapterRegistry(bad)
    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model="model-a")
    with pytest.raises(RegistryError, match="built on base model 'model-a'"):
        AdapterRegistry(reg.root, base_model="model-b")
    model, adapter = tmp_path / "models" / "x", tmp_path / "policy"
    model.mkdir(parents=True)
    adapter.mkdir()
    reg = AdapterRegistry(tmp_path / "reg2", create=True, base_model=f"{model}+{adapter}")
    # the same directories spelled otherwise are the same base model; another directory is not
    AdapterRegistry(reg.root, base_model=f"{model}/+{tmp_path}/models/../policy")
    with pytest.raises(RegistryError, match="built on base model"):
        AdapterRegistry(reg.root, base_model=f"{model}+{tmp_path}")
    with pytest.raises(RegistryError, match="built on base model"):
        AdapterRegistry(reg.root, base_model=str(model))


@pytest.mark.parametrize("hook", ["manifest_temp_written", "manifest_replaced"])
def test_killed_mid_promotion_leaves_a_valid_registry(tmp_path, hook):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = add(reg, 1)
    reg.promote(v1)
    v2 = add(reg, 2, parent=v1)
    before = reg.manifest()
    done = worker("crash", reg.root, v2, hook)
    assert done.returncode == -9, done.stderr  # SIGKILLed at the hook
    after = AdapterRegistry(reg.root)  # opens: the manifest is whole
    if hook == "manifest_temp_written":  # killed before the atomic replace: the old state, exactly
        assert after.manifest() == before and after.promoted == v1
    else:  # killed just after it: the new state, complete
        assert after.promoted == v2
    assert_same(after.load_adapter(v1), adapter(1))
    assert_same(after.load_adapter(v2), adapter(2))
    assert not [p for p in after.root.iterdir() if p.name.endswith(".tmp")] or hook == "manifest_temp_written"
    after.rollback(v1) if after.promoted != v1 else after.promote(v2)  # and it keeps working


def _killed_adding_on_top_of_v1(tmp_path, action: str, hook: str):
    """A registry with v1 promoted, a worker SIGKILLed at `hook` while adding a version: (v1, the manifest before,
    the registry reopened after)."""
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = add(reg, 1)
    reg.promote(v1)
    before = reg.manifest()
    done = worker(action, reg.root, hook)
    assert done.returncode == -9, done.stderr
    return v1, before, AdapterRegistry(reg.root)


@pytest.mark.parametrize("hook", ["version_renamed", "manifest_temp_written"])
def test_killed_while_adding_a_version_loses_nothing(tmp_path, hook):
    v1, before, after = _killed_adding_on_top_of_v1(tmp_path, "crash-add", hook)
    assert after.manifest() == before  # the half-written version was never committed
    v = add(after, 3, parent=v1)  # the next write cleans up and skips any orphan's number
    assert v != v1 and after.get(v)["parent"] == v1
    assert not list((after.root / "versions").glob(".tmp-*"))
    assert_same(after.load_adapter(v), adapter(3))


@pytest.mark.parametrize("hook", ["version_renamed", "manifest_temp_written", "manifest_replaced"])
def test_a_version_added_and_promoted_in_one_write_is_both_or_neither(tmp_path, hook):
    """Added then promoted in two writes, an interruption between them left a gate-passed version committed but
    not promoted (the next run learned its document again)."""
    v1, before, after = _killed_adding_on_top_of_v1(tmp_path, "crash-add-promote", hook)
    if hook == "manifest_replaced":
        new = after.promoted
        assert new != v1 and after.get(new)["parent"] == v1 and after.get(new)["promoted_at"]
        assert after.manifest()["log"][-1]["version"] == new
        assert_same(after.load_adapter(new), adapter(99))
    else:
        assert after.manifest() == before


def test_add_and_promote_checks_what_promote_checks_before_writing(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = add(reg, 1)
    reg.promote(v1)
    before = reg.manifest()
    refused = {"passed": False, "objectives": [], "reasons": ["regression_perplexity: +9%"]}
    with pytest.raises(RegistryError, match="promoted only with a reason"):
        reg.add_version(adapter(2), CONFIG, parent=v1, documents=[], metrics={}, verdict=refused, promote=True)
    nan = {**adapter(2), "m.q_proj.lora_A.weight": torch.full((2, 8), float("nan"))}
    with pytest.raises(RegistryError, match="nothing was changed"):
        reg.add_version(nan, CONFIG, parent=v1, documents=[], metrics={}, verdict=verdict(), promote=True)
    assert reg.manifest() == before and sorted(p.name for p in (reg.root / "versions").iterdir()) == [v1]
    v2 = reg.add_version(adapter(2), CONFIG, parent=v1, documents=[], metrics={}, verdict=refused, promote=True,
                         reason="promotion=always")
    assert reg.promoted == v2 and reg.manifest()["log"][-1]["reason"] == "promotion=always"


def test_a_second_run_fails_clearly_or_waits_for_the_lock(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, str(WORKER), "hold", str(reg.root), str(ready), "3"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        with pytest.raises(RegistryLockedError, match=rf"locked by another run \(pid {holder.pid}.*--lock-timeout"):
            with reg.locked(timeout=0.1):
                pass
        with pytest.raises(RegistryLockedError):
            add(reg, 1)
        assert reg.versions() == []
        released = Path(f"{ready}.released")
        assert not released.exists()  # the holder is still sleeping with the lock
        with reg.locked(timeout=60):  # waits for the holder to finish
            assert released.exists()  # got the lock only once the holder was done with it
            add(reg, 1)
    finally:
        holder.wait(timeout=60)
    assert [v["version"] for v in reg.versions()] == ["v0001"]


def test_concurrent_writers_never_corrupt_the_manifest(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), "add", str(reg.root), "4", tag], env=env)
             for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    versions = reg.versions()
    assert len(versions) == 8 and len({v["version"] for v in versions}) == 8
    assert sorted(v["documents"][0]["doc_id"] for v in versions) == sorted(f"{t}-{i}" for t in "ab" for i in range(4))
    for v in versions:
        assert reg.load_adapter(v["version"]).keys() == adapter(0).keys()


def test_push_to_hub_sends_only_promoted_versions_with_chain_and_card(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model="tiny-base")
    v1 = add(reg, 1)
    reg.promote(v1)
    v2 = add(reg, 2, parent=v1)
    calls = {}

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, **kwargs):
            root = Path(folder_path)
            calls["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            calls["card"] = (root / "README.md").read_text()
            calls["chain"] = json.loads((root / "chain.json").read_text())
            return "https://hub.example/commit/1"

    with pytest.raises(RegistryError, match="never promoted"):
        reg.push_to_hub("me/x", v2, api=FakeHub())
    assert "repo" not in calls
    reg.promote(v2)
    assert reg.push_to_hub("me/x", api=FakeHub()) == "https://hub.example/commit/1"
    assert calls["repo"] == "me/x"
    assert {"README.md", "chain.json", f"{v1}/adapter_model.safetensors", f"{v2}/adapter_config.json"} <= set(
        calls["files"])
    assert "2506.10943" in calls["card"] and "tiny-base" in calls["card"] and f"{v1} -> {v2}" in calls["card"]
    assert [c["version"] for c in calls["chain"]["chain"]] == [v1, v2]
    empty = AdapterRegistry(tmp_path / "empty", create=True)
    with pytest.raises(RegistryError, match="no version is promoted"):
        empty.push_to_hub("me/x", api=FakeHub())


def test_a_damaged_adapter_file_is_a_registry_error_that_says_roll_back(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model="tiny")
    v1 = add(reg, 1)
    path = reg.version_dir(v1) / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a half-copied version
    with pytest.raises(RegistryError, match=f"version {v1}'s files are damaged: roll back past it"):
        reg.load_adapter(v1)


@pytest.mark.parametrize("damage", ["version-deleted", "adapter-truncated", "parent-config-deleted"])
def test_promote_and_rollback_refuse_a_version_whose_model_cannot_be_built(tmp_path, damage):
    import shutil

    reg = AdapterRegistry(tmp_path / "reg", create=True, base_model="tiny")
    v1 = add(reg, 1)
    reg.promote(v1)
    v2 = add(reg, 2, parent=v1)
    if damage == "version-deleted":
        shutil.rmtree(reg.version_dir(v2))
    elif damage == "adapter-truncated":
        path = reg.version_dir(v2) / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[:20])
    else:
        (reg.version_dir(v1) / "adapter_config.json").unlink()
    manifest = (tmp_path / "reg" / "registry.json").read_bytes()
    with pytest.raises(RegistryError, match=f"cannot promote '{v2}'|version {v1}'s files are damaged"):
        reg.promote(v2)
    assert (tmp_path / "reg" / "registry.json").read_bytes() == manifest and reg.promoted == v1


# ----- issue 32: a registry that is damaged or lies --------------------------------------------------------------
def edit_manifest(reg, change):
    path = reg.root / "registry.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_gate(field, value):
    def change(m):
        m["versions"]["v0001"]["gate"][field] = value
    return change


def rename_version(new):
    def change(m):
        m["versions"] = {new: m["versions"].pop("v0001")}
    return change


MANIFEST_DAMAGE = {
    "gate-reasons-ints": (set_gate("reasons", [1, 2]), r"versions\.v0001\.gate\.reasons\.0"),
    "gate-passed-string": (set_gate("passed", "false"), r"versions\.v0001\.gate\.passed"),
    "gate-passed-int": (set_gate("passed", 1), r"versions\.v0001\.gate\.passed"),
    "format-version-999": (lambda m: m.update(format_version=999),
                           r"`format_version` is 999.*reads format version 1"),
    "format-version-true": (lambda m: m.update(format_version=True), r"`format_version` is True"),
    "version-absolute-path": (rename_version("/etc/outside"), r"versions\./etc/outside"),
    "version-dotdot": (rename_version("../../outside"), r"versions\.\.\./\.\./outside"),
    "version-ansi": (rename_version("v0001\x1b[31m"), r"versions\.v0001\\x1b\[31m"),
    "version-superscript-digit": (rename_version("v²"), r"versions\.v²"),
    "doc-id-ansi": (lambda m: m["versions"]["v0001"]["documents"][0].update(doc_id="d\x1b]0;pwned\x07"),
                    r"documents\.0\.doc_id"),
    "promoted-at-strings-in-a-string": (lambda m: m["versions"]["v0001"].update(promoted_at="yesterday"),
                                        r"promoted_at"),
    "log-action-unknown": (lambda m: m["log"].append({"action": "delete", "version": None, "from": None,
                                                      "time": "x"}), r"log\.0\.action"),
    "metrics-a-list": (lambda m: m["versions"]["v0001"].update(metrics=[]), r"v0001\.metrics"),
    "objective-value-a-string": (set_gate("objectives", [{"name": "x", "value": "high", "threshold": "> 0",
                                                          "passed": True}]), r"objectives\.0\.value"),
}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_a_manifest_that_lies_is_refused_on_every_read(tmp_path, damage):
    change, field = MANIFEST_DAMAGE[damage]
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    add(reg, 1, passed=False)
    edit_manifest(reg, change)
    manifest = (reg.root / "registry.json").read_bytes()
    for read in (lambda: AdapterRegistry(reg.root), reg.versions, lambda: reg.promote("v0001"),
                 lambda: reg.promote("v0001", reason="by hand"), reg.rollback, lambda: reg.load_adapter("v0001")):
        with pytest.raises(RegistryError, match=rf"registry\.json: .*{field}") as err:
            read()
        assert "\x1b" not in str(err.value) and "\n" not in str(err.value)
    assert (reg.root / "registry.json").read_bytes() == manifest  # nothing was promoted or rewritten


def test_a_gate_passed_string_false_never_promotes(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    add(reg, 1, passed=False)
    edit_manifest(reg, set_gate("passed", "false"))
    with pytest.raises(RegistryError, match="gate.passed"):
        reg.promote("v0001")
    edit_manifest(reg, set_gate("passed", False))
    assert reg.promoted is None


def _outside_version(tmp_path, reg):
    """A complete, valid version outside the registry (a copy of v0001): readable if anything followed a path out."""
    import shutil

    outside = tmp_path / "outside"
    shutil.copytree(reg.root / "versions" / "v0001", outside)
    return outside


@pytest.fixture()
def opened(monkeypatch):
    """Every path opened through Python's open, pathlib and safetensors (which opens files itself)."""
    import builtins
    import io

    import safetensors
    import safetensors.torch

    seen = []

    def spy(original):
        def wrapper(file, *args, **kwargs):
            seen.append(Path(os.fsdecode(file)).resolve() if isinstance(file, (str, os.PathLike)) else file)
            return original(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(safetensors, "safe_open", spy(safetensors.safe_open))
    monkeypatch.setattr(safetensors.torch, "load_file", spy(safetensors.torch.load_file))
    return seen


@pytest.mark.parametrize("escape", ["absolute-path", "dotdot-path", "symlinked-version", "symlinked-file"])
def test_a_version_outside_the_registry_is_refused_and_nothing_outside_is_read(tmp_path, escape, opened):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = reg.add_version(adapter(1), CONFIG, parent=None, documents=[{"doc_id": "d1"}], metrics={},
                         verdict=verdict(), files={"documents.json": [DOC_RECORD]})
    outside = _outside_version(tmp_path, reg)
    target = {"absolute-path": str(outside), "dotdot-path": "../../outside"}.get(escape, "v0002")

    def point_at(m):
        m["versions"][target] = dict(m["versions"][v1], parent=None)

    edit_manifest(reg, point_at)
    if escape == "symlinked-version":
        (reg.root / "versions" / "v0002").symlink_to(outside, target_is_directory=True)
    elif escape == "symlinked-file":
        (reg.root / "versions" / "v0002").mkdir()
        for f in outside.iterdir():
            (reg.root / "versions" / "v0002" / f.name).symlink_to(f)
    opened.clear()
    outcomes = []
    for action in (reg.promote, reg.load_adapter, reg.check_files, lambda v: reg.read_json(v, "documents.json"),
                   lambda v: reg.read_json(v, "adapter_config.json")):
        try:
            action(target)
            outcomes.append(f"{action} accepted it")
        except RegistryError as err:
            outcomes.append(str(err))
    read_outside = [p for p in opened if isinstance(p, Path) and p.is_relative_to(outside.resolve())]
    assert read_outside == [], f"read outside the registry: {read_outside}"
    assert any(isinstance(p, Path) and p.name == "registry.json" for p in opened)  # the spy does see reads
    refusal = "outside the registry" if escape.startswith("symlinked") else "registry.json: field `versions"
    assert all(refusal in outcome for outcome in outcomes), outcomes
    assert json.loads((reg.root / "registry.json").read_text())["promoted"] is None


def _damage_version(reg, version, damage):
    from safetensors.torch import save_file

    vdir = reg.root / "versions" / version
    good = adapter(1)
    tensors = {
        "wrong-rank": {"m.q_proj.lora_A.weight": torch.randn(3, 8), "m.q_proj.lora_B.weight": torch.randn(8, 3)},
        "lora-a-without-b": {"m.q_proj.lora_A.weight": good["m.q_proj.lora_A.weight"]},
        "lora-b-without-a": {"m.q_proj.lora_B.weight": good["m.q_proj.lora_B.weight"]},
        "nan-adapter": {**good, "m.q_proj.lora_A.weight": torch.full((2, 8), float("nan"))},
        "inf-adapter": {**good, "m.q_proj.lora_B.weight": torch.full((8, 2), float("inf"))},
        "int-adapter": {**good, "m.q_proj.lora_A.weight": torch.ones(2, 8, dtype=torch.int64)},
        "three-d-tensor": {**good, "m.q_proj.lora_A.weight": torch.randn(2, 8, 1)},
        "foreign-tensor": {**good, "m.q_proj.weight": torch.randn(8, 8)},
        "empty-adapter": {},
    }
    configs = {"lora-alpha-1e999": '{"r": 2, "lora_alpha": 1e999}', "lora-alpha-nan": '{"r": 2, "lora_alpha": NaN}',
               "r-string": '{"r": "2", "lora_alpha": 4}', "r-zero": '{"r": 0, "lora_alpha": 4}',
               "r-bool": '{"r": true, "lora_alpha": 4}', "config-a-list": "[2, 4]"}
    if damage in tensors:
        save_file(tensors[damage], str(vdir / "adapter_model.safetensors"))
        return "adapter_model.safetensors"
    if damage in configs:
        (vdir / "adapter_config.json").write_text(configs[damage])
        return "adapter_config.json"
    (vdir / "documents.json").write_text({"documents-list-of-empty": "[{}]", "documents-object": "{}",
                                          "documents-probe-answers-ints":
                                          json.dumps([dict(DOC_RECORD, probe={"kind": "x", "items": [
                                              {"prompt": "p", "answers": [1]}]})]),
                                          # a probe with no question would score nothing, an empty example train
                                          # nothing: both were blamed on the next document's self-edit
                                          "documents-probe-no-items":
                                          json.dumps([dict(DOC_RECORD, probe={"kind": "x", "items": []})]),
                                          "documents-empty-example": json.dumps([dict(DOC_RECORD, examples=["", "e"])]),
                                          }[damage])
    return "documents.json"


DOC_RECORD = {"document": {"doc_id": "d1", "title": "t", "text": "x"},
              "probe": {"kind": "labelled", "items": [{"prompt": "p", "answers": ["x"]}]}, "examples": ["e"]}
VERSION_DAMAGE = ["wrong-rank", "lora-a-without-b", "lora-b-without-a", "nan-adapter", "inf-adapter", "int-adapter",
                  "three-d-tensor", "foreign-tensor", "empty-adapter", "lora-alpha-1e999", "lora-alpha-nan",
                  "r-string", "r-zero", "r-bool", "config-a-list", "documents-list-of-empty", "documents-object",
                  "documents-probe-answers-ints", "documents-probe-no-items", "documents-empty-example"]


@pytest.mark.parametrize("damage", VERSION_DAMAGE)
def test_a_damaged_version_file_is_one_error_naming_it_that_says_roll_back(tmp_path, damage):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = reg.add_version(adapter(1), CONFIG, parent=None, documents=[{"doc_id": "d1"}], metrics={},
                         verdict=verdict(), files={"documents.json": [DOC_RECORD]})
    assert reg.documents(v1) == [DOC_RECORD] and reg.adapter_config(v1)["r"] == 2
    name = _damage_version(reg, v1, damage)
    read = reg.documents if name == "documents.json" else reg.load_adapter
    with pytest.raises(RegistryError, match=rf"versions/{v1}/{name}: .*version {v1}'s files are damaged: roll back"):
        read(v1)
    if name != "documents.json":  # a promotion checks the adapter and its config before moving the pointer
        with pytest.raises(RegistryError, match=rf"{name}.*roll back"):
            reg.promote(v1)
        assert reg.promoted is None


def test_an_orphan_directory_with_a_superscript_digit_does_not_break_the_next_version(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    (reg.root / "versions" / "v²").mkdir()  # "²".isdigit() is True, int("²") raises
    assert add(reg, 1) == "v0001"


def test_an_adapter_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    v1 = add(reg, 1)
    path = reg.version_dir(v1) / "adapter_model.safetensors"
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block until a writer comes: forever
    for action in (reg.promote, reg.load_adapter):
        with pytest.raises(RegistryError, match="not a regular file"):
            action(v1)


def test_registry_writes_keep_the_permissions_a_shared_registry_needs(tmp_path):
    """mkstemp/mkdtemp create 0600/0700: a manifest rewritten through them, or a version directory renamed from
    one, would lock a group out of a registry it shares."""
    umask = os.umask(0)
    os.umask(umask)
    reg = AdapterRegistry(tmp_path / "reg", create=True)
    manifest = reg.root / "registry.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o666 & ~umask
    os.chmod(manifest, 0o640)  # what the registry's owner chose is kept
    v1 = reg.add_version(adapter(1), CONFIG, parent=None, documents=[{"doc_id": "d1"}], metrics={},
                         verdict=verdict())
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o640
    assert stat.S_IMODE((reg.root / "versions" / v1).stat().st_mode) == 0o777 & ~umask


def test_a_manifest_temp_file_left_by_a_killed_creation_does_not_block_the_directory(tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    (root / ".registry.json.abc123.tmp").write_text("{")
    (root / ".lock").write_text("")
    AdapterRegistry(root, create=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".notes.json.abc.tmp").write_text("{")
    with pytest.raises(RegistryError, match="not empty"):
        AdapterRegistry(tmp_path / "other", create=True)
