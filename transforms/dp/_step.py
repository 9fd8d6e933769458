"""One DP-SGD step in one call: :func:`private_step` (clip, noise, divide, optimise)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

import funcmodels as fm

from ._accounting import add_noise
from ._bounds import check_bounds
from ._clip import clipped_grad


class PrivateStepInfo(NamedTuple):
    """What :func:`private_step` reports about its step besides the new params."""

    norms: torch.Tensor
    """``(B,)`` the per-example gradient norms before clipping (``(0,)`` for an empty
    batch)"""
    batch_size: int
    """``B``, the examples in this step's batch (Poisson sampling varies it)"""


PrivateStep = Callable[..., tuple[fm.Params, Any, PrivateStepInfo]]


def private_step(
    loss_fn: Callable[..., torch.Tensor],
    optimizer: fm.optim.GradientTransformation,
    *,
    max_norm: float | Mapping[str, float],
    noise_multiplier: float,
    expected_batch_size: float,
) -> PrivateStep:
    """One step of DP-SGD (Abadi et al. 2016) as one function: the clipped sum of the
    per-example gradients (:func:`clipped_grad`), Gaussian noise of std
    ``noise_multiplier * max_norm`` drawn from the step's key (:func:`add_noise`),
    division by the expected batch size, then the optimiser's update.

    ``step = private_step(loss, fm.optim.adam(1e-3), max_norm=1.0, noise_multiplier=1.1,
    expected_batch_size=256)``; then, each step, ``params, opt_state, info = step(key,
    params, opt_state, x, y)`` with a fresh key (``fm.fold_in(key, step_number)``). It
    equals, bitwise::

        grads, norms = clipped_grad(loss_fn, max_norm)(params, *batch, **kwargs)
        noisy = add_noise(grads, key, noise_multiplier=noise_multiplier, max_norm=max_norm)
        mean = fm.tree.map(lambda g: g / expected_batch_size, noisy)
        updates, opt_state = optimizer.update(mean, opt_state, params)
        params = fm.optim.apply_updates(params, updates)

    The divisor is the *expected* batch size ``q * N`` of Poisson sampling, not the
    batch's own size, as the privacy analysis needs; an empty batch is a valid Poisson
    batch and takes a step of noise alone.

    Arguments:
        loss_fn: ``loss_fn(params, *batch, **kwargs) -> (B,)`` per-example losses, as
            :func:`clipped_grad` takes it.
        optimizer: an ``fm.optim`` GradientTransformation, or an object with its
            ``update`` (``fm.optim.MultiSteps``); its ``init`` makes the ``opt_state``
            passed to the step.
        max_norm: the per-example clipping bound, or per-layer bounds (a mapping of layer
            paths to bounds; the noise then scales with their :func:`total_norm`).
        noise_multiplier: the noise std relative to the bound, ``>= 0``.
        expected_batch_size: ``q * N``, the sampling rate times the dataset size, ``> 0``.

    Returns:
        ``step(key, params, opt_state, *batch, **kwargs) -> (params, opt_state, info)``:
            ``batch`` tensors with the examples on dim 0 (``B >= 0``), ``kwargs`` shared by
            all examples (``state=...``); ``info`` a :class:`PrivateStepInfo` with the
            per-example ``norms (B,)`` and ``batch_size`` ``B``.

    Raises:
        TypeError: ``loss_fn`` is not callable, ``optimizer`` has no ``update``, or a
            number is not a number.
        ValueError: a bound, the noise multiplier or the expected batch size is out of
            range.
    """
    where = "transforms.dp.private_step"
    if not callable(loss_fn):
        raise TypeError(f"{where}: loss_fn must be callable, got {loss_fn!r}")
    if not callable(getattr(optimizer, "update", None)):  # MultiSteps' class form too
        raise TypeError(
            f"{where}: optimizer must be an fm.optim GradientTransformation such as "
            f"fm.optim.adam(1e-3), got {type(optimizer).__name__}"
        )
    check_bounds(max_norm, "private_step")
    noise_multiplier = _number(where, "noise_multiplier", noise_multiplier, positive=False)
    divisor = _number(where, "expected_batch_size", expected_batch_size, positive=True)
    clipped = clipped_grad(loss_fn, max_norm)

    def step(key: torch.Tensor, params: fm.Params, opt_state: Any, *batch: Any, **kwargs: Any):
        fm.random.check_key(key, f"{where}: key")
        grads, norms = clipped(params, *batch, **kwargs)
        noisy = add_noise(grads, key, noise_multiplier=noise_multiplier, max_norm=max_norm)
        mean = fm.tree.map(lambda g: g / divisor, noisy)
        updates, opt_state = optimizer.update(mean, opt_state, params)
        params = fm.optim.apply_updates(params, updates)
        return params, opt_state, PrivateStepInfo(norms, int(norms.shape[0]))

    return step


def _number(where: str, name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {name} must be a finite number {bound}, got {value!r}")
    return value
