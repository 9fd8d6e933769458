"""``fm.optim.contrib.reduce_on_plateau`` and the schedule-free family against
``optax.contrib``, side by side in float64 (``1e-10`` absolute on values of order one,
every step's updates and params), on a float64 tree with a 0-dim leaf and on a tree mixing
float64 and float32 leaves (float32 leaves within ``1e-6``: both libraries compute them in
float32). Skipped when jax or optax is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import funcmodels as fm
from funcmodels.optim import contrib

from .contrib_harness import FM, MIXED, OPTAX, TREE, compare, jnp, make_tree, run

TOL, TOL32 = 1e-10, 1e-6

# losses fed as value=: improving, then a plateau, then one improvement, then a plateau
VALUES = [5.0, 4.0, 4.0, 4.1, 3.9999, 4.0, 3.0, 3.0, 3.5, 3.2, 3.1, 3.0, 3.0, 2.99, 3.0]


def _values(lib, step):
    return {"value": VALUES[step]}


PLATEAU = {
    "defaults": lambda L: L.contrib.reduce_on_plateau(),
    "patience": lambda L: L.contrib.reduce_on_plateau(0.5, patience=2),
    "cooldown": lambda L: L.contrib.reduce_on_plateau(0.5, 1, 1e-3, 0.0, cooldown=2),
    "accumulation": lambda L: L.contrib.reduce_on_plateau(
        0.5, 1, 0.0, 0.01, accumulation_size=3, min_scale=0.2
    ),
    "min_scale": lambda L: L.contrib.reduce_on_plateau(0.3, 1, min_scale=0.05),
}


@pytest.mark.parametrize("shapes", [TREE, MIXED], ids=["float64", "mixed"])
@pytest.mark.parametrize("name", list(PLATEAU))
def test_reduce_on_plateau_matches_optax(name, shapes):
    worst = compare(PLATEAU[name], shapes, steps=len(VALUES), extra=_values)
    assert worst[torch.float64] <= TOL
    assert worst.get(torch.float32, 0.0) <= TOL32


def test_reduce_on_plateau_state_matches_optax():
    """The scale actually moves (so the comparison above is not of ones) and every
    field of the state is optax's."""
    make = PLATEAU["cooldown"]
    (_, ours), (_, theirs) = (run(L, make, steps=len(VALUES), extra=_values) for L in (FM, OPTAX))
    # by hand: plateaus (no improvement by 0.1%) at the values 3, 6, 9, 12 and 15, each
    # after the cooldown of two: the scale halves five times
    assert float(ours.scale) == 0.5**5
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.float64 or str(a.dtype) == f"torch.{b.dtype}"
        assert float(a) == pytest.approx(float(b), abs=1e-12)


def _lr(L):
    return L.at64(L.warmup_constant_schedule(0.0, 0.05, 3))


SCHEDULE_FREE = {
    "sgd": lambda L: L.contrib.schedule_free_sgd(),
    "sgd-all": lambda L: L.contrib.schedule_free_sgd(0.1, None, 0.8, 0.05, 1.5),
    "adamw": lambda L: L.contrib.schedule_free_adamw(),
    "adamw-all": lambda L: L.contrib.schedule_free_adamw(
        0.01, None, 0.95, 0.99, 1e-6, weight_decay=0.1, weight_lr_power=1.0
    ),
    "adamw-state-dtype": lambda L: L.contrib.schedule_free_adamw(0.01, state_dtype=L.float32),
    "wrap-adam": lambda L: L.contrib.schedule_free(L.adam(_lr(L), b1=0.0), _lr(L)),
    "wrap-sgd": lambda L: L.contrib.schedule_free(L.sgd(0.1), 0.1, b1=0.5),
}


# On the mixed tree the state's 0-dim scalars are float32 (optax's lowest-dtype rule), and
# with a learning rate that changes (the warmup) XLA's float32 ``weight_sum + max_lr**2``
# differs from torch's in the last bit (measured: step 4, 0.006388889626 against
# 0.006388889160): the float64 leaves then agree to float32's precision only; so with a
# float32 ``z`` (``state_dtype``).
LAST_BIT32 = {("wrap-adam", "mixed"), ("adamw-state-dtype", "float64")}
LAST_BIT32 |= {("adamw-state-dtype", "mixed")}


@pytest.mark.parametrize("shapes", [TREE, MIXED], ids=["float64", "mixed"])
@pytest.mark.parametrize("name", list(SCHEDULE_FREE))
def test_schedule_free_matches_optax(name, shapes):
    worst = compare(SCHEDULE_FREE[name], shapes)
    kind = "mixed" if shapes is MIXED else "float64"
    assert worst[torch.float64] <= (TOL32 if (name, kind) in LAST_BIT32 else TOL)
    assert worst.get(torch.float32, 0.0) <= TOL32


@pytest.mark.parametrize("warmup", [2, 4])
def test_schedule_free_warmup_matches_optax(warmup):
    """``warmup_steps`` builds optax's warmup schedule inside; optax evaluates it at its
    int32 count, in float32 (see ``test_optax_parity.Lib``): ``1e-6`` relative there."""
    make = lambda L: L.contrib.schedule_free_adamw(0.01, warmup)  # noqa: E731
    assert compare(make)[torch.float64] <= 1e-8


def test_schedule_free_eval_params_matches_optax():
    def evals(L):
        seen, state = run(L, SCHEDULE_FREE["adamw-all"])
        return L.contrib.schedule_free_eval_params(state, seen[-1][1])

    ours, theirs = evals(FM), evals(OPTAX)
    for k in ("conv", "s"):
        assert torch.allclose(ours[k], torch.tensor(np.array(theirs[k])), atol=TOL, rtol=0)


def test_schedule_free_eval_params_refuses_another_state():
    params = make_tree(TREE, 0)
    with pytest.raises(ValueError, match="ScheduleFreeState"):
        contrib.schedule_free_eval_params(fm.optim.adam(0.1).init(params), params)


def test_schedule_free_needs_params():
    params = make_tree(TREE, 0)
    opt = contrib.schedule_free_sgd()
    with pytest.raises(ValueError, match="needs the params"):
        opt.update(params, opt.init(params))


def test_reduce_on_plateau_refuses_bad_arguments():
    for kwargs in ({"factor": 1.0}, {"rtol": -1.0}, {"rtol": 0.0, "atol": 0.0}, {"rtol": 2.0}):
        with pytest.raises(ValueError, match="reduce_on_plateau"):
            contrib.reduce_on_plateau(**kwargs)
    assert jnp is not None
