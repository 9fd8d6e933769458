"""``fm.optim.contrib``'s GaLore against ``optax.contrib``'s, side by side (float64
params and gradients). Both take the projector from a float32 SVD (optax's arithmetic),
and the two libraries' float32 SVDs round differently and may flip a singular vector's
sign. What agrees, and to what:

- a flipped column of ``P`` flips the matching row of ``P^T G`` and, through the
  sign-equivariant base optimisers used here (Adam, SGD momentum), of its update, so
  ``P @ update`` does not depend on the signs: the updates and params agree to 1e-4 on
  general gradients (measured: 1.2e-8 galore, 8.5e-9 with decay, 4.6e-6 over SGD
  momentum, 1.6e-5 for scale_by_galore's unscaled updates of order 1: the float32 SVD's
  rounding, amplified where two singular values are close);
- where the float32 SVD is exact (gradients whose matrices are diagonal with distinct
  entries at the refresh steps: the singular vectors are signed unit vectors), every step
  agrees to 1e-10;
- the projectors agree up to column signs to 1e-5.

Skipped when jax or optax is absent."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from funcmodels.optim import contrib

from .contrib_harness import FM, OPTAX, TREE, compare, jax, run

TOL, SVD_TOL, PROJ_TOL = 1e-10, 1e-4, 1e-5
# keys in sorted order: jax orders a dict's leaves by key, torch by insertion
SHAPES = {"b": (4,), "conv": (2, 3, 2), "s": (), "tall": (6, 3), "wide": (3, 5)}
DIMS = {"k": (4, 2, 3), "m": (3, 5), "tall": (6, 3)}
CASES = {
    "galore": lambda L: L.contrib.galore(1e-2, rank=2, update_proj_gap=3),
    "galore-decay": lambda L: L.contrib.galore(
        1e-2, rank=8, update_proj_gap=2, scale=0.5, weight_decay=0.1
    ),
    "galore-sgd": lambda L: L.contrib.galore(
        0.1, rank=1, update_proj_gap=4, base_optimizer=L.sgd(1.0, momentum=0.9)
    ),
    "scale_by_galore-dims": lambda L: L.contrib.scale_by_galore(
        rank=2,
        update_proj_gap=3,
        weight_dimension_numbers={
            "k": L.contrib.GaLoreDimensionNumbers((0, 2), 1),
            "m": None,
            "tall": L.contrib.GaLoreDimensionNumbers(1, 0),
        },
    ),
}


def _shapes(name):
    return DIMS if name == "scale_by_galore-dims" else SHAPES


def _diagonal(step, g, gap):
    """At refresh steps, every matrix leaf (as its 2-d matrix) diagonal with distinct
    entries; other steps general."""
    if step % gap:
        return g

    def leaf(x):
        if x.dim() != 2:
            return x
        k = min(x.shape)
        d = torch.zeros_like(x)
        d[range(k), range(k)] = torch.arange(1.0, k + 1, dtype=x.dtype) * 0.75
        return d

    return pytree.tree_map(leaf, g)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_up_to_the_float32_svd(name):
    assert compare(CASES[name], _shapes(name))[torch.float64] <= SVD_TOL


@pytest.mark.parametrize("name", ["galore", "galore-decay", "galore-sgd"])
def test_matches_optax_exactly_where_the_svd_is_exact(name):
    gap = {"galore": 3, "galore-decay": 2, "galore-sgd": 4}[name]
    worst = compare(CASES[name], SHAPES, steps=8, grads=lambda s, g: _diagonal(s, g, gap))
    assert worst[torch.float64] <= TOL


def test_projectors_agree_up_to_column_signs():
    make = CASES["galore"]
    _, ours = run(FM, make, SHAPES, steps=4)
    _, theirs = run(OPTAX, make, SHAPES, steps=4)
    a = pytree.tree_leaves(ours[0].projector)
    b = jax.tree.leaves(theirs[0].projector)
    assert [tuple(x.shape) for x in a] == [np.asarray(y).shape for y in b]
    for x, y in zip(a, b, strict=True):
        x, y = x.numpy(), np.asarray(y)
        if x.size:
            signs = np.sign((x * y).sum(0))
            np.testing.assert_allclose(x * signs, y, rtol=0, atol=PROJ_TOL)
    assert int(ours[0].count) == 4 and ours[0].count.dtype == torch.int32


def test_projects_only_matrices_by_default():
    """optax's default: the 2-d leaves get projectors ``(m, r)`` (tall) / ``(n, r)``
    (wide); the others an empty ``(0, 0)`` one and the base optimiser in full."""
    _, state = run(FM, CASES["galore"], SHAPES, steps=1)
    proj = state[0].projector
    assert tuple(proj["tall"].shape) == (6, 2) and tuple(proj["wide"].shape) == (5, 2)
    assert all(tuple(proj[k].shape) == (0, 0) for k in ("conv", "b", "s"))
    assert tuple(state[0].base_optimizer_state.mu["tall"].shape) == (2, 3)
    assert tuple(state[0].base_optimizer_state.mu["wide"].shape) == (3, 2)


def test_signatures():
    import optax

    for name in ("galore", "scale_by_galore"):
        ours = inspect.signature(getattr(contrib, name)).parameters
        theirs = inspect.signature(getattr(optax.contrib, name)).parameters
        assert list(ours) == list(theirs)
        for p, q in zip(ours.values(), theirs.values(), strict=True):
            if q.default is not inspect.Parameter.empty:
                assert p.default == q.default, (name, p.name)
    assert contrib.GaLoreDimensionNumbers() == (0, 1)
    assert contrib.GaLoreState._fields == optax.contrib.GaLoreState._fields


def test_refuses_bad_arguments():
    with pytest.raises(TypeError, match="rank"):
        contrib.scale_by_galore(rank=2.0)
    with pytest.raises(ValueError, match="rank"):
        contrib.scale_by_galore(rank=0)
    p = {"k": torch.zeros(2, 3, 4)}
    spec = contrib.GaLoreDimensionNumbers(0, 1)
    with pytest.raises(ValueError, match="every axis"):
        contrib.scale_by_galore(weight_dimension_numbers=spec).init(p)
    spec = contrib.GaLoreDimensionNumbers((0, 1), (1, 2))
    with pytest.raises(ValueError, match="disjoint"):
        contrib.scale_by_galore(weight_dimension_numbers=spec).init(p)
    with pytest.raises(ValueError, match="per leaf"):
        contrib.scale_by_galore(weight_dimension_numbers={"k": spec, "x": None}).init(p)
    opt = contrib.scale_by_galore()
    with pytest.raises(TypeError, match="GaLoreState"):
        opt.update(p, contrib.MuonState(None, None, None))
    assert TREE is not None


def test_vmap_over_members_equals_each_member():
    """Under ``vmap`` the projector is refreshed by ``torch.where`` (no data-dependent
    branch); each member's two steps equal the member run alone (1e-12)."""
    opt = contrib.galore(1e-2, rank=2, update_proj_gap=2)
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(2, 5, 3, generator=g, dtype=torch.float64)}
    grads = [{"w": torch.randn(2, 5, 3, generator=g, dtype=torch.float64)} for _ in range(3)]

    def steps(p, gs):
        state = opt.init(p)
        for grad in gs:
            u, state = opt.update(grad, state, p)
        return u

    together = torch.func.vmap(steps)(params, grads)
    for i in range(2):
        alone = steps({"w": params["w"][i]}, [{"w": x["w"][i]} for x in grads])
        torch.testing.assert_close(together["w"][i], alone["w"], rtol=0, atol=1e-12)
