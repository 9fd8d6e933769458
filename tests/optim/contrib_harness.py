"""The side-by-side runner for ``fm.optim.contrib`` against ``optax.contrib``.

One expression of a ``Lib`` (``L.contrib.X(...)``) is built with either library and fed
the same gradients for several steps on the same tree; the updates and params are compared
at every step. Two trees: ``TREE`` (float64: a 3-d leaf, a vector, a matrix and a 0-dim
leaf, nested) and ``MIXED`` (a float64 matrix, a float32 vector and a float32 0-dim leaf),
where the dtype rule applies: each leaf keeps its dtype, and 0-dim state scalars take the
params' lowest dtype, as optax's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.utils._pytree as pytree

from .test_optax_parity import FM, OPTAX, SCALES, _to_jax, jax, jnp, optax  # noqa: F401

STEPS = 6
TREE = {"conv": (2, 3, 2), "dense": {"b": (3,), "w": (4, 3)}, "s": ()}
MIXED = {"m": ((5, 4), torch.float64), "v": ((6,), torch.float32), "z": ((), torch.float32)}


def _leaf_spec(s):
    return isinstance(s, tuple) and (not s or isinstance(s[0], int) or isinstance(s[0], tuple))


def make_tree(shapes, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)

    def leaf(s):
        shape, dtype = (s, torch.float64) if not s or isinstance(s[0], int) else s
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return pytree.tree_map(leaf, shapes, is_leaf=_leaf_spec)


def to_lib(lib, tree):
    return tree if lib is FM else _to_jax(tree)


def run(lib, make, shapes=TREE, steps=STEPS, extra=None, grads=None, jit=True):
    """``([(updates, params), ...] after each step, the last state)``; ``extra(lib, step)``
    the keyword arguments of ``update`` (``value=``), ``grads(step, g)`` the gradients
    (a torch tree); ``jit=False`` calls optax's update without ``jax.jit``."""
    params = to_lib(lib, make_tree(shapes, 0))
    opt = make(lib)
    state = opt.init(params)
    update = opt.update if lib is FM or not jit else jax.jit(opt.update)
    seen = []
    for step in range(steps):
        g = make_tree(shapes, 100 + step, SCALES[step % len(SCALES)])
        g = to_lib(lib, g if grads is None else grads(step, g))
        kwargs = {} if extra is None else extra(lib, step)
        updates, state = update(g, state, params, **kwargs)
        params = lib.apply_updates(params, updates)
        seen.append((updates, params))
    return seen, state


def max_diff(ours, theirs, dtypes: bool = True) -> dict:
    """The largest difference per dtype (``{torch.float64: d, ...}``: absolute for
    float64, relative to the leaf's largest value, if over 1, for the others); the
    shapes, dtypes and NaNs of every leaf must agree."""
    a = pytree.tree_leaves(ours)
    b = jax.tree.leaves(theirs)
    assert len(a) == len(b)
    worst: dict = {}
    for x, y in zip(a, b, strict=True):
        x = torch.as_tensor(x)
        y = np.asarray(y)
        xn = x.detach().numpy()
        assert xn.shape == y.shape, (xn.shape, y.shape)
        if dtypes:
            assert xn.dtype == y.dtype, (xn.dtype, y.dtype)
        assert np.array_equal(np.isnan(xn), np.isnan(y))
        d = float(np.nanmax(np.abs(xn.astype(np.float64) - y), initial=0.0)) if xn.size else 0.0
        if x.dtype != torch.float64:  # relative to the leaf's size: float32 rounds relatively
            d /= max(1.0, float(np.nanmax(np.abs(y), initial=0.0)))
        worst[x.dtype] = max(worst.get(x.dtype, 0.0), d)
    return worst


def compare(make, shapes=TREE, steps=STEPS, extra=None, grads=None, jit=True, dtypes=True):
    """The largest difference per dtype (ours) of any step's updates and params;
    ``dtypes=False`` lets optax's dtypes differ (it promotes float32 leaves where the
    dtype rule of fm.optim keeps them)."""
    ours, _ = run(FM, make, shapes, steps, extra, grads, jit)
    theirs, _ = run(OPTAX, make, shapes, steps, extra, grads, jit)
    worst: dict = {}
    for a, b in zip(ours, theirs, strict=True):
        for k, v in max_diff(a, b, dtypes).items():
            worst[k] = max(worst.get(k, 0.0), v)
    return worst
