"""optax's numerics in fm.optim against optax 0.2.8 side by side in float64 (1e-10 unless
stated), against torch.linalg / scipy where they solve the same problem, and the random
parts by their statistics (fm keys draw other numbers than JAX's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import funcmodels as fm
from funcmodels import optim

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10


def _spd(n: int, seed: int) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues 1..n (well separated)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64)) @ q.T


def _j(t: torch.Tensor):
    return jnp.asarray(t.numpy())


def test_power_iteration_matches_optax_from_the_same_start():
    a = _spd(6, 0)
    v0 = torch.linspace(-1, 1, 6, dtype=torch.float64) + 0.3
    for num_iters, tol in ((5, 1e-6), (100, 1e-6), (1000, 1e-12)):
        eig, vec = optim.power_iteration(a, v0=v0, num_iters=num_iters, error_tolerance=tol)
        teig, tvec = optax.power_iteration(
            _j(a), v0=_j(v0), num_iters=num_iters, error_tolerance=tol
        )
        assert abs(float(eig) - float(teig)) <= TOL
        assert np.abs(vec.numpy() - np.asarray(tvec)).max() <= TOL


def test_power_iteration_over_a_pytree_matches_optax():
    a, b = _spd(3, 1), _spd(2, 2) * 0.5
    v0 = {
        "x": torch.ones(3, dtype=torch.float64),
        "y": torch.tensor([1.0, -2.0], dtype=torch.float64),
    }
    eig, vec = optim.power_iteration(lambda v: {"x": a @ v["x"], "y": b @ v["y"]}, v0=v0)
    teig, tvec = optax.power_iteration(
        lambda v: {"x": _j(a) @ v["x"], "y": _j(b) @ v["y"]}, v0=jax.tree.map(_j, v0)
    )
    assert abs(float(eig) - float(teig)) <= TOL
    for k in vec:
        assert np.abs(vec[k].numpy() - np.asarray(tvec[k])).max() <= TOL


def test_power_iteration_default_start_finds_the_dominant_eigenvalue():
    a = _spd(8, 3)
    eig, vec = optim.power_iteration(a, error_tolerance=1e-10, num_iters=9999)
    assert abs(float(eig) - 8.0) <= 1e-9  # eigvalsh's largest is 8 by construction
    assert float((a @ vec - eig * vec).norm()) <= 1e-8
    again, _ = optim.power_iteration(
        a, error_tolerance=1e-10, num_iters=10_000, key=fm.random.key(0)
    )
    assert float(again) == float(eig)  # the default key is key(0)
    with pytest.raises(ValueError, match="v0 must be provided"):
        optim.power_iteration(lambda v: v)
    with pytest.raises(ValueError, match="precision"):
        optim.power_iteration(a, precision="fast")


@pytest.mark.parametrize("p", [1, 2, 3, 4, 8])
def test_matrix_inverse_pth_root_matches_optax(p):
    a = _spd(5, 4)
    root, error = optim.matrix_inverse_pth_root(a, p)
    troot, terror = optax.matrix_inverse_pth_root(_j(a), p)
    assert root.dtype == torch.float64
    # the ridge scales by the largest eigenvalue from a random start (fm's draw, not
    # JAX's): both converge to it to ~1e-12 relative, so the roots agree to 1e-10
    assert np.abs(root.numpy() - np.asarray(troot)).max() <= TOL
    assert abs(float(error) - float(terror)) <= 1e-8
    if p in (1, 2, 4, 8):  # optax's iteration is exact only for powers of two
        evals, evecs = torch.linalg.eigh(a)
        want = evecs @ torch.diag(evals ** (-1.0 / p)) @ evecs.T
        assert float((root - want).abs().max()) <= 1e-5


def test_matrix_inverse_pth_root_one_by_one_and_errors():
    root, error = optim.matrix_inverse_pth_root(torch.tensor([[4.0]], dtype=torch.float64), 2)
    troot, _ = optax.matrix_inverse_pth_root(jnp.array([[4.0]]), 2)
    assert abs(float(root[0, 0]) - float(troot[0, 0])) <= TOL and float(error) == 0.0
    with pytest.raises(ValueError, match="square"):
        optim.matrix_inverse_pth_root(torch.ones(2, 3), 2)


@pytest.mark.parametrize("k", [None, 3])
def test_nnls_matches_optax_and_scipy(k):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64)
    b = torch.randn((8,) if k is None else (8, k), generator=g, dtype=torch.float64)
    for iters in (1, 10, 200):
        ours = optim.nnls(a, b, iters)
        theirs = optax.nnls(_j(a), _j(b), iters)
        assert np.abs(ours.numpy() - np.asarray(theirs)).max() <= TOL
    ours = optim.nnls(a, b, 20_000, L=100.0)
    assert (
        np.abs(ours.numpy() - np.asarray(optax.nnls(_j(a), _j(b), 20_000, L=100.0))).max() <= 1e-9
    )
    scipy_opt = pytest.importorskip("scipy.optimize")
    columns = [b.numpy()] if k is None else list(b.numpy().T)
    want = np.stack([scipy_opt.nnls(a.numpy(), c)[0] for c in columns], -1)
    assert np.abs(ours.numpy().reshape(want.shape) - want).max() <= 1e-6
    assert bool((ours >= 0).all())


def test_nnls_bad_input():
    with pytest.raises(ValueError, match="shape"):
        optim.nnls(torch.ones(3, 2), torch.ones(4), 5)
    with pytest.raises(TypeError, match="unroll"):
        optim.nnls(torch.ones(3, 2), torch.ones(3), 5, unroll=1.5)


def test_multi_normal_log_prob_matches_optax():
    g = torch.Generator().manual_seed(6)
    loc = torch.randn(3, 4, generator=g, dtype=torch.float64)
    log_scale = torch.randn(4, generator=g, dtype=torch.float64) * 0.3
    x = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    ours, theirs = optim.multi_normal(loc, log_scale), optax.multi_normal(_j(loc), _j(log_scale))
    assert np.abs(ours.log_prob(x).numpy() - np.asarray(theirs.log_prob(_j(x)))).max() <= TOL
    assert torch.equal(ours.log_scale, log_scale)
    assert [t.shape for t in ours.params] == [(3, 4), (4,)]


def test_multi_normal_samples_are_fm_normal_draws():
    loc = torch.tensor([1.0, -2.0], dtype=torch.float64)
    log_scale = torch.tensor([0.0, np.log(3.0)], dtype=torch.float64)
    dist = optim.multi_normal(loc, log_scale)
    key = fm.random.key(7)
    draws = dist.sample((20_000,), key)
    assert draws.shape == (20_000, 2)
    # the deterministic part: the key's standard normals, scaled and shifted
    z = fm.random.normal(key, (20_000, 2), torch.float64)
    assert torch.equal(draws, z * log_scale.exp() + loc)
    # the statistics (20000 draws: 5% on the standard deviation, 4 standard errors on the mean)
    assert torch.allclose(draws.std(0), torch.tensor([1.0, 3.0], dtype=torch.float64), rtol=0.05)
    assert bool(((draws.mean(0) - loc).abs() <= 4 * torch.tensor([1.0, 3.0]) / 20_000**0.5).all())
    assert torch.equal(dist.sample((20_000,), key), draws)
    assert not torch.equal(dist.sample((20_000,), fm.random.key(8)), draws)
