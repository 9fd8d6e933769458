"""``fm.optim.contrib``'s MADGRAD, ACProp, ``split_real_and_imaginary`` and the private
aggregation (``differentially_private_aggregate``, ``dpsgd``) against ``optax.contrib``,
side by side in float64 (``1e-10`` absolute). The private noise cannot match JAX's random
bits (it is drawn from fm's keys): the deterministic part is compared with
``noise_multiplier=0``, the noise's statistics separately. Skipped when jax or optax is
absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels.optim import contrib

from .contrib_harness import FM, MIXED, OPTAX, TREE, compare, jax, jnp, make_tree

TOL, TOL32 = 1e-10, 1e-6

CASES = {
    "madgrad": lambda L: L.contrib.madgrad(1e-2),
    "madgrad-all": lambda L: L.contrib.madgrad(0.1, 0.5, 0.1, 1e-4),
    "madgrad-schedule": lambda L: L.contrib.madgrad(L.at64(L.linear_schedule(0.1, 0.01, 4))),
    "acprop": lambda L: L.contrib.acprop(1e-2),
    "acprop-all": lambda L: L.contrib.acprop(1e-2, 0.8, 0.99, 1e-8, 1e-10, 0.1),
    "scale_by_acprop": lambda L: L.contrib.scale_by_acprop(),
    "dog": lambda L: L.contrib.dog(0.5),
    "dog-distance": lambda L: L.contrib.dog(1.0, ("distance", 1e-3), 1e-6, 0.1),
    "dog-learning-rate": lambda L: L.contrib.dog(init_step=("learning_rate", 1e-2)),
    "dowg": lambda L: L.contrib.dowg(0.5),
    "dowg-all": lambda L: L.contrib.dowg(1.0, 1e-3, 1e-6, 0.1),
}
# global norms: a float32 leaf enters the float64 leaves' step size rounded to float32 in
# each library's own summation order (as in test_contrib_tuners.COUPLED)
COUPLED = {"dog", "dowg"}


@pytest.mark.parametrize("shapes", [TREE, MIXED], ids=["float64", "mixed"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax(name, shapes):
    worst = compare(CASES[name], shapes, dtypes=shapes is TREE)
    coupled = shapes is MIXED and name.split("-")[0] in COUPLED
    assert worst[torch.float64] <= (1e-5 if coupled else TOL)
    assert worst.get(torch.float32, 0.0) <= (1e-5 if coupled else TOL32)


COMPLEX = {"w": (3, 4), "v": (5,)}


def _complex_tree(lib, seed):
    t = make_tree(COMPLEX, seed)
    u = make_tree(COMPLEX, seed + 50)
    tree = {"w": torch.complex(t["w"], u["w"]), "v": t["v"]}
    return tree if lib is FM else jax.tree.map(lambda x: jnp.asarray(x.numpy()), tree)


@pytest.mark.parametrize("inner", ["adam", "sgd"])
def test_split_real_and_imaginary_matches_optax(inner):
    def run(L):
        opt = L.contrib.split_real_and_imaginary(
            L.adam(1e-2) if inner == "adam" else L.sgd(0.1, 0.9)
        )
        params = _complex_tree(L, 0)
        state = opt.init(params)
        seen = []
        for step in range(4):
            updates, state = opt.update(_complex_tree(L, 100 + step), state, params)
            params = L.apply_updates(params, updates)
            seen.append(params)
        return seen

    for a, b in zip(run(FM), run(OPTAX), strict=True):
        for k in a:
            assert a[k].dtype == (torch.complex128 if k == "w" else torch.float64)
            np.testing.assert_allclose(a[k].numpy(), np.asarray(b[k]), rtol=0, atol=TOL)


BATCH = {"w": (8, 4, 3), "b": (8, 3), "s": (8,)}  # 8 examples' gradients


def _per_example(step, g):
    return make_tree(BATCH, 100 + step, [1.0, 0.1, 3.0, 10.0, 1.0, 0.3][step])


def _run_private(L, make):
    params = make_tree({"w": (4, 3), "b": (3,), "s": ()}, 0)
    params = params if L is FM else jax.tree.map(lambda x: jnp.asarray(x.numpy()), params)
    opt = make(L)
    state = opt.init(params)
    seen = []
    for step in range(6):
        g = _per_example(step, None)
        g = g if L is FM else jax.tree.map(lambda x: jnp.asarray(x.numpy()), g)
        updates, state = opt.update(g, state, params)
        params = L.apply_updates(params, updates)
        seen.append(params)
    return seen


PRIVATE = {
    "dpsgd": lambda L: L.contrib.dpsgd(0.1, 1.0, 0.0, 0),
    "dpsgd-momentum": lambda L: L.contrib.dpsgd(0.1, 0.5, 0.0, 1, momentum=0.9, nesterov=True),
    "aggregate": lambda L: L.chain(
        L.contrib.differentially_private_aggregate(2.0, 0.0, 3), L.sgd(0.1)
    ),
}


@pytest.mark.parametrize("name", list(PRIVATE))
def test_private_aggregation_without_noise_matches_optax(name):
    ours, theirs = _run_private(FM, PRIVATE[name]), _run_private(OPTAX, PRIVATE[name])
    for a, b in zip(ours, theirs, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k].numpy(), np.asarray(b[k]), rtol=0, atol=TOL)


def test_private_noise_has_optax_distribution_and_comes_from_the_key():
    """Zero gradients: the update is the noise over the batch size, of standard deviation
    ``l2_norm_clip * noise_multiplier / batch`` (20000 draws, within 3%), mean 0, fresh
    each step and leaf, the same from the same key."""
    clip, mult, batch = 0.5, 2.0, 4
    grads = {"a": torch.zeros(batch, 20000, dtype=torch.float64), "b": torch.zeros(batch, 5)}
    opt = contrib.differentially_private_aggregate(clip, mult, fm.key(7))
    state = opt.init(grads)
    first, state = opt.update(grads, state)
    second, _ = opt.update(grads, state)
    sd = float(first["a"].std())
    assert sd == pytest.approx(clip * mult / batch, rel=0.03)
    assert abs(float(first["a"].mean())) < 4 * clip * mult / batch / 20000**0.5
    assert first["b"].dtype == torch.float32 and first["b"].shape == (5,)
    assert not torch.equal(first["a"], second["a"])
    again, _ = opt.update(grads, opt.init(grads))
    assert torch.equal(again["a"], first["a"])
    other, _ = contrib.differentially_private_aggregate(clip, mult, 8).update(
        grads, contrib.differentially_private_aggregate(clip, mult, 8).init(grads)
    )
    assert not torch.equal(other["a"], first["a"])


def test_private_aggregate_refuses_key_and_seed():
    with pytest.raises(ValueError, match="seed or key"):
        contrib.differentially_private_aggregate(1.0, 1.0, 3, seed=4)


LOSSES = [2.0, 1.5, 1.7, 0.9, 1.0, 0.4]


def _losses(lib, step):
    return {"value": LOSSES[step]}


MOMO = {
    "momo": lambda L: L.contrib.momo(),
    "momo-all": lambda L: L.contrib.momo(0.5, 0.8, 0.1, 0.01, True),
    "momo-schedule": lambda L: L.contrib.momo(L.at64(L.linear_schedule(1.0, 0.1, 4)), 0.9),
    "momo_adam": lambda L: L.contrib.momo_adam(),
    "momo_adam-all": lambda L: L.contrib.momo_adam(0.1, 0.8, 0.99, 1e-6, 0.1, 0.01, True),
    "momo_adam-adapt": lambda L: L.contrib.momo_adam(adapt_lower_bound=True),
}


@pytest.mark.parametrize("name", list(MOMO))
def test_momo_matches_optax(name):
    """The loss goes in as ``value=`` (called directly: fm.optim's chain takes no extra
    arguments yet)."""
    assert compare(MOMO[name], extra=_losses)[torch.float64] <= TOL


def test_momo_needs_the_loss():
    params = make_tree(TREE, 0)
    opt = contrib.momo()
    with pytest.raises(TypeError, match="value"):
        opt.update(params, opt.init(params), params)


# a quadratic objective with a diagonal Hessian (2 c): Hutchinson's estimate is exact for
# any random signs, so the two libraries' estimators agree though their bits differ
CURVATURE = {"conv": (2, 3, 2), "dense": {"b": (3,), "w": (4, 3)}, "s": ()}


def _objective(lib):
    """``sum_i c_i p_i**2`` with ``c > 0`` fixed, in the library's own arithmetic."""
    c = pytree.tree_map(lambda x: x.abs() + 0.5, make_tree(CURVATURE, 7))
    if lib is FM:
        return lambda params: sum(
            (ci * p * p).sum()
            for ci, p in zip(pytree.tree_leaves(c), pytree.tree_leaves(params), strict=True)
        )
    cj = jax.tree.map(lambda x: jnp.asarray(x.numpy()), c)
    return lambda params: sum(
        (ci * p * p).sum()
        for ci, p in zip(jax.tree.leaves(cj), jax.tree.leaves(params), strict=True)
    )


