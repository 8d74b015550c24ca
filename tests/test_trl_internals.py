"""SEALTrainer leans on private TRL and transformers members (seal_trl.trainer.TRL_INTERNALS): each must still exist
in the installed versions with the parameters SEALTrainer relies on, and the list must name every one it uses."""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import transformers
import trl
from trl import GRPOTrainer

import seal_trl.trainer as seal_trainer
from seal_trl.trainer import TRL_INTERNALS, SEALTrainer

VERSIONS = f"trl {trl.__version__}, transformers {transformers.__version__}"
_SOURCES = "\n".join(inspect.getsource(cls) for cls in GRPOTrainer.__mro__
                     if cls.__module__.startswith(("trl.", "transformers.")))
FUNCTIONS = {name: params for name, params in TRL_INTERNALS.items() if params is not None}
ATTRIBUTES = [name for name, params in TRL_INTERNALS.items() if params is None]


def _lookup(name: str):
    """The installed member: a GRPOTrainer attribute, or for a dotted name a module's."""
    if "." not in name:
        return getattr(GRPOTrainer, name)
    module, _, member = name.rpartition(".")
    return getattr(importlib.import_module(module), member)


def _assigned_in_trl(name: str) -> bool:
    return name in vars(GRPOTrainer) or any(name in vars(c) for c in GRPOTrainer.__mro__) or bool(
        re.search(rf"self\.{re.escape(name)}\s*(:[^=\n]+)?=[^=]", _SOURCES))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_private_function_exists_with_the_parameters_seal_relies_on(name):
    try:
        function = _lookup(name)
    except (AttributeError, ImportError):
        pytest.fail(f"{name} is gone in {VERSIONS}; SEALTrainer overrides or calls it: port seal_trl/trainer.py")
    params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    names = [p.name for p in params]
    expected = list(FUNCTIONS[name])
    at = [names.index(n) if n in names else -1 for n in expected]
    assert -1 not in at and at == sorted(at), (
        f"{name} in {VERSIONS} takes {names}; SEALTrainer relies on {expected} (in that order): port "
        "seal_trl/trainer.py and its TRL_INTERNALS entry")
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in expected]
    assert not required, f"{name} in {VERSIONS} needs new parameter(s) {required} that SEALTrainer does not pass"
    override = vars(SEALTrainer).get(name)
    if override is not None:
        ours = [p for p in inspect.signature(override).parameters.values() if p.name != "self"]
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in ours):
            # TRL calls the override with its own parameters: they must be the same
            assert [p.name for p in ours] == names, (
                f"SEALTrainer.{name} takes {[p.name for p in ours]} but {VERSIONS} calls it with {names}")


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_each_private_attribute_is_still_set_by_trl(name):
    if "." in name:
        module, _, member = name.rpartition(".")
        assert hasattr(importlib.import_module(module), member), (
            f"{name} is gone in {VERSIONS}; SEALTrainer reads it: port seal_trl/trainer.py")
        return
    assert _assigned_in_trl(name), (
        f"GRPOTrainer/Trainer in {VERSIONS} no longer set {name}; SEALTrainer reads it: port seal_trl/trainer.py")


def test_the_advantages_log_seal_rewrites_is_still_there():
    assert re.search(r"self\._logs\s*=\s*\{[^}]*\"advantages\"", _SOURCES), (
        f"GRPOTrainer._logs in {VERSIONS} has no 'advantages' entry, which SEALTrainer._apply_variant rewrites")


def test_the_list_names_every_private_member_seal_uses():
    """Every method SEALTrainer overrides and every private (or TRL-set) name trainer.py reads on self is listed."""
    overridden = {n for n, v in vars(SEALTrainer).items()
                  if callable(v) and not n.startswith("__") and hasattr(GRPOTrainer, n)}
    source = Path(seal_trainer.__file__).read_text()
    used = set(re.findall(r"(?:self|super\(\))\.(\w+)", source))
    from_trl = {n for n in used if n not in vars(SEALTrainer) and (n.startswith("_") or n in TRL_INTERNALS)
                and _assigned_in_trl(n)}
    missing = sorted((overridden | from_trl) - set(TRL_INTERNALS))
    assert not missing, f"add {missing} to seal_trl.trainer.TRL_INTERNALS (with the parameters relied on)"
