"""EarlyExit with a NaN (or infinite) depth estimate: no early limit, the sample may run
every block, in eager mode and under vmap alike; never the undefined int64 cast of NaN,
which sent every such sample to min_depth."""

from __future__ import annotations

import dataclasses

import torch
from torch.func import vmap

import funcmodels as fm
import transforms

nn = fm.nn


@dataclasses.dataclass(frozen=True)
class _Estimate(fm.Spec):
    """An estimator giving the first feature of each sample as its estimate ``(N, 1)``."""

    def forward(self, ctx, x):
        return x[:, :1]


def test_a_nan_or_infinite_estimate_sets_no_depth_limit():
    width, depth = 6, 4
    spec = transforms.EarlyExit(
        tuple(nn.Linear(width, width) for _ in range(depth)),
        tuple(nn.Linear(width, 3) for _ in range(depth)),
        threshold=1.0,  # max_prob never exceeds 1: every sample leaves at its fallback
        min_depth=2,
        depth_estimator=_Estimate(),
    )
    params = fm.init(fm.key(0), spec)
    x = torch.ones(5, width)
    x[:, 0] = torch.tensor([0.0, float("nan"), 0.5, float("inf"), float("-inf")])
    # estimate 0 -> floor(2 * 1) = 2; 0.5 -> 3; NaN and inf -> no limit (4); -inf -> 2
    want = [2, 4, 3, 4, 2]
    assert fm.run(params, x).aux[""]["depth"].tolist() == want

    def one(xi):
        return fm.run(params, xi[None]).aux[""]["depth"][0]

    assert vmap(one)(x).tolist() == want
