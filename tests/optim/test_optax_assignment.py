"""fm.optim.assignment against optax.assignment side by side (float64) and against brute
force. On random continuous costs (no ties with probability 1) the indices must equal
optax's exactly, element for element (the same algorithm, the same order of float
operations); on integer costs with ties the assignments may differ, so there the optimal
cost must equal the brute-force minimum exactly and the indices must form a valid
assignment. Skipped when jax or optax is absent."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
import torch

from funcmodels.optim import assignment

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

NAMES = ["hungarian_algorithm", "base_hungarian_algorithm"]
SHAPES = [(1, 1), (1, 5), (5, 1), (4, 4), (3, 7), (7, 3), (10, 10), (12, 20), (20, 12)]


def _brute_force(cost: np.ndarray) -> float:
    n, m = cost.shape
    if n > m:
        return _brute_force(cost.T)
    return min(cost[range(n), list(p)].sum() for p in itertools.permutations(range(m), n))


def _valid(i: torch.Tensor, j: torch.Tensor, n: int, m: int) -> None:
    assert i.dtype == j.dtype == torch.long
    assert len(i) == len(j) == min(n, m)
    assert len(set(i.tolist())) == len(i) and len(set(j.tolist())) == len(j)
    assert all(0 <= a < n for a in i.tolist()) and all(0 <= b < m for b in j.tolist())


def test_signatures_and_names():
    assert sorted(assignment.__all__) == sorted(
        n for n in dir(optax.assignment) if not n.startswith("_")
    )
    for name in NAMES:
        ours = inspect.signature(getattr(assignment, name)).parameters
        assert list(ours) == list(inspect.signature(getattr(optax.assignment, name)).parameters)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_optax_on_random_costs(name, shape, seed):
    cost = np.random.default_rng(seed).standard_normal(shape)
    i, j = getattr(assignment, name)(torch.as_tensor(cost))
    oi, oj = getattr(optax.assignment, name)(jnp.asarray(cost))
    _valid(i, j, *shape)
    assert i.tolist() == np.asarray(oi).tolist()
    assert j.tolist() == np.asarray(oj).tolist()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (2, 5), (5, 2), (4, 6), (6, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_optimal_against_brute_force_with_ties(name, shape, seed):
    cost = np.random.default_rng(seed).integers(0, 4, shape)  # many ties
    i, j = getattr(assignment, name)(torch.as_tensor(cost))
    _valid(i, j, *shape)
    assert cost[i.numpy(), j.numpy()].sum() == _brute_force(cost)
    oi, oj = getattr(optax.assignment, name)(jnp.asarray(cost))
    assert cost[np.asarray(oi), np.asarray(oj)].sum() == _brute_force(cost)


def test_optax_docstring_examples():
    """optax's documented answers, as literal numbers."""
    cost = torch.tensor([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]])
    i, j = assignment.base_hungarian_algorithm(cost)
    assert (i.tolist(), j.tolist()) == ([0, 1, 3], [0, 2, 1])
    i, j = assignment.hungarian_algorithm(cost)
    assert int(cost[i, j].sum()) == 15
    cost = torch.tensor(
        [[90, 80, 75, 70], [35, 85, 55, 65], [125, 95, 90, 95], [45, 110, 95, 115]]
        + [[50, 100, 90, 100]]
    )
    for name in NAMES:
        i, j = getattr(assignment, name)(cost)
        assert int(cost[i, j].sum()) == 265
    i, j = assignment.base_hungarian_algorithm(cost)
    assert (i.tolist(), j.tolist()) == ([0, 1, 2, 3], [3, 2, 1, 0])


@pytest.mark.parametrize("name", NAMES)
def test_empty_errors_and_input_untouched(name):
    fn = getattr(assignment, name)
    i, j = fn(torch.zeros(0, 3))
    assert i.shape == j.shape == (0,)
    with pytest.raises(ValueError, match="2-dim"):
        fn(torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="tensor"):
        fn([[1.0]])
    cost = torch.randn(5, 3, dtype=torch.float64)
    before = cost.clone()
    fn(cost)
    assert torch.equal(cost, before)
