"""transforms.dp.clipped_grad beside another thread's fm.apply: the other thread's calls
are neither tapped nor recorded into the plan (real threads, events forcing the
interleaving: the other thread applies its model while the plan is being made)."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

import funcmodels as fm
from tests.test_tap import run_threads
from transforms import dp

nn = fm.nn


def test_another_threads_apply_does_not_enter_the_plan_or_the_gradients():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    # Same layer paths, other shapes: recorded into the plan, it breaks the clipped pass.
    other = fm.init(fm.key(1), nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1, 0])

    def plain_loss(p, xb, yb):
        return F.cross_entropy(fm.apply(p, xb), yb, reduction="none")

    want_grads, want_norms = dp.clipped_grad(plain_loss, max_norm=0.5)(params, x, y)
    planning, applied = threading.Event(), threading.Event()
    got = {}

    def waiting_loss(p, xb, yb):
        if not planning.is_set():  # the first call is the planning pass, under its tap
            planning.set()
            assert applied.wait(30)
        return plain_loss(p, xb, yb)

    def a():
        got["grads"], got["norms"] = dp.clipped_grad(waiting_loss, max_norm=0.5)(params, x, y)

    def b():
        assert planning.wait(30)
        got["other"] = fm.apply(other, x)
        applied.set()

    run_threads(a, b)
    torch.testing.assert_close(got["norms"], want_norms, atol=0, rtol=0)
    for name, g in want_grads.flat().items():
        torch.testing.assert_close(got["grads"][name], g, atol=0, rtol=0)
    torch.testing.assert_close(got["other"], fm.apply(other, x), atol=0, rtol=0)
