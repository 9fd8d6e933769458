"""What the torch bridge's tests compare with: the tolerance of a module's outputs against
``fm.apply`` (the same float32 kernels run on both sides, so only summation order may
differ) and exact equality of state_dicts."""

from __future__ import annotations

import torch

OUT_TOL = dict(atol=1e-6, rtol=1e-5)


def assert_same_tensors(got: dict, want: dict) -> None:
    """The same names in the same order, each tensor of the same dtype and values."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k
