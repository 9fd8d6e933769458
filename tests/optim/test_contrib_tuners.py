"""``fm.optim.contrib``'s SAM, the learning-rate-free optimisers (D-Adaptation AdamW,
Prodigy, COCOB) and Mechanic against ``optax.contrib``, side by side in float64: every
step's updates and params within ``1e-10`` (absolute, values of order one) on a float64
tree with a 0-dim leaf. On the tree mixing float64 and float32 leaves: ``1e-10`` for the
float64 leaves and ``1e-6`` relative for the float32 ones where the arithmetic is leaf by
leaf, ``1e-5`` where a float32 leaf enters a global sum (see ``COUPLED``). Skipped when
jax or optax is absent."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

from funcmodels.optim import contrib

from .contrib_harness import FM, MIXED, TREE, compare, jax, make_tree

TOL, TOL32 = 1e-10, 1e-6


def _adv(L, rho=0.05):
    return L.chain(L.contrib.normalize(), L.sgd(rho))


CASES = {
    "sam": lambda L: L.contrib.sam(L.sgd(0.1), _adv(L)),
    "sam-adam-3": lambda L: L.contrib.sam(L.adam(1e-2), _adv(L), sync_period=3),
    "sam-keep-state": lambda L: L.contrib.sam(
        L.sgd(0.1, 0.9), L.chain(L.contrib.normalize(), L.adam(0.05)), 2, reset_state=False
    ),
    "sam-reset-adam": lambda L: L.contrib.sam(L.sgd(0.1), L.adam(0.05), 3, True),
    "normalize": lambda L: L.contrib.normalize(),
    "dadapt_adamw": lambda L: L.contrib.dadapt_adamw(),
    "dadapt_adamw-all": lambda L: L.contrib.dadapt_adamw(0.5, (0.8, 0.99), 1e-6, 1e-4, 0.1),
    "dadapt_adamw-schedule": lambda L: L.contrib.dadapt_adamw(
        L.at64(L.linear_schedule(1.0, 0.1, 5))
    ),
    "prodigy": lambda L: L.contrib.prodigy(),
    "prodigy-all": lambda L: L.contrib.prodigy(
        0.5, (0.8, 0.99), 0.9, 1e-6, 1e-4, 0.5, weight_decay=0.1, safeguard_warmup=True
    ),
    "prodigy-schedule": lambda L: L.contrib.prodigy(L.at64(L.linear_schedule(1.0, 0.1, 5))),
    "cocob": lambda L: L.contrib.cocob(),
    "cocob-all": lambda L: L.contrib.cocob(0.5, 10.0, 1e-4, weight_decay=0.1),
    "scale_by_cocob": lambda L: L.contrib.scale_by_cocob(50.0),
    "mechanize": lambda L: L.contrib.mechanize(L.adam(1e-2)),
    "mechanize-all": lambda L: L.contrib.mechanize(L.sgd(0.1, 0.5), 0.1, 1e-6, 1e-4, 3),
}
# On the mixed tree these couple the leaves through a global sum (a norm, an inner
# product) that a float32 leaf enters rounded to float32 in a summation order of its
# library's own (measured: 4e-9 for normalize); optax also promotes D-Adaptation's and
# Prodigy's 0-dim float32 scalars to float64 after the first step (see the docstring)
COUPLED = {"sam", "normalize", "dadapt_adamw", "prodigy"}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_in_float64(name):
    assert compare(CASES[name])[torch.float64] <= TOL


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("mechanize")])
def test_matches_optax_on_a_mixed_tree(name):
    """optax's updates of the float32 leaves come out in float64 here (a float64 norm or
    sum scales them); fm.optim's keep the leaf's dtype (checked: the values, not the
    dtypes, are compared). optax's ``mechanize`` fails on this tree ("lax.clamp requires
    arguments to have the same dtypes")."""
    worst = compare(CASES[name], MIXED, dtypes=False)
    coupled = name.split("-")[0] in COUPLED
    assert worst[torch.float64] <= (1e-5 if coupled else TOL)
    assert worst[torch.float32] <= (1e-5 if coupled else TOL32)


def _grad_fn(lib):
    """A deterministic stand-in for the gradient at the adversarial params."""
    tree_map = pytree.tree_map if lib is FM else jax.tree.map
    return lambda params, i: tree_map(lambda p: 2.0 * p + 0.1 * (i + 1), params)


@pytest.mark.parametrize("period", [1, 2, 3])
def test_sam_opaque_matches_optax(period):
    make = lambda L: L.contrib.sam(L.adam(1e-2), _adv(L), period, opaque_mode=True)  # noqa: E731
    worst = compare(make, extra=lambda L, s: {"grad_fn": _grad_fn(L)}, jit=False)
    assert worst[torch.float64] <= TOL


def test_sam_refuses_what_it_cannot_do():
    params = make_tree(TREE, 0)
    with pytest.raises(ValueError, match="sync_period"):
        contrib.sam(FM.sgd(0.1), FM.sgd(0.1), sync_period=0)
    with pytest.raises(ValueError, match="batch_axis_name"):
        contrib.sam(FM.sgd(0.1), FM.sgd(0.1), batch_axis_name="batch")
    opt = contrib.sam(FM.sgd(0.1), FM.sgd(0.1), opaque_mode=True)
    with pytest.raises(ValueError, match="grad_fn"):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("make", [contrib.prodigy, contrib.dadapt_adamw, contrib.scale_by_cocob])
def test_needs_params(make):
    params = make_tree(TREE, 0)
    opt = make()
    with pytest.raises((ValueError, TypeError), match="params"):
        opt.update(params, opt.init(params))
