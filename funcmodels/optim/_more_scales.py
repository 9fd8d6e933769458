"""Adam's relatives as pieces, in optax's names, defaults and arithmetic: RAdam, AdaBelief,
Yogi, Adan, Adadelta and NovoGrad.

Written leaf by leaf (see ``_more_common``): each leaf's step computes in the promotion of
the update's dtype and the state's, and stores the state back in its own dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._adam import ScaleByAdamState
from ._base import (
    GradientTransformation,
    Scalar,
    check_state,
    count_like,
    dtype_arg,
    number,
)
from ._moments import _bias_correction
from ._more_common import flag, full, hyper, leafwise, per_leaf, rebuild, state_leaves, zeros


class ScaleByBeliefState(NamedTuple):
    """The state of :func:`scale_by_belief` (and so of :func:`adabelief`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """first-moment estimates"""
    nu: Any
    """estimates of the squared prediction error"""


class ScaleByAdanState(NamedTuple):
    """The state of :func:`scale_by_adan` (and so of :func:`adan`)."""

    m: Any
    """moving average of the updates"""
    v: Any
    """moving average of the updates' differences"""
    n: Any
    """moving average of the squared corrected updates"""
    g: Any
    """the previous updates"""
    t: torch.Tensor
    """updates done, a 0-dim int64 tensor"""


class ScaleByAdaDeltaState(NamedTuple):
    """The state of :func:`scale_by_adadelta` (and so of :func:`adadelta`)."""

    e_g: Any
    """moving average of the squared updates"""
    e_x: Any
    """moving average of the squared scaled updates"""


class ScaleByNovogradState(NamedTuple):
    """The state of :func:`scale_by_novograd` (and so of :func:`novograd`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """the momentum buffers"""
    nu: Any
    """per leaf, a 0-dim moving average of the squared norm of the updates"""


def _bc(decay: Scalar, count: torch.Tensor, x: torch.Tensor) -> Any:
    """``1 - decay**count`` for leaves like ``x`` (see ``_moments._bias_correction``)."""
    return _bias_correction(hyper(decay, x), count, x.dtype)


def _nesterov_hat(m, g, b1, count) -> torch.Tensor:
    """optax's Nesterov estimate ``b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)``."""
    a = hyper(b1, m)
    return a * (m / _bc(a, count + 1, m)) + (1 - a) * (g / _bc(a, count, g))


def _adam_like_checks(where: str, b1, b2, eps, eps_root) -> tuple:
    return (
        number(where, "b1", b1, below=1.0),
        number(where, "b2", b2, below=1.0),
        number(where, "eps", eps),
        number(where, "eps_root", eps_root),
    )


def scale_by_radam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rectified Adam's scaling (Liu et al., 2020): Adam's update times the rectification
    ``r_t`` where the variance is tractable (``rho_t >= threshold``), the bias-corrected
    first moment alone before.

    Arguments:
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        threshold: the smallest ``rho_t`` at which the adaptive step is taken.
        nesterov: Nesterov momentum (as :func:`scale_by_adam`'s).

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdamState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_radam"
    b1, b2, eps, eps_root = _adam_like_checks(where, b1, b2, eps, eps_root)
    threshold = number(where, "threshold", threshold, lo=-float("inf"))
    flag(where, "nesterov", nesterov)

    def init(params):
        return ScaleByAdamState(count_like(params), zeros(params), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdamState, where)
        mus = state_leaves(state.mu, spec, "first moments")
        nus = state_leaves(state.nu, spec, "second moments")
        count = state.count + 1
        t = count.to(torch.float64)
        b2_64 = torch.as_tensor(b2, dtype=torch.float64, device=t.device)
        b2t = b2_64**t
        ro_inf = 2.0 / (1.0 - b2_64) - 1.0
        ro = ro_inf - 2 * t * b2t / (1 - b2t)
        r = torch.sqrt((ro - 4.0) * (ro - 2.0) * ro_inf / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro))
        tractable = ro >= threshold

        def leaf(g, m, v):
            a, b = hyper(b1, g), hyper(b2, g)
            m = (1 - a) * g + a * m
            v = (1 - b) * g * g + b * v
            m_hat = _nesterov_hat(m, g, b1, count) if nesterov else m / _bc(a, count, m)
            v_hat = v / _bc(b, count, v)
            adaptive = (
                r.to(m.dtype) * m_hat / (torch.sqrt(v_hat + hyper(eps_root, g)) + hyper(eps, g))
            )
            return torch.where(tractable, adaptive, m_hat), m, v

        out, mus, nus = per_leaf(leaf, us, mus, nus)
        return out, ScaleByAdamState(count, *rebuild(spec, mus, nus))

    return leafwise(where, init, step)


def scale_by_belief(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief's scaling (Zhuang et al., 2020): Adam's with the second moment of the
    prediction error ``u - mu`` in place of ``u**2``, ``eps_root`` added to it each step.

    Arguments:
        b1: the decay rate of the first moment.
        b2: the decay rate of the prediction error's second moment.
        eps: added to the denominator outside the square root.
        eps_root: added to the error's second moment.
        nesterov: Nesterov momentum.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByBeliefState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_belief"
    b1, b2, eps, eps_root = _adam_like_checks(where, b1, b2, eps, eps_root)
    flag(where, "nesterov", nesterov)

    def init(params):
        return ScaleByBeliefState(count_like(params), zeros(params), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByBeliefState, where)
        mus = state_leaves(state.mu, spec, "first moments")
        nus = state_leaves(state.nu, spec, "second moments")
        count = state.count + 1

        def leaf(g, m, v):
            a, b = hyper(b1, g), hyper(b2, g)
            m = (1 - a) * g + a * m
            err = g - m
            v = (1 - b) * err * err + b * v + hyper(eps_root, g)
            m_hat = _nesterov_hat(m, g, b1, count) if nesterov else m / _bc(a, count, m)
            v_hat = v / _bc(b, count, v)
            return m_hat / (torch.sqrt(v_hat) + hyper(eps, g)), m, v

        out, mus, nus = per_leaf(leaf, us, mus, nus)
        return out, ScaleByBeliefState(count, *rebuild(spec, mus, nus))

    return leafwise(where, init, step)


def scale_by_yogi(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-3,
    eps_root: Scalar = 0.0,
    initial_accumulator_value: Scalar = 1e-6,
) -> GradientTransformation:
    """Yogi's scaling (Zaheer et al., 2018): Adam's with the additive second moment
    ``nu - (1 - b2) * sign(nu - u**2) * u**2``; both moments start at
    ``initial_accumulator_value``.

    Arguments:
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        initial_accumulator_value: both moments' start.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdamState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_yogi"
    b1, b2, eps, eps_root = _adam_like_checks(where, b1, b2, eps, eps_root)
    initial = number(where, "initial_accumulator_value", initial_accumulator_value)

    def init(params):
        return ScaleByAdamState(count_like(params), full(params, initial), full(params, initial))

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdamState, where)
        mus = state_leaves(state.mu, spec, "first moments")
        nus = state_leaves(state.nu, spec, "second moments")
        count = state.count + 1

        def leaf(g, m, v):
            a, b = hyper(b1, g), hyper(b2, g)
            m = (1 - a) * g + a * m
            g2 = g * g
            v = v - (1 - b) * torch.sign(v - g2) * g2
            m_hat, v_hat = m / _bc(a, count, m), v / _bc(b, count, v)
            return m_hat / (torch.sqrt(v_hat + hyper(eps_root, g)) + hyper(eps, g)), m, v

        out, mus, nus = per_leaf(leaf, us, mus, nus)
        return out, ScaleByAdamState(count, *rebuild(spec, mus, nus))

    return leafwise(where, init, step)


def scale_by_adan(
    b1: Scalar = 0.98,
    b2: Scalar = 0.92,
    b3: Scalar = 0.99,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    """Adan's scaling (Xie et al., 2022, Algorithm 1): moving averages of the updates, of
    their differences and of the squared corrected updates ``u + (1 - b2) * diff``, each
    bias-corrected; ``(m_hat + (1 - b2) * v_hat) / (sqrt(n_hat + eps_root) + eps)``.

    Arguments:
        b1: decay of the updates' average.
        b2: decay of the differences' average.
        b3: decay of the squared term's average.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdanState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_adan"
    b1, b2, eps, eps_root = _adam_like_checks(where, b1, b2, eps, eps_root)
    b3 = number(where, "b3", b3, below=1.0)

    def init(params):
        z = lambda: zeros(params)  # noqa: E731
        return ScaleByAdanState(z(), z(), z(), z(), count_like(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdanState, where)
        trees = [(state.m, "averages"), (state.v, "differences"), (state.n, "squares")]
        olds = [state_leaves(tree, spec, what) for tree, what in trees]
        olds.append(state_leaves(state.g, spec, "previous updates"))
        first, t = state.t == 0, state.t + 1

        def leaf(g, m, v, n, prev):
            a, b, c = hyper(b1, g), hyper(b2, g), hyper(b3, g)
            diff = torch.where(first, torch.zeros_like(g), g - prev)
            m = (1 - a) * g + a * m
            v = (1 - b) * diff + b * v
            sq = g + (1 - b) * diff
            n = (1 - c) * sq * sq + c * n
            m_hat, v_hat, n_hat = m / _bc(a, t, m), v / _bc(b, t, v), n / _bc(c, t, n)
            denom = torch.sqrt(n_hat + hyper(eps_root, g)) + hyper(eps, g)
            return (m_hat + (1 - b) * v_hat) / denom, m, v, n, g

        out, *news = per_leaf(leaf, us, *olds)
        return out, ScaleByAdanState(*rebuild(spec, *news), t)

    return leafwise(where, init, step)


def scale_by_adadelta(rho: Scalar = 0.9, eps: Scalar = 1e-6) -> GradientTransformation:
    """Adadelta's scaling (Zeiler, 2012): ``u * sqrt(e_x + eps) / sqrt(e_g + eps)``, ``e_g``
    the moving average of the squared updates (this one included) and ``e_x`` that of the
    squared scaled updates (before this one).

    Arguments:
        rho: the averages' decay, in ``[0, 1]``.
        eps: added inside both square roots.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdaDeltaState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_adadelta"
    rho = number(where, "rho", rho, below=1.0 + 1e-12)
    eps = number(where, "eps", eps)

    def init(params):
        return ScaleByAdaDeltaState(zeros(params), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByAdaDeltaState, where)
        egs = state_leaves(state.e_g, spec, "squared averages")
        exs = state_leaves(state.e_x, spec, "squared step averages")

        def leaf(g, e_g, e_x):
            r, e = hyper(rho, g), hyper(eps, g)
            e_g = (1 - r) * g * g + r * e_g
            out = torch.sqrt(e_x + e) / torch.sqrt(e_g + e) * g
            return out, e_g, (1 - r) * out * out + r * e_x

        out, egs, exs = per_leaf(leaf, us, egs, exs)
        return out, ScaleByAdaDeltaState(*rebuild(spec, egs, exs))

    return leafwise(where, init, step)


def scale_by_novograd(
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """NovoGrad's scaling (Ginsburg et al., 2019): per leaf, ``nu`` a moving average of the
    squared norm of the updates (the first norm itself), and ``mu = b1 * mu + u /
    (sqrt(nu + eps_root) + eps) + weight_decay * param`` (no ``b1 * mu`` at the first
    step); the update is ``mu``.

    Arguments:
        b1: the momentum.
        b2: the decay of ``nu``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: the coefficient on the params.
        mu_dtype: the momentum's dtype (``None``: the param's).

    Returns:
        A GradientTransformation needing the params; its state is a
            :class:`ScaleByNovogradState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type; from
            ``update``, no params.
    """
    where = "fm.optim.scale_by_novograd"
    b1, b2, eps, eps_root = _adam_like_checks(where, b1, b2, eps, eps_root)
    weight_decay = number(where, "weight_decay", weight_decay)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)

    def init(params):
        nu = pytree.tree_map(lambda p: torch.zeros((), dtype=p.dtype, device=p.device), params)
        return ScaleByNovogradState(count_like(params), zeros(params, mu_dtype), nu)

    def step(us, state, ps, spec):
        check_state(state, ScaleByNovogradState, where)
        mus = state_leaves(state.mu, spec, "momentum buffers")
        nus = state_leaves(state.nu, spec, "squared norms")
        count = state.count + 1
        first = count == 1

        def leaf(g, m, n, p):
            sq = torch.linalg.vector_norm(g) ** 2
            n = torch.where(first, sq, (1 - hyper(b2, g)) * sq + hyper(b2, g) * n)
            add = g / (torch.sqrt(n + hyper(eps_root, g)) + hyper(eps, g))
            add = add + hyper(weight_decay, g) * p
            m = torch.where(first, add, hyper(b1, g) * m + add)
            return m, m, n

        out, mus, nus = per_leaf(leaf, us, mus, nus, inputs=[ps])
        out = [o.to(m.dtype) for o, m in zip(out, mus, strict=True)]
        return out, ScaleByNovogradState(count, *rebuild(spec, mus, nus))

    return leafwise(where, init, step, needs_params=True, fresh=False)
