"""fm.optim.second_order against optax.second_order 0.2.8 (float64, 1e-10) and against
torch.autograd.functional.hessian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import funcmodels as fm
from funcmodels.optim import second_order

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10


def _data():
    g = torch.Generator().manual_seed(0)
    # keys in sorted order: jax ravels a dict by sorted key, torch by insertion order
    params = {
        "b": torch.randn(2, generator=g, dtype=torch.float64),
        "w": torch.randn(3, 2, generator=g, dtype=torch.float64),
    }
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    return params, x, y


def fm_loss(p, x, y):
    logits = torch.tanh(x @ p["w"] + p["b"])
    return fm.optim.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def jax_loss(p, x, y):
    logits = jnp.tanh(x @ p["w"] + p["b"])
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _j(tree):
    return jax.tree.map(lambda t: jnp.asarray(t.numpy()), tree)


def _optax(name, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in optax 0.2.8
        return getattr(optax.second_order, name)(*args)


def test_hvp_matches_optax():
    params, x, y = _data()
    v = torch.linspace(-1, 1, 8, dtype=torch.float64)
    ours = second_order.hvp(fm_loss, v, params, x, y)
    theirs = _optax("hvp", jax_loss, jnp.asarray(v.numpy()), _j(params), _j(x), _j(y))
    for k in ours:
        assert np.abs(ours[k].numpy() - np.asarray(theirs[k])).max() <= TOL


def test_diagonals_match_optax_and_torch():
    params, x, y = _data()
    ours = second_order.hessian_diag(fm_loss, params, x, y)
    theirs = _optax("hessian_diag", jax_loss, _j(params), _j(x), _j(y))
    assert np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL
    flat = torch.cat([params["b"], params["w"].reshape(-1)])

    def flat_loss(f):
        return fm_loss({"b": f[:2], "w": f[2:].reshape(3, 2)}, x, y)

    full = torch.autograd.functional.hessian(flat_loss, flat)
    assert float((ours - torch.diagonal(full)).abs().max()) <= 1e-12
    fisher = second_order.fisher_diag(fm_loss, params, x, y)
    theirs = _optax("fisher_diag", jax_loss, _j(params), _j(x), _j(y))
    assert np.abs(fisher.numpy() - np.asarray(theirs)).max() <= TOL


def test_bad_vector_is_refused():
    params, x, y = _data()
    with pytest.raises(ValueError, match="8 entries"):
        second_order.hvp(fm_loss, torch.ones(3, dtype=torch.float64), params, x, y)
