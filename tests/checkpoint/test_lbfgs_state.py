"""The L-BFGS and line-search states go through fm.checkpoint: registered under their
public names, and a state saved after a step loads back bit for bit and gives the same
next update."""

from __future__ import annotations

import torch

import funcmodels as fm
from funcmodels.checkpoint import _registry

from .test_format import same

NEW_STATES = [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByLBFGSState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
]


def test_lbfgs_states_are_registered_under_their_public_names():
    for name in NEW_STATES:
        assert _registry.resolve(f"funcmodels.optim.{name}") is getattr(fm.optim, name)


def _loss(p, x, y):
    return ((fm.apply(p, x) - y) ** 2).mean()


def test_lbfgs_state_round_trip(tmp_path):
    o = fm.optim
    params = fm.init(fm.key(0), fm.nn.Linear(3, 2))
    x, y = fm.random.normal(fm.key(1), (6, 3)), fm.random.normal(fm.key(2), (6, 2))
    opts = [
        o.lbfgs(memory_size=3),
        o.lbfgs(linesearch=o.scale_by_backtracking_linesearch(10, store_grad=True)),
    ]
    for i, opt in enumerate(opts):
        state = opt.init(params)
        value_and_grad = o.value_and_grad_from_state(_loss)
        for _ in range(2):  # a state past its first steps: the memory holds differences
            value, grad = value_and_grad(params, x, y, state=state)
            kw = {"value": value, "grad": grad, "value_fn": _loss, "x": x, "y": y}
            updates, state = opt.update(grad, state, params, **kw)
            params = o.apply_updates(params, updates)
        tree = {"params": params, "opt": state}
        fm.checkpoint.save(tmp_path / f"c{i}", tree)
        got = fm.checkpoint.load(tmp_path / f"c{i}", like=tree)
        same(got, tree)
        value, grad = value_and_grad(params, x, y, state=state)
        kw = {"value": value, "grad": grad, "value_fn": _loss, "x": x, "y": y}
        want_u, want_s = opt.update(grad, state, params, **kw)
        value, grad = value_and_grad(got["params"], x, y, state=got["opt"])
        kw = {"value": value, "grad": grad, "value_fn": _loss, "x": x, "y": y}
        got_u, got_s = opt.update(grad, got["opt"], got["params"], **kw)
        same(got_u, want_u)
        same(got_s, want_s)
        assert isinstance(got["opt"][0], o.ScaleByLBFGSState)
        assert torch.equal(got["opt"][0].count, state[0].count)
