import seal_trl


def test_every_public_name_resolves():
    for name in seal_trl.__all__:
        assert getattr(seal_trl, name).__name__ == name


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        seal_trl.Nope  # noqa: B018


def test_the_type_checking_imports_list_every_public_name():
    # the API reference (mkdocstrings reads the package statically) and type checkers see only that block
    import ast
    from pathlib import Path

    tree = ast.parse(Path(seal_trl.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {(node.module, alias.name) for node in block.body for alias in node.names}
    assert imported == {(module, name) for name, module in seal_trl._EXPORTS.items()}
