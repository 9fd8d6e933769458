"""chain: the pieces' list forms run on one flattening, write only into updates a piece
of the chain made, and mix with tree-level transformations (a user's, MultiSteps)."""

from __future__ import annotations

import pytest
import torch

from funcmodels import optim


def tree(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(3, generator=g, dtype=torch.float64),
    }


def passthrough():
    """A user's piece that returns the updates it was given."""
    return optim.GradientTransformation(lambda p: optim.EmptyState(), lambda u, s, p=None: (u, s))


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.chain(optim.add_decayed_weights(0.0), optim.scale(-1.0)),
        lambda: optim.chain(optim.identity(), optim.scale(2.0)),
        lambda: optim.chain(optim.scale(2.0), passthrough(), optim.scale(3.0)),
        lambda: optim.chain(optim.trace(0.9), optim.scale(-1.0)),
        lambda: optim.chain(optim.ema(0.9, debias=False), optim.scale(-1.0)),
        lambda: optim.chain(optim.chain(optim.scale(2.0)), optim.add_decayed_weights(0.1)),
    ],
    ids=["zero-decay", "identity", "user-piece", "trace", "biased-ema", "nested"],
)
def test_pieces_never_write_into_what_they_were_given_or_their_state(make):
    params = tree()
    opt = make()
    state = opt.init(params)
    for seed in range(1, 4):
        g = tree(seed)
        kept = {k: v.clone() for k, v in g.items()}
        updates, new_state = opt.update(g, state, params)
        again, _ = opt.update(g, state, params)  # the same call: the state was not written
        assert all(torch.equal(g[k], kept[k]) for k in g)
        assert all(torch.equal(updates[k], again[k]) for k in g)
        state = new_state


def test_a_chain_takes_multi_steps_and_agrees_with_its_pieces_run_one_by_one():
    params = tree()
    pieces = [
        optim.clip_by_global_norm(1.0),
        optim.MultiSteps(optim.adam(0.1), 2),
        optim.scale(0.5),
    ]
    opt = optim.chain(*pieces)
    state, states = opt.init(params), [p.init(params) for p in pieces]
    for seed in range(1, 5):
        g = tree(seed)
        out, state = opt.update(g, state, params)
        u = g
        for i, p in enumerate(pieces):
            u, states[i] = p.update(u, states[i], params)
        for k in g:
            assert torch.equal(out[k], u[k])


def test_a_piece_that_needs_the_params_says_so_inside_a_chain():
    opt = optim.chain(optim.scale(1.0), optim.add_decayed_weights(0.1))
    with pytest.raises(ValueError, match=r"add_decayed_weights: needs the params"):
        opt.update(tree(1), opt.init(tree()))


@pytest.mark.parametrize(
    "tail",
    [
        lambda: [optim.scale(-0.01)],
        lambda: [optim.add_decayed_weights(0.1), optim.scale(-0.01)],
        lambda: [optim.add_decayed_weights(optim.linear_schedule(0.1, 0.0, 3)), optim.scale(0.3)],
        lambda: [optim.scale_by_learning_rate(optim.warmup_cosine_decay_schedule(0.0, 0.1, 2, 5))],
        lambda: [optim.add_decayed_weights(0.0), optim.scale(-1e-3)],
    ],
    ids=["lr", "decay-lr", "decay-schedule", "lr-schedule", "zero-decay"],
)
@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_then_decay_then_scale_runs_as_one_step_with_the_same_values(tail, nesterov):
    # scale_by_adam, [add_decayed_weights,] scale run as one step (the scale folded into
    # Adam's denominator); an identity in between keeps them apart: same values, rounding
    params = tree()
    fused = optim.chain(optim.scale_by_adam(nesterov=nesterov), *tail())
    apart = optim.chain(optim.scale_by_adam(nesterov=nesterov), optim.identity(), *tail())
    a, b = fused.init(params), apart.init(params)
    for seed in range(1, 6):
        g = tree(seed)
        g["b"][0] = 0.0  # a coordinate whose second moment stays 0 (with a zero rate: 0 / 0)
        u, a = fused.update(g, a, params)
        w, b = apart.update(g, b, params)
        for k in g:
            assert torch.isfinite(u[k]).all()
            torch.testing.assert_close(u[k], w[k], rtol=1e-13, atol=1e-16)
