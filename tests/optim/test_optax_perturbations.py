"""fm.optim.perturbations against optax.perturbations. The noise comes from fm.random keys
(not jax's), so values cannot equal optax's sample for sample. What is checked: the
deterministic parts exactly (float64, 1e-12): the estimate and its gradient against the
score-function formula evaluated by hand on the same samples (drawn with the documented
key layout), and ``log_prob`` against optax's; the statistics loosely: the samplers'
moments, and both libraries' gradient estimates of a known smoothed gradient within
stated Monte-Carlo tolerances. Skipped when jax or optax is absent."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

import funcmodels as fm
from funcmodels.optim import perturbations as pt

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-12
EULER = 0.5772156649015329


def test_signature_and_names():
    assert sorted(pt.__all__) == sorted(
        n for n in dir(optax.perturbations) if not n.startswith("_")
    )
    ours = inspect.signature(pt.make_perturbed_fun).parameters
    theirs = inspect.signature(optax.perturbations.make_perturbed_fun).parameters
    assert list(ours) == list(theirs)
    for p, q in zip(ours.values(), theirs.values(), strict=True):
        if p.name == "noise":
            assert type(p.default).__name__ == type(q.default).__name__ == "Gumbel"
        elif p.name != "fun":
            assert p.default == q.default, p.name


@pytest.mark.parametrize("name", ["Normal", "Gumbel"])
def test_log_prob_matches_optax(name):
    z = np.random.default_rng(0).standard_normal(50) * 2
    got = getattr(pt, name)().log_prob(torch.as_tensor(z))
    want = getattr(optax.perturbations, name)().log_prob(jnp.asarray(z))
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["Normal", "Gumbel"])
@pytest.mark.parametrize("use_baseline", [True, False])
def test_estimate_and_gradient_equal_the_formula_on_the_same_samples(name, use_baseline):
    """Value: mean_s f(x + sigma z_s). Gradient: mean_s (f(y_s) - b) * d/dx log p((y_s -
    x) / sigma), b = f(x) with the baseline, 0 without; d/dx log p(z) = -log p'(z) / sigma
    with log p' = -z (Normal), -1 + exp(-z) (Gumbel)."""
    noise, sigma, n = getattr(pt, name)(), 0.3, 64
    x = {
        "a": torch.tensor([0.2, -0.4], dtype=torch.float64),
        "b": torch.tensor(0.7, dtype=torch.float64),
    }

    def f(t):
        return torch.relu(t["a"]).sum() * t["b"] + torch.sign(t["b"])

    key = fm.random.key(3)
    fn = pt.make_perturbed_fun(f, n, sigma, noise, use_baseline)
    value = fn(key, x)
    grad = torch.func.grad(fn, argnums=1)(key, x)

    def dlogp(z):
        return -z if name == "Normal" else -1 + torch.exp(-z)

    base = f(x) if use_baseline else 0.0
    vals, grads = [], {"a": 0.0, "b": 0.0}
    for k in fm.random.split(key, n):
        ka, kb = fm.random.split(k, 2)  # leaves in order: "a", "b"
        z = {"a": noise.sample(ka, (2,), torch.float64), "b": noise.sample(kb, (), torch.float64)}
        y = {leaf: x[leaf] + sigma * z[leaf] for leaf in x}
        z = {leaf: (y[leaf] - x[leaf]) / sigma for leaf in x}  # as the estimator rounds
        fy = f(y)
        vals.append(fy)
        for leaf in x:
            grads[leaf] = grads[leaf] + (fy - base) * dlogp(z[leaf]) * (-1 / sigma) / n
    torch.testing.assert_close(value, torch.stack(vals).mean(), rtol=0, atol=TOL)
    for leaf in x:
        # 1e-10: the mean over samples is summed in another order than the loop's
        torch.testing.assert_close(grad[leaf], grads[leaf], rtol=0, atol=1e-10)


def test_sampler_moments():
    """200k samples: mean and variance within 5 standard errors of the distribution's."""
    k = fm.random.key(0)
    n = 200_000
    for sampler, mean, var in [(pt.Normal(), 0.0, 1.0), (pt.Gumbel(), EULER, math.pi**2 / 6)]:
        z = sampler.sample(k, (n,))
        assert z.dtype == torch.float64  # optax's dtype=float
        assert abs(float(z.mean()) - mean) < 5 * math.sqrt(var / n)
        assert abs(float(z.var()) - var) < 0.03 * var


def test_gradient_estimate_agrees_with_optax_and_the_smoothed_gradient():
    """f = sum(relu(x)) at x = 0 with Gumbel noise: the smoothed gradient is P(z > 0) =
    1 - exp(-1) per coordinate. 20k samples, each library's estimate within 0.05 of it
    (the per-sample estimator relu(z) * (1 - exp(-z)) is at most relu(z), so its standard
    deviation is below sqrt(E z^2) = 1.41 and 0.05 is over 5 standard errors)."""
    n, want = 20_000, 1 - math.exp(-1)
    ours = torch.func.grad(pt.make_perturbed_fun(lambda x: torch.relu(x).sum(), n, 0.1), 1)(
        fm.random.key(0), torch.zeros(3, dtype=torch.float64)
    )
    theirs = jax.grad(
        optax.perturbations.make_perturbed_fun(lambda x: jnp.maximum(x, 0.0).sum(), n, 0.1), 1
    )(jax.random.key(0), jnp.zeros(3))
    np.testing.assert_allclose(ours.numpy(), want, atol=0.05)
    np.testing.assert_allclose(np.asarray(theirs), want, atol=0.05)


def test_errors_and_input_untouched():
    with pytest.raises(ValueError, match="num_samples"):
        pt.make_perturbed_fun(torch.sum, 0)
    x = torch.ones(3)
    pt.make_perturbed_fun(torch.sum, 8)(fm.random.key(0), x)
    assert torch.equal(x, torch.ones(3))
