"""The mutation check's list cannot rot silently: every snippet still occurs exactly once in its file, and every
test it names still exists. (The mutations themselves run in `python tests/mutation_check.py`, not here.)"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tests" / "mutation_check.py")
mutation_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation_check)
MUTATIONS = mutation_check.MUTATIONS


def test_mutation_names_are_unique():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_snippet_occurs_exactly_once_and_its_tests_exist(mutation):
    count = mutation_check.occurrences(mutation)
    assert count == 1, (f"mutation {mutation.name!r}: its snippet occurs {count} times in {mutation.path} (must be "
                        "once); update it in tests/mutation_check.py to the code's current form")
    assert mutation.replacement != mutation.snippet and mutation.tests
    for node in mutation.tests:
        path, _, name = node.partition("::")
        function = re.sub(r"\[.*\]$", "", name)
        tree = ast.parse((ROOT / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"mutation {mutation.name!r} names {node}, which no longer exists"
