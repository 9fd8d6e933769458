"""fm.optim.microbatching against optax.microbatching, side by side, in float64:
``reshape_batch_axis``, ``micro_vmap`` and ``micro_grad`` give optax's values (to 1e-12
absolute: the same strided microbatches, summed in the same order), and against the
unbatched function (``vmap`` / a loop of per-example gradients). Skipped when jax or optax
is absent."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from funcmodels import optim
from funcmodels.optim import microbatching as mb

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-12
_G = np.random.default_rng(1)
P = _G.standard_normal(3)
X = _G.standard_normal((12, 3))
T = _G.standard_normal(12)


def _close(got, want):
    g = [t.detach().numpy() for t in pytree.tree_leaves(got)]
    w = [np.asarray(a) for a in jax.tree.leaves(want)]
    assert len(g) == len(w)
    for a, b in zip(g, w, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def test_same_objects_and_signatures():
    assert mb.microbatch is optim.microbatch
    assert mb.Accumulator is optim.Accumulator and mb.AccumulationType is optim.AccumulationType
    assert sorted(mb.__all__) == sorted(n for n in dir(optax.microbatching) if n[0] != "_")
    for name in ("micro_grad", "micro_vmap", "reshape_batch_axis"):
        ours = inspect.signature(getattr(mb, name)).parameters
        theirs = inspect.signature(getattr(optax.microbatching, name)).parameters
        assert list(ours) == list(theirs)
        assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()]
        for p, q in zip(ours.values(), theirs.values(), strict=True):
            if isinstance(q.default, optax.microbatching.AccumulationType):
                assert p.default.name == q.default.name, (name, p.name)
            elif not callable(q.default):  # vmap_fn and the lambdas differ by library
                assert p.default == q.default, (name, p.name)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("axis", [0, 1])
def test_reshape_batch_axis_matches_optax(size, axis):
    a = _G.standard_normal((2, 12, 5)) if axis == 1 else X
    got = mb.reshape_batch_axis({"a": torch.as_tensor(a)}, size, axis)
    want = optax.microbatching.reshape_batch_axis({"a": jnp.asarray(a)}, size, axis)
    _close(got, want)


def test_reshape_batch_axis_rows_are_microbatches():
    """Row ``i`` of the reshape is microbatch ``i`` of ``microbatch``'s split."""
    x = torch.arange(12)
    got = optim.microbatch(lambda r: r, 0, 4, optim.AccumulationType.CONCAT)
    rows = mb.reshape_batch_axis(x, 4)
    assert rows.tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert torch.equal(got(x), x)
    with pytest.raises(ValueError, match="divisible"):
        mb.reshape_batch_axis(x, 5)


_ACCS = ["CONCAT", "SUM", "MEAN"]


@pytest.mark.parametrize("acc", _ACCS)
@pytest.mark.parametrize("size", [None, 1, 3, 12])
def test_micro_vmap_matches_optax(acc, size):
    def fun(lib):
        def f(p, x, *, scale):
            return {"y": (x * p).sum() * scale, "z": x * scale}

        return f

    s = _G.standard_normal(12)
    got = mb.micro_vmap(
        fun(torch), in_axes=(None, 0), microbatch_size=size, accumulator=mb.AccumulationType[acc]
    )(torch.as_tensor(P), torch.as_tensor(X), scale=torch.as_tensor(s))
    want = optax.microbatching.micro_vmap(
        fun(jnp),
        in_axes=(None, 0),
        microbatch_size=size,
        accumulator=optax.microbatching.AccumulationType[acc],
    )(jnp.asarray(P), jnp.asarray(X), scale=jnp.asarray(s))
    _close(got, want)
    if acc == "CONCAT":  # equals the plain vmap, keyword argument mapped on dim 0
        plain = torch.func.vmap(lambda p, x, s: fun(torch)(p, x, scale=s), (None, 0, 0))(
            torch.as_tensor(P), torch.as_tensor(X), torch.as_tensor(s)
        )
        _close(got, jax.tree.map(np.asarray, {k: v.numpy() for k, v in plain.items()}))


def _loss(lib):
    def loss(p, x, t):
        pred = x @ p
        return 0.5 * lib.mean((pred - t) ** 2), pred

    return loss


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("size", [None, 2, 4])
@pytest.mark.parametrize("acc", ["SUM", "MEAN", "RUNNING_MEAN"])
def test_micro_grad_matches_optax(keep, size, acc):
    def clip(lib):
        return lambda g: (g / lib.sqrt(1.0 + (g**2).sum()), g**2)

    got = mb.micro_grad(
        _loss(torch),
        has_aux=True,
        batch_argnums=(1, 2),
        keep_batch_dim=keep,
        microbatch_size=size,
        accumulator=mb.AccumulationType[acc],
        transform_fn=clip(torch),
        metrics_fn=torch.linalg.norm,
    )(torch.as_tensor(P), torch.as_tensor(X), torch.as_tensor(T))
    want = optax.microbatching.micro_grad(
        _loss(jnp),
        has_aux=True,
        batch_argnums=(1, 2),
        keep_batch_dim=keep,
        microbatch_size=size,
        accumulator=optax.microbatching.AccumulationType[acc],
        transform_fn=clip(jnp),
        metrics_fn=jnp.linalg.norm,
    )(jnp.asarray(P), jnp.asarray(X), jnp.asarray(T))
    _close(got, want)
    assert type(got[1]).__name__ == "IndividualOutputs"


def test_micro_grad_equals_a_loop_of_per_example_gradients():
    """Without aux or metrics: the summed per-example gradients and each example's value,
    against ``torch.autograd.grad`` example by example (1e-12)."""
    p, x, t = (torch.as_tensor(a) for a in (P, X, T))
    loss = mb.micro_grad(lambda *a: _loss(torch)(*a)[0], batch_argnums=(1, 2), microbatch_size=3)
    got, aux = loss(p, x, t)
    grads, values = torch.zeros(3, dtype=torch.float64), []
    for i in range(12):
        q = p.clone().requires_grad_()
        v = _loss(torch)(q, x[i : i + 1], t[i : i + 1])[0]
        grads += torch.autograd.grad(v, q)[0]
        values.append(v.detach())
    torch.testing.assert_close(got, grads, rtol=0, atol=TOL)
    torch.testing.assert_close(aux.values, torch.stack(values), rtol=0, atol=TOL)
    assert aux.metrics is None and aux.aux is None


def test_micro_grad_num_real_microbatches_matches_optax():
    got = mb.micro_grad(
        lambda *a: _loss(torch)(*a)[0],
        batch_argnums=(1, 2),
        microbatch_size=2,
        num_real_microbatches=4,
    )(torch.as_tensor(P), torch.as_tensor(X), torch.as_tensor(T))[0]
    want = optax.microbatching.micro_grad(
        lambda *a: _loss(jnp)(*a)[0],
        batch_argnums=(1, 2),
        microbatch_size=2,
        num_real_microbatches=4,
    )(jnp.asarray(P), jnp.asarray(X), jnp.asarray(T))[0]
    _close(got, want)


def test_micro_vmap_refuses_out_axes():
    with pytest.raises(NotImplementedError, match="out_axes"):
        mb.micro_vmap(lambda x: x, out_axes=1)
