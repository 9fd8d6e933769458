"""optax's ``perturbations``: a differentiable Monte-Carlo approximation of a function
through stochastic perturbations of its input, with noise drawn from ``fm.random`` keys.

``make_perturbed_fun(f)(key, x)`` estimates ``E_z f(x + sigma z)``; its gradients (by
``torch.func.grad`` or ``autograd``, of any order) are the score-function estimates of
that expectation's gradients, so ``f`` itself need not be differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from .. import random as fm_random

__all__ = ["Gumbel", "Normal", "make_perturbed_fun"]


class Normal:
    """The standard normal distribution (optax's), sampled from ``fm.random`` keys."""

    def sample(
        self, key: torch.Tensor, sample_shape: Sequence[int] = (), dtype: Any = float
    ) -> torch.Tensor:
        """Standard normal samples (``fm.random.normal``).

        Arguments:
            key: an ``fm.random`` key.
            sample_shape: the samples' shape.
            dtype: the samples' dtype (``float``: float64, as optax's ``float``).

        Returns:
            A tensor of shape ``sample_shape``.
        """
        return fm_random.normal(key, tuple(sample_shape), _dtype(dtype))

    def log_prob(self, inputs: torch.Tensor) -> torch.Tensor:
        """The log density up to a constant, ``-inputs**2 / 2``.

        Arguments:
            inputs: any tensor.

        Returns:
            A tensor of ``inputs``' shape.
        """
        return -0.5 * inputs**2


class Gumbel:
    """The standard Gumbel distribution (optax's), sampled from ``fm.random`` keys."""

    def sample(
        self, key: torch.Tensor, sample_shape: Sequence[int] = (), dtype: Any = float
    ) -> torch.Tensor:
        """Standard Gumbel samples (``fm.random.gumbel``).

        Arguments:
            key: an ``fm.random`` key.
            sample_shape: the samples' shape.
            dtype: the samples' dtype (``float``: float64, as optax's ``float``).

        Returns:
            A tensor of shape ``sample_shape``.
        """
        return fm_random.gumbel(key, tuple(sample_shape), _dtype(dtype))

    def log_prob(self, inputs: torch.Tensor) -> torch.Tensor:
        """The log density, ``-inputs - exp(-inputs)``.

        Arguments:
            inputs: any tensor.

        Returns:
            A tensor of ``inputs``' shape.
        """
        return -inputs - torch.exp(-inputs)


def _dtype(dtype: Any) -> torch.dtype:
    return torch.float64 if dtype is float else dtype


def _magicbox(x: torch.Tensor) -> torch.Tensor:
    """DiCE's MagicBox: 1 in value, ``d(box) = box * dx`` in derivatives."""
    return torch.exp(x - x.detach())


def make_perturbed_fun(
    fun: Callable[[Any], Any],
    num_samples: int = 1000,
    sigma: float | torch.Tensor = 0.1,
    noise: Any = Gumbel(),  # noqa: B008 (optax's default instance; stateless)
    use_baseline: bool = True,
) -> Callable[[torch.Tensor, Any], Any]:
    """A differentiable approximation of ``fun`` through stochastic perturbations
    (optax's): ``f_sigma(x) = E_z fun(x + sigma * z)``, ``z ~ noise``, estimated from
    ``num_samples`` samples, whose derivatives of any order are unbiased estimates of
    ``f_sigma``'s (the score-function estimator through DiCE's MagicBox).

    Sample ``s`` uses the key ``fm.random.split(key, num_samples)[s]``, split again over
    ``x``'s leaves in order; the samples run under ``torch.func.vmap``, so ``fun`` must
    be vmappable (as optax's must be under ``jax.vmap``).

    Arguments:
        fun: a function from a pytree of tensors to a pytree of tensors.
        num_samples: the number of perturbed evaluations averaged.
        sigma: the scale of the perturbation.
        noise: an object with ``sample(key, shape, dtype)`` and ``log_prob(z)``, such as
            :class:`Gumbel` (the default) or :class:`Normal`.
        use_baseline: use ``fun`` at the unperturbed input as a baseline (lower
            variance; its value is unchanged).

    Returns:
        ``perturbed(key, x)``: an ``fm.random`` key and ``fun``'s input to the estimate,
            a pytree like ``fun``'s output.

    Raises:
        ValueError: ``num_samples`` below 1.
    """
    if int(num_samples) < 1:
        raise ValueError(
            f"fm.optim.perturbations.make_perturbed_fun: num_samples must be >= 1, "
            f"got {num_samples}"
        )

    def stoch_estimator(key: torch.Tensor, x: Any, baseline: Any) -> Any:
        leaves, spec = pytree.tree_flatten(x)
        keys = fm_random.split(key, len(leaves))
        sample = [noise.sample(keys[i], leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)]
        shifted = [(leaf + sigma * z).detach() for leaf, z in zip(leaves, sample, strict=True)]
        sample = [(y - leaf) / sigma for leaf, y in zip(leaves, shifted, strict=True)]
        log_prob = sum(noise.log_prob(z).sum() for z in sample)
        box = _magicbox(log_prob)
        out = pytree.tree_map(lambda o: box * o, fun(pytree.tree_unflatten(shifted, spec)))
        if use_baseline:
            out = pytree.tree_map(lambda o, b: o + (1 - box) * b, out, baseline)
        return out

    def mc_estimator(key: torch.Tensor, x: Any) -> Any:
        baseline = fun(pytree.tree_map(torch.Tensor.detach, x)) if use_baseline else None
        out = torch.func.vmap(stoch_estimator, in_dims=(0, None, None))(
            fm_random.split(key, num_samples), x, baseline
        )
        return pytree.tree_map(lambda o: o.mean(0), out)

    return mc_estimator
