"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from funcmodels import _registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """Spec classes and config aliases registered during the test are forgotten after it.

    Every table of :mod:`funcmodels._registry` is replaced by a copy for the test, so a
    public spec class defined inside a test (which registers itself) or an alias added
    with ``fm.register_layer`` cannot leak into other tests.
    """
    for name in ("_TYPES", "_NAMES", "_PRIVATE", "_ALIASES", "_ALIAS_SHOWN", "_CONFIG_NAME"):
        monkeypatch.setattr(
            _registry, name, type(getattr(_registry, name))(getattr(_registry, name))
        )
    return _registry


@pytest.fixture
def scratch_converters(monkeypatch):
    """Converters registered during the test with ``transforms.register_converter`` are
    forgotten after it: both tables of :mod:`transforms._module` are replaced by copies."""
    import transforms._module as module

    for name in ("_BY_SPEC", "_BY_MODULE"):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    return module
