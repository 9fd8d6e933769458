"""AdEMAMix (Pagliardini et al., 2024): Adam with a second, slow moving average of the
gradients, and its simplified form, as optax.contrib's."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    dtype_arg,
    is_schedule,
    number,
)
from .._more_common import hyper, leafwise, per_leaf, rebuild, state_leaves, zeros
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import bias_correction, safe_increment, update_moment, update_moment_per_elem_norm
from ._common import device_of


class ScaleByAdemamixState(NamedTuple):
    """The state of :func:`scale_by_ademamix` (and so of :func:`ademamix`)."""

    count: torch.Tensor
    """the step count (0-dim int32)"""
    count_m2: torch.Tensor
    """the count ``b3`` and ``alpha``'s schedules see (0-dim int32)"""
    m1: Any
    """the fast moving average of the updates"""
    m2: Any
    """the slow moving average of the updates"""
    nu: Any
    """the second moment"""


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """The state of :func:`scale_by_simplified_ademamix`."""

    t: torch.Tensor
    """the step count (0-dim int32)"""
    m: Any
    """the accumulated updates ``g + b1 m``"""
    n: Any
    """the second moment"""


def _at(value: Any, count: torch.Tensor) -> Any:
    return value(count) if is_schedule(value) else value


def _int32(params: Any) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int32, device=device_of(params))


def scale_by_ademamix(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: Scalar = 0.9999,
    alpha: Scalar = 6.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """AdEMAMix's scaling (optax.contrib's ``scale_by_ademamix``): ``(m1_hat + alpha m2) /
    (sqrt(nu_hat + eps_root) + eps)``, ``m2`` a slow average of decay ``b3`` (not bias
    corrected).

    Arguments:
        b1: the decay rate of the fast average.
        b2: the decay rate of the second moment.
        b3: the decay rate of the slow average (a number or a schedule of the count).
        alpha: the weight of the slow average (a number or a schedule of the count).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: the dtype of the averages and the second moment (the params' when
            ``None``).

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdemamixState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_ademamix"
    b1, b2 = number(where, "b1", b1), number(where, "b2", b2)
    b3 = number(where, "b3", b3, schedule=True)
    alpha = number(where, "alpha", alpha, lo=-float("inf"), schedule=True)
    eps, eps_root = number(where, "eps", eps), number(where, "eps_root", eps_root)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)

    def init(params):
        m1, m2, nu = (zeros(params, mu_dtype) for _ in range(3))
        return ScaleByAdemamixState(_int32(params), _int32(params), m1, m2, nu)

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdemamixState, where)
        c_b3, c_alpha = _at(b3, state.count_m2), _at(alpha, state.count_m2)
        count = safe_increment(state.count)
        m1s, m2s, nus = (state_leaves(getattr(state, f), spec, f) for f in ("m1", "m2", "nu"))

        def leaf(g, m1, m2, nu):
            m1 = update_moment(g, m1, b1, 1)
            m2 = update_moment(g, m2, c_b3, 1)
            nu = update_moment_per_elem_norm(g, nu, b2, 2)
            m1_hat, nu_hat = bias_correction(m1, b1, count), bias_correction(nu, b2, count)
            den = (nu_hat + hyper(eps_root, g)).sqrt() + hyper(eps, g)
            return (m1_hat + hyper(c_alpha, g) * m2) / den, m1, m2, nu

        out, m1s, m2s, nus = per_leaf(leaf, us, m1s, m2s, nus)
        new = ScaleByAdemamixState(
            count, safe_increment(state.count_m2), *rebuild(spec, m1s, m2s, nus)
        )
        return out, new

    return leafwise(where, init, step)


def ademamix(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: Scalar = 0.9999,
    alpha: Scalar = 5.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: Any = None,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """AdEMAMix (optax.contrib's ``ademamix``): ``chain(scale_by_ademamix(...),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the fast average.
        b2: the decay rate of the second moment.
        b3: the decay rate of the slow average (a number or a schedule).
        alpha: the weight of the slow average (a number or a schedule).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: the dtype of the averages.
        weight_decay: decoupled weight decay.
        mask: which params decay.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def scale_by_simplified_ademamix(
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: Scalar = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    """Simplified AdEMAMix's scaling (optax.contrib's): ``m = g + b1 m``, ``n`` Adam's
    second moment, the update ``(m + alpha g) / (sqrt(n_hat + eps_root) + eps)``.

    Arguments:
        b1: the decay of the accumulated updates.
        b2: the decay rate of the second moment.
        alpha: the weight of the current updates (a number or a schedule of the count).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleBySimplifiedAdEMAMixState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_simplified_ademamix"
    b1, b2 = number(where, "b1", b1), number(where, "b2", b2)
    alpha = number(where, "alpha", alpha, lo=-float("inf"), schedule=True)
    eps, eps_root = number(where, "eps", eps), number(where, "eps_root", eps_root)

    def init(params):
        return ScaleBySimplifiedAdEMAMixState(_int32(params), zeros(params), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleBySimplifiedAdEMAMixState, where)
        c_alpha = _at(alpha, state.t)
        t = safe_increment(state.t)
        ms, ns = state_leaves(state.m, spec, "m"), state_leaves(state.n, spec, "n")

        def leaf(g, m, n):
            m = g + hyper(b1, g) * m
            sq = g * g
            n = sq + hyper(b2, g) * (n - sq)  # optax's lerp(b2, g*g, n)
            den = (bias_correction(n, b2, t) + hyper(eps_root, g)).sqrt() + hyper(eps, g)
            return (m + hyper(c_alpha, g) * g) / den, m, n

        out, ms, ns = per_leaf(leaf, us, ms, ns)
        return out, ScaleBySimplifiedAdEMAMixState(t, *rebuild(spec, ms, ns))

    return leafwise(where, init, step)


def simplified_ademamix(
    learning_rate: Scalar,
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: Scalar = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """Simplified AdEMAMix (optax.contrib's): ``chain(scale_by_simplified_ademamix(...),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay of the accumulated updates.
        b2: the decay rate of the second moment.
        alpha: the weight of the current updates (a number or a schedule).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: decoupled weight decay.
        mask: which params decay.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