SOPHIA = {
    "sophia": lambda L: L.contrib.sophia(1e-2, update_interval=2),
    "sophia-all": lambda L: L.contrib.sophia(
        1e-2,
        0.9,
        0.95,
        1e-6,
        0.1,
        None,
        0.05,
        0.5,
        3,
        L.contrib.hutchinson_estimator_diag_hessian(4 if L is FM else jax.random.PRNGKey(4)),
    ),
    "sophia-no-clip": lambda L: L.contrib.sophia(1e-2, clip_threshold=None, update_interval=1),
}


@pytest.mark.slow  # (optax's update runs unjitted: it takes obj_fn)
@pytest.mark.parametrize("name", list(SOPHIA))
def test_sophia_matches_optax(name):
    extra = lambda L, s: {"obj_fn": _objective(L)}  # noqa: E731
    assert compare(SOPHIA[name], extra=extra, jit=False)[torch.float64] <= TOL


def test_hutchinson_estimate_is_exact_for_a_diagonal_hessian():
    params = make_tree(CURVATURE, 0)
    est = contrib.hutchinson_estimator_diag_hessian(fm.key(1))
    diag, state = est.update(params, est.init(params), params, obj_fn=_objective(FM))
    c = make_tree(CURVATURE, 7)
    torch.testing.assert_close(diag["dense"]["w"], 2 * (c["dense"]["w"].abs() + 0.5))
    assert not torch.equal(state.key, est.init(params).key)
