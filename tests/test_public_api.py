import seal_trl


def test_every_public_name_resolves():
    for name in seal_trl.__all__:
        assert getattr(seal_trl, name).__name__ == name


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        seal_trl.Nope  # noqa: B018
