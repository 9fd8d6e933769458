"""Fixtures shared by the tests of the transforms package."""

from __future__ import annotations

import pytest


@pytest.fixture
def scratch_converters(monkeypatch):
    """Converters registered during the test with ``transforms.register_converter`` are
    forgotten after it: both tables of :mod:`transforms.bridge._module` are replaced by copies."""
    import transforms.bridge._module as module

    for name in ("_BY_SPEC", "_BY_MODULE"):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    return module
