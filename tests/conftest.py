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
