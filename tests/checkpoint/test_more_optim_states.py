"""The states of the fm.optim optimisers added after the first parity suite go through
fm.checkpoint: every new named tuple is registered under its public name, and a state saved
after a step loads back bit for bit and gives the same next update."""

from __future__ import annotations

import torch

import funcmodels as fm
from funcmodels.checkpoint import _registry

from .test_format import same

NEW_STATES = [
    "AddNoiseState",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "FactoredState",
    "LookaheadParams",
    "LookaheadState",
    "MonitorState",
    "PartitionState",
    "ScaleByAdaDeltaState",
    "ScaleByAdanState",
    "ScaleByBeliefState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByRpropState",
    "ScaleBySM3State",
    "SnapshotState",
    "ZeroNansState",
]


def test_new_states_are_registered_under_their_public_names():
    for name in NEW_STATES:
        assert _registry.resolve(f"funcmodels.optim.{name}") is getattr(fm.optim, name)


def test_new_states_round_trip(tmp_path):
    o = fm.optim
    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.ReLU(), fm.nn.Linear(4, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 3))
    grads = torch.func.grad(lambda p: fm.apply(p, x).square().sum())(params)
    opts = [
        o.radam(1e-2),
        o.adabelief(1e-2),
        o.yogi(1e-2),
        o.chain(o.zero_nans(), o.adan(1e-2)),
        o.adadelta(1.0),
        o.novograd(1e-2),
        o.rprop(1e-2),
        o.sm3(0.1),
        o.optimistic_adam_v2(1e-2),
        o.adafactor(1e-2, min_dim_size_to_factor=2),
        o.noisy_sgd(0.1, key=3),
        o.partition(
            {"a": o.lars(0.1), "b": o.fromage(0.1)},
            lambda p: fm.tree.map_with_path(lambda path, _: "a" if path < "1" else "b", p),
        ),
        o.conditionally_transform(o.adam(1e-2), lambda s: s % 2 == 0),
        o.conditionally_mask(o.sgd(0.1), lambda s: s > 0),
        o.named_chain(("snap", o.snapshot("norm", o.global_norm)), ("sgd", o.sgd(0.1))),
        o.monitor({"ema": o.measure_with_ema(o.global_norm, 0.9)}),
    ]
    for i, opt in enumerate(opts):
        s = opt.init(params)
        _, s = opt.update(grads, s, params)  # a state past its first step
        tree = {"params": params, "opt": s}
        fm.checkpoint.save(tmp_path / f"c{i}", tree)
        got = fm.checkpoint.load(tmp_path / f"c{i}", like=tree)
        same(got, tree)
        want_u, want_s = opt.update(grads, s, params)
        got_u, got_s = opt.update(grads, got["opt"], got["params"])
        same(got_u, want_u)
        same(got_s, want_s)
    # lookahead: its state and its params (a named tuple too)
    opt = o.lookahead(o.adam(1e-2), 2, 0.5)
    both = o.LookaheadParams.init_synced(params)
    s = opt.init(both)
    _, s = opt.update(grads, s, both)
    fm.checkpoint.save(tmp_path / "look", {"params": both, "opt": s})
    got = fm.checkpoint.load(tmp_path / "look")
    same(got, {"params": both, "opt": s})
