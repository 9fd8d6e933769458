"""fm.optim.projections against optax.projections 0.2.8 (float64, 1e-10) on pytrees, the
sets' defining properties, and ``vmap``/``grad``; plus the submodule aliases."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from funcmodels import optim
from funcmodels.optim import projections as P

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10


def _tree(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    # keys in sorted order: jax flattens dicts by sorted key
    return {
        "a": torch.randn(3, generator=g, dtype=torch.float64) * scale,
        "b": {"c": torch.randn(2, 2, generator=g, dtype=torch.float64) * scale},
    }


def _j(tree):
    return jax.tree.map(
        lambda t: jnp.asarray(t.numpy()) if isinstance(t, torch.Tensor) else t, tree
    )


CASES = {
    "non_negative": ("projection_non_negative", lambda: (_tree(0),)),
    "box": ("projection_box", lambda: (_tree(0, 2.0), _tree(1, 0.1), _tree(2, 0.1))),
    "box-numbers": ("projection_box", lambda: (_tree(0, 2.0)["a"], -0.5, 0.7)),
    "hypercube": ("projection_hypercube", lambda: (_tree(0)["b"]["c"],)),
    "hypercube-scale": ("projection_hypercube", lambda: (_tree(0, 3)["a"], 2.0)),
    "simplex": ("projection_simplex", lambda: (_tree(0),)),
    "simplex-scale": ("projection_simplex", lambda: (_tree(0, 3.0), 2.5)),
    "l1_sphere": ("projection_l1_sphere", lambda: (_tree(0), 0.7)),
    "l1_ball-outside": ("projection_l1_ball", lambda: (_tree(0), 1.5)),
    "l1_ball-inside": ("projection_l1_ball", lambda: (_tree(0, 0.01), 1.5)),
    "l2_sphere": ("projection_l2_sphere", lambda: (_tree(0), 2.0)),
    "l2_ball-outside": ("projection_l2_ball", lambda: (_tree(0),)),
    "l2_ball-inside": ("projection_l2_ball", lambda: (_tree(0, 0.1), 3.0)),
    "linf_ball": ("projection_linf_ball", lambda: (_tree(0), 0.5)),
    "vector": ("projection_vector", lambda: (_tree(0), _tree(1))),
    "hyperplane": ("projection_hyperplane", lambda: (_tree(0), _tree(1), 0.3)),
    "halfspace-outside": ("projection_halfspace", lambda: (_tree(0), _tree(1), -5.0)),
    "halfspace-inside": ("projection_halfspace", lambda: (_tree(0), _tree(1), 50.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_projections_match_optax(case):
    name, make = CASES[case]
    args = make()
    ours = getattr(P, name)(*args)
    theirs = getattr(optax.projections, name)(*[_j(a) for a in args])
    a = (
        [t.numpy() for t in jax.tree.leaves(ours)]
        if not isinstance(ours, torch.Tensor)
        else [ours.numpy()]
    )
    b = [np.asarray(t) for t in jax.tree.leaves(theirs)]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and np.abs(x - y).max() <= TOL


def test_the_sets_hold():
    tree = _tree(3, 2.0)
    flat = lambda t: torch.cat([v.reshape(-1) for v in torch.utils._pytree.tree_leaves(t)])
    s = flat(P.projection_simplex(tree, 2.0))
    assert bool((s >= 0).all()) and abs(float(s.sum()) - 2.0) <= 1e-12
    assert abs(float(flat(P.projection_l1_ball(tree, 1.0)).abs().sum()) - 1.0) <= 1e-12
    assert abs(float(flat(P.projection_l2_sphere(tree, 3.0)).norm()) - 3.0) <= 1e-12
    h = P.projection_hyperplane(tree, _tree(4), 0.25)
    assert abs(float((flat(h) * flat(_tree(4))).sum()) - 0.25) <= 1e-12


def test_simplex_under_vmap_and_grad_matches_optax_jvp():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = torch.arange(6, dtype=torch.float64)
    rows = vmap(P.projection_simplex)(x)
    assert torch.allclose(
        rows, torch.stack([P.projection_simplex(r) for r in x]), atol=1e-15, rtol=0
    )
    ours = vmap(grad(lambda r: (P.projection_simplex(r) * w).sum()))(x)
    theirs = jax.vmap(
        jax.grad(lambda r: (optax.projections.projection_simplex(r) * jnp.arange(6.0)).sum())
    )(jnp.asarray(x.numpy()))
    assert np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL


@pytest.mark.parametrize("name", P.__all__)
def test_signatures_match_optax(name):
    ours = inspect.signature(getattr(P, name)).parameters
    theirs = inspect.signature(getattr(optax.projections, name)).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


# names optax keeps only in optax.transforms, defined there in fm.optim.transforms too, and
# optax.tree_utils' tree functions (fm.optim.tree's objects, under their tree_* names)
ONLY_IN_SUBMODULE = {"ConditionFn", "unitwise_clip", "unitwise_norm", "NamedTupleKey"}
ONLY_IN_SUBMODULE |= {f"tree_{n}" for n in optim.tree.__all__ if n != "map_params"}


@pytest.mark.parametrize("module", ["schedules", "transforms", "tree_utils"])
def test_submodule_aliases_are_fm_optims_objects(module):
    ours = getattr(optim, module)
    for name in ours.__all__:
        assert hasattr(getattr(optax, module), name), name
        if name not in ONLY_IN_SUBMODULE:
            assert getattr(ours, name) is getattr(optim, name), name
    assert optim.schedules.cosine_decay_schedule is optim.cosine_decay_schedule


def test_submodule_aliases_cover_what_fm_optim_has():
    for module in ("schedules", "transforms", "tree_utils"):
        theirs = {n for n in dir(getattr(optax, module)) if not n.startswith("_")}
        have = {n for n in theirs if hasattr(optim, n)} | (theirs & ONLY_IN_SUBMODULE)
        assert have == set(getattr(optim, module).__all__), module


@pytest.mark.parametrize("shape", [(5,), (1, 4), (3, 4), (2, 3, 4), (2, 2, 3, 4), (2, 2, 2, 3, 2)])
def test_unitwise_norm_and_clip_match_optax(shape):
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    ours = optim.transforms.unitwise_norm(x)
    theirs = optax.transforms.unitwise_norm(jnp.asarray(x.numpy()))
    assert ours.shape == x.shape and np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL
    ours = optim.transforms.unitwise_norm(x, axis=-1)
    theirs = optax.transforms.unitwise_norm(jnp.asarray(x.numpy()), axis=-1)
    assert np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL
    grad_ = torch.randn(shape, generator=g, dtype=torch.float64)
    g_norm = optim.transforms.unitwise_norm(grad_)
    max_norm = torch.full(shape, 0.8, dtype=torch.float64)
    ours = optim.transforms.unitwise_clip(g_norm, max_norm, grad_)
    theirs = optax.transforms.unitwise_clip(
        *(jnp.asarray(t.numpy()) for t in (g_norm, max_norm, grad_))
    )
    assert np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL


def test_unitwise_bad_input():
    with pytest.raises(ValueError, match="1 to 5 dimensions"):
        optim.transforms.unitwise_norm(torch.ones(2, 2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        optim.transforms.unitwise_clip(torch.ones(2), torch.ones(3), torch.ones(2))


@pytest.mark.parametrize("name", ["unitwise_norm", "unitwise_clip"])
def test_unitwise_signatures_match_optax(name):
    ours = inspect.signature(getattr(optim.transforms, name)).parameters
    theirs = inspect.signature(getattr(optax.transforms, name)).parameters
    assert [(k, p.kind, p.default) for k, p in ours.items()] == [
        (k, p.kind, p.default) for k, p in theirs.items()
    ]
