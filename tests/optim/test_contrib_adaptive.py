"""``fm.optim.contrib``'s AdEMAMix (and its simplified form), ADOPT and Muon against
``optax.contrib``, side by side in float64: every step's updates and params within
``1e-10`` (absolute, values of order one) on a float64 tree with a 0-dim leaf, and on a
tree mixing float64 and float32 leaves (``1e-10`` for the float64 leaves, ``1e-6``
relative for the float32 ones; optax's dtypes may differ there: JAX promotes some float32
leaves by float64 scalars where fm.optim keeps each leaf's dtype). Skipped when jax or
optax is absent."""

from __future__ import annotations

import pytest
import torch

from funcmodels.optim import contrib

from .contrib_harness import FM, MIXED, OPTAX, TREE, compare, make_tree, run

TOL, TOL32 = 1e-10, 1e-6
MATRICES = {"a": (4, 6), "b": (7, 3), "c": (5,), "k": (2, 3, 4), "s": ()}


def _sched(L):
    return L.at64(L.linear_schedule(0.9, 0.999, 4))


def _alpha(L):
    return L.at64(L.linear_schedule(0.0, 5.0, 4))


def _clip(L):
    return lambda count: 0.5 + 0.1 * count


CASES = {
    "ademamix": lambda L: L.contrib.ademamix(1e-2),
    "ademamix-all": lambda L: L.contrib.ademamix(
        1e-2, 0.8, 0.99, 0.999, 3.0, 1e-6, 1e-8, None, 0.1, None
    ),
    "ademamix-schedules": lambda L: L.contrib.ademamix(1e-2, b3=_sched(L), alpha=_alpha(L)),
    "scale_by_ademamix": lambda L: L.contrib.scale_by_ademamix(mu_dtype=L.float64),
    "simplified_ademamix": lambda L: L.contrib.simplified_ademamix(1e-2),
    "simplified_ademamix-all": lambda L: L.contrib.simplified_ademamix(
        1e-2, 0.9, 0.9, 2.0, 1e-6, 1e-8, 0.1
    ),
    "scale_by_simplified_ademamix": lambda L: L.contrib.scale_by_simplified_ademamix(
        alpha=_alpha(L)
    ),
    "adopt": lambda L: L.contrib.adopt(1e-2),
    "adopt-nesterov": lambda L: L.contrib.adopt(1e-2, 0.8, 0.99, 1e-4, nesterov=True),
    "adopt-no-clip": lambda L: L.contrib.adopt(1e-2, use_clipping=False),
    "adopt-clip-fn": lambda L: L.contrib.adopt(1e-2, clip_value_fn=_clip(L)),
    "scale_by_adopt": lambda L: L.contrib.scale_by_adopt(),
}


# (tolerances for float64, float32 leaves) on the mixed tree where optax rounds otherwise:
# - float64 moments of a float32 leaf: optax multiplies the float32 gradient by
#   ``1 - b1`` in float32 before adding the float64 moment, fm.optim casts the gradient up
#   first (measured: 4e-8 on that leaf's float64 updates);
# - ADOPT's clip value is float64 in optax and promotes a float32 leaf's first moment to
#   float64 (its state's dtype changes), where fm.optim keeps float32 (measured: 1.1e-5
#   relative on the unscaled updates of that leaf)
MIXED_TOL = {"scale_by_ademamix": (TOL32, TOL32), "scale_by_adopt": (TOL, 1e-4)}


@pytest.mark.parametrize("shapes", [TREE, MIXED], ids=["float64", "mixed"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax(name, shapes):
    worst = compare(CASES[name], shapes, dtypes=shapes is TREE)
    tol64, tol32 = MIXED_TOL.get(name, (TOL, TOL32)) if shapes is MIXED else (TOL, TOL32)
    assert worst[torch.float64] <= tol64
    assert worst.get(torch.float32, 0.0) <= tol32


MUON = {
    "muon": lambda L: L.contrib.muon(1e-2),
    "muon-no-nesterov": lambda L: L.contrib.muon(1e-2, nesterov=False, weight_decay=0.1),
    "muon-dion": lambda L: L.contrib.muon(1e-2, "dion", 5, 0.9, 1e-7, adam_learning_rate=1e-3),
    "muon-adaptive": lambda L: L.contrib.muon(1e-2, adaptive=True, consistent_rms=0.2),
    "muon-spectral": lambda L: L.contrib.muon(1e-2, preconditioning="spectral", ns_steps=3),
    "muon-aol": lambda L: L.contrib.muon(1e-2, preconditioning="aol"),
    "muon-schatten": lambda L: L.contrib.muon(1e-2, preconditioning="schatten"),
    "muon-adam": lambda L: L.contrib.muon(
        1e-2, adam_b1=0.8, adam_b2=0.99, adam_eps_root=1e-8, adam_weight_decay=0.1
    ),
    "scale_by_muon-dims": lambda L: L.chain(
        L.contrib.scale_by_muon(
            weight_dimension_numbers={
                "a": L.contrib.MuonDimensionNumbers(1, 0),
                "k": L.contrib.MuonDimensionNumbers((0, 1), 2),
            }
        ),
        L.scale(-0.1),
    ),
}
DIMS = {"a": (4, 6), "k": (2, 3, 4)}  # (a 3-d leaf as a batch of 2 matrices, 3 x 4)


@pytest.mark.parametrize("name", list(MUON))
def test_muon_matches_optax(name):
    shapes = DIMS if name == "scale_by_muon-dims" else MATRICES
    assert compare(MUON[name], shapes)[torch.float64] <= TOL


def test_muon_takes_the_matrices_only_by_default():
    """optax 0.2.8 gives Muon exactly the 2-d leaves; the 3-d, 1-d and 0-dim ones AdamW."""
    _, state = run(FM, MUON["muon"], MATRICES, steps=1)
    inner = state.inner_states
    assert len(pytree_leaves(inner["muon"].inner_state[0].mu)) == 2
    assert len(pytree_leaves(inner["adam"].inner_state[0].mu)) == 3
    assert OPTAX is not None


def pytree_leaves(x):
    import torch.utils._pytree as pytree

    return pytree.tree_leaves(x)


def test_muon_refuses_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        contrib.muon(0.1, ns_coeffs="other")
    with pytest.raises(ValueError, match="preconditioning"):
        contrib.scale_by_muon(preconditioning="other")
    with pytest.raises(ValueError, match="ns_coeffs"):
        contrib.scale_by_muon(ns_coeffs=(1.0, 2.0))
    opt = contrib.scale_by_muon()
    params = make_tree(TREE, 0)
    with pytest.raises(ValueError, match="dimension numbers"):
        opt.update(params, opt.init(params))
