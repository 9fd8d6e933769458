"""examples/bring_your_own.py runs end to end: every step reports what it promises."""

from __future__ import annotations

import pytest

from tests.helpers import parse_float, run_example


@pytest.mark.slow
def test_bring_your_own_example_converts_trains_privately_and_ships_back():
    out = run_example("bring_your_own.py", "--epochs", "2")
    assert "converted: ['Flatten', 'Linear', 'TorchModule', 'Linear']" in out
    # float32 norms of about 1-10, summed in another order by the closed forms: 5e-6 seen
    assert parse_float(r"torch.func's recipe: max difference ([0-9.e+-]+)", out) < 1e-4
    # Two epochs land far above chance (0.1): 0.69-0.83 over seeds 0-5; a broken step
    # would not.
    assert parse_float(r"test accuracy: ([0-9.]+)", out) > 0.5
    assert "shipped back as: Flatten -> Linear -> SwiGLUBlock -> Linear" in out
    assert "predictions identical: True" in out
    assert "loaded back: predictions identical: True" in out
