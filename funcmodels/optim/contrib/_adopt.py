"""ADOPT (Taniguchi et al., 2024): Adam whose first moment averages updates normalised by
the previous second moment, as optax.contrib's ``adopt`` and ``scale_by_adopt``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._adam import ScaleByAdamState
from .._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    count_like,
    dtype_arg,
    number,
)
from .._more_common import flag, hyper, leafwise, per_leaf, rebuild, state_leaves, zeros
from .._transforms import scale_by_learning_rate
from .._utilities import safe_increment


def _quarter_power(count: torch.Tensor) -> torch.Tensor:
    """ADOPT's default clip value, ``count**0.25``."""
    return count**0.25


def scale_by_adopt(
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[torch.Tensor], Any] = _quarter_power,
) -> GradientTransformation:
    """ADOPT's scaling (optax.contrib's ``scale_by_adopt``): the first moment averages
    ``u / max(sqrt(nu_prev), eps)`` (clipped to ``clip_value_fn(count)``), then ``nu``
    is updated; the first step only fills ``nu``.

    Arguments:
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: the floor of the second moment's square root.
        mu_dtype: the dtype of the first moment (the params' when ``None``).
        nesterov: Nesterov momentum.
        use_clipping: clip the normalised updates.
        clip_value_fn: the clip value as a function of the count (given as a float64
            0-dim tensor), ``count**0.25`` by default.

    Returns:
        A GradientTransformation; its state is a ``ScaleByAdamState`` (as optax's).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_adopt"
    b1, b2, eps = number(where, "b1", b1), number(where, "b2", b2), number(where, "eps", eps)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)
    flag(where, "nesterov", nesterov)
    flag(where, "use_clipping", use_clipping)

    def init(params):
        return ScaleByAdamState(count_like(params), zeros(params, mu_dtype), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdamState, where)
        mus, nus = state_leaves(state.mu, spec, "mu"), state_leaves(state.nu, spec, "nu")
        started = state.count > 0
        # the count as a float64 tensor: JAX (with x64) computes ``0.1 * count`` or
        # ``count**0.25`` of its int32 count in float64, torch would in float32
        clip = clip_value_fn(state.count.to(torch.float64)) if use_clipping else None

        def leaf(g, mu, nu):
            one, zero = _as(1.0, g), _as(0.0, g)
            b1_ = torch.where(started, _as(b1, g), one)
            b2_ = torch.where(started, _as(b2, g), zero)
            new_nu = (1 - b2_) * g**2 + b2_ * nu
            normed = g / torch.clamp_min(nu.sqrt(), hyper(eps, g))
            if clip is not None:
                c = _as(clip, g)
                normed = torch.clamp(normed, -c, c)
            mu = (1 - b1_) * normed + b1_ * mu
            out = (1 - b1_) * normed + b1_ * mu if nesterov else mu
            return out, mu, new_nu

        out, mus, nus = per_leaf(leaf, us, mus, nus)
        new = ScaleByAdamState(safe_increment(state.count), *rebuild(spec, mus, nus))
        return out, new

    # without Nesterov the updates are the new first moment itself, which the state keeps
    return leafwise(where, init, step, fresh=nesterov)


def _as(value: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def adopt(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[torch.Tensor], Any] = _quarter_power,
) -> GradientTransformation:
    """ADOPT (optax.contrib's ``adopt``): ``chain(scale_by_adopt(...),
    scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: the floor of the second moment's square root.
        mu_dtype: the dtype of the first moment.
        nesterov: Nesterov momentum.
        use_clipping: clip the normalised updates.
        clip_value_fn: the clip value as a function of the count.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
        scale_by_learning_rate(learning_rate),
    )
