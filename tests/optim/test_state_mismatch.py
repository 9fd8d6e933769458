"""A state from another optimiser passed to ``update`` is refused with a ``TypeError``
naming the piece that got it and what it got (or a ``ValueError`` naming the layer, for a
state made for other params), never taken silently: the stateless pieces used to pass any
state through, so ``sgd`` ran with an Adam state."""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm

optim = fm.optim
nn = fm.nn


def params() -> fm.Params:
    return fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))


CASES = {
    # optimiser, the optimiser whose state it gets, the message
    "sgd given adam's": (
        optim.sgd(0.1),
        optim.adam(0.1),
        r"fm\.optim\.identity: expected the EmptyState .* got ScaleByAdamState",
    ),
    "clip given scale_by_adam's": (
        optim.clip_by_global_norm(1.0),
        optim.scale_by_adam(),
        r"clip_by_global_norm: expected the EmptyState .* got ScaleByAdamState",
    ),
    "decay given adam's": (
        optim.add_decayed_weights(0.1),
        optim.adam(0.1),
        r"add_decayed_weights: expected the EmptyState .* got tuple",
    ),
    "adam+scale (fused) given two adam states": (
        optim.chain(optim.scale_by_adam(), optim.scale(-1e-3)),
        optim.chain(optim.scale_by_adam(), optim.scale_by_adam()),
        r"fm\.optim\.scale: expected the EmptyState .* got ScaleByAdamState",
    ),
    "adam given adamw's": (
        optim.adam(1e-3),
        optim.adamw(1e-3),
        r"chain: expected the tuple of 2 states .* got a tuple of 3",
    ),
    "adam given momentum's": (
        optim.adam(1e-3),
        optim.chain(optim.trace(0.9), optim.scale(-0.1)),
        r"scale_by_adam: expected the ScaleByAdamState .* got TraceState",
    ),
    "chain given a bare state": (
        optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-3)),
        optim.scale_by_adam(),
        r"chain: expected the tuple of 2 states .* got ScaleByAdamState",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_state_of_another_optimiser_is_refused(case):
    opt, other, message = CASES[case]
    p = params()
    grads = fm.tree.map(torch.ones_like, p)
    with pytest.raises(TypeError, match=message + r".*not interchangeable between optimisers"):
        opt.update(grads, other.init(p), p)
    opt.update(grads, opt.init(p), p)  # its own state passes


def test_a_state_made_for_other_params_names_the_layer():
    p = params()
    other = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)))
    opt = optim.adam(1e-3)
    with pytest.raises(ValueError, match=r"different model: layer '2': expected .*out_features=2"):
        opt.update(fm.tree.map(torch.ones_like, p), opt.init(other), p)


def test_an_empty_tuple_is_a_stateless_pieces_state_as_in_optax():
    p = params()
    grads = fm.tree.map(torch.ones_like, p)
    updates, state = optim.clip_by_global_norm(1e6).update(grads, (), p)
    assert state == () and torch.equal(updates["0.weight"], grads["0.weight"])
