"""fm.optim.microbatch against optax.microbatch, side by side, in float64: the same
function and accumulators on the same batch give the same values (to 1e-12 absolute:
the sums are formed in the same order, over the same strided microbatches). Skipped when
jax or optax is absent."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from funcmodels import optim

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-12
_G = np.random.default_rng(0)
X = _G.standard_normal((12, 3))
Y = _G.standard_normal((3, 12))
W = _G.standard_normal((3, 2))


def _fun(lib):
    def fun(w, x, scale=1.0, y=None):
        h = x @ w  # (rows, 2)
        out = {"h": h * scale, "total": (h**2).sum()}
        if y is not None:
            out["y"] = (y**2).sum(1)  # y has its batch on axis 1
        return out, (h.sum(), h[:, 0])

    return fun


def _accumulators(mb):
    return {
        "sum": mb.AccumulationType.SUM,
        "mean": mb.AccumulationType.MEAN,
        "running": mb.AccumulationType.RUNNING_MEAN,
        "tree": (
            {
                "h": mb.AccumulationType.CONCAT,
                "total": mb.AccumulationType.SUM,
                "y": mb.AccumulationType.CONCAT,
            },
            (mb.AccumulationType.MEAN, mb.AccumulationType.CONCAT),
        ),
    }


@pytest.mark.parametrize("acc", ["sum", "mean", "running", "tree"])
@pytest.mark.parametrize("size", [1, 3, 4, 12])
def test_microbatch_matches_optax(acc, size):
    got = optim.microbatch(
        _fun(torch), 1, size, _accumulators(optim)[acc], argnames="y", in_axes=(0, 1)
    )(torch.as_tensor(W), torch.as_tensor(X), scale=2.0, y=torch.as_tensor(Y))
    want = optax.microbatch(
        _fun(jnp),
        1,
        size,
        _accumulators(optax.microbatching)[acc],
        argnames="y",
        in_axes=(0, 1),
    )(jnp.asarray(W), jnp.asarray(X), scale=2.0, y=jnp.asarray(Y))
    g, w = (
        jax.tree.leaves(jax.tree.map(np.asarray, want)),
        [t.numpy() for t in torch.utils._pytree.tree_leaves(got)],
    )
    assert len(g) == len(w)
    for a, b in zip(w, g, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def test_num_real_microbatches_matches_optax():
    mb = optim.AccumulationType.RUNNING_MEAN
    got = optim.microbatch(lambda x: (x**2).sum(0), 0, 2, mb, num_real_microbatches=3)(
        torch.as_tensor(X)
    )
    want = optax.microbatch(
        lambda x: (x**2).sum(0),
        0,
        2,
        optax.microbatching.AccumulationType.RUNNING_MEAN,
        num_real_microbatches=3,
    )(jnp.asarray(X))
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=0, atol=TOL)


def test_microbatch_signature_and_errors():
    ours = inspect.signature(optim.microbatch).parameters
    theirs = inspect.signature(optax.microbatch).parameters
    assert list(ours) == list(theirs)
    assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()]
    assert [m.name for m in optim.AccumulationType] == [
        m.name for m in optax.microbatching.AccumulationType
    ]
    fun = optim.microbatch(lambda x, y: x.sum() + y.sum(), (0, 1), 4)
    with pytest.raises(ValueError, match="one batch size"):
        fun(torch.ones(8), torch.ones(12))
    with pytest.raises(ValueError, match="divisible"):
        fun(torch.ones(6), torch.ones(6))
    ints = optim.microbatch(lambda x: x, 0, 2, optim.AccumulationType.MEAN)
    with pytest.raises(ValueError, match="floating"):
        ints(torch.arange(4))
    assert optim.microbatch(len, 0, None) is len
