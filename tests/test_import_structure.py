"""The package's import graph: no module imports one that imports it back, and lower layers never import higher ones.

The graph is read from the source (every `import`/`from ... import`, including those inside functions), so a lazy
import that would close a circle counts as much as a top-level one. Imports under `if TYPE_CHECKING:` are left out
of `graph` and counted in `typed_graph`: a type-only circle still ties two modules together, so it is refused too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seal_trl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str], type_checking: bool = False) -> set[str]:
    """The seal_trl modules that `path` imports (a `from pkg import name` counts as pkg.name when that is a module);
    with `type_checking`, also those imported under `if TYPE_CHECKING:`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


@pytest.fixture(scope="module")
def typed_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules, type_checking=True) for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_the_graph_is_read(graph):
    # A broken reader would find no edges and no cycles; check it sees edges we know exist.
    assert "seal_trl.inner.jobs" in graph["seal_trl.inner.engine"]
    assert "seal_trl.inner.jobs" in graph["seal_trl.inner.batched"]
    assert "seal_trl.models" in graph["seal_trl.tasks.arc.evaluation"]  # a lazy import inside a function
    assert "seal_trl.inner.engine" not in graph["seal_trl.inner.batched"]  # it drives the engine as host.LoopHost


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_type_only_imports_are_read(tmp_path, monkeypatch):
    package = tmp_path / "seal_trl"
    package.mkdir()
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("import typing\nfrom .a import A\nif typing.TYPE_CHECKING:\n    import seal_trl.c\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    modules = {"seal_trl.a", "seal_trl.b", "seal_trl.c"}
    assert _imports(package / "a.py", modules) == set()
    assert _imports(package / "a.py", modules, type_checking=True) == {"seal_trl.b"}
    assert _imports(package / "b.py", modules, type_checking=True) == {"seal_trl.a", "seal_trl.c"}


def test_no_import_cycles_through_type_only_imports(typed_graph):
    assert _cycles(typed_graph) == []


# What each layer may not import. Core pieces sit under the trainer and the CLI; the inner loop under the tasks.
FORBIDDEN = {
    "seal_trl.plans": ("seal_trl.inner", "seal_trl.tasks", "seal_trl.trainer", "seal_trl.cli", "seal_trl.continual"),
    "seal_trl.probes": ("seal_trl.inner", "seal_trl.tasks", "seal_trl.trainer", "seal_trl.cli", "seal_trl.continual"),
    "seal_trl.inner": ("seal_trl.tasks", "seal_trl.reward", "seal_trl.trainer", "seal_trl.config", "seal_trl.cli",
                       "seal_trl.continual", "seal_trl.evaluation"),
    "seal_trl.tasks": ("seal_trl.reward", "seal_trl.trainer", "seal_trl.config", "seal_trl.cli", "seal_trl.continual"),
    "seal_trl.continual": ("seal_trl.trainer", "seal_trl.cli"),
    "seal_trl.reward": ("seal_trl.trainer", "seal_trl.cli"),
    "seal_trl.callbacks": ("seal_trl.trainer", "seal_trl.cli"),
    "seal_trl.evaluation": ("seal_trl.trainer", "seal_trl.cli"),
    "seal_trl.trainer": ("seal_trl.cli",),
}


def test_lower_layers_do_not_import_higher_ones(graph):
    violations = []
    for module, imported in graph.items():
        for layer, banned in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                violations += [f"{module} -> {m}" for m in imported
                               if any(m == b or m.startswith(b + ".") for b in banned)]
    assert violations == []


def test_the_reward_imports_no_task_but_the_protocol(typed_graph):
    # reward.py is task-agnostic (DESIGN.md section 2): a task's baselines reach it through `task.baseline(kind)`
    tasks = sorted(m for m in typed_graph["seal_trl.reward"] if m.startswith("seal_trl.tasks"))
    assert tasks == ["seal_trl.tasks.base"]
