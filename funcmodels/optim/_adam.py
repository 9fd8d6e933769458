"""Adam and its relatives (AMSGrad, Adamax), in optax's names, defaults and arithmetic."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    count_like,
    dtype_arg,
    flat_transformation,
    number,
)
from ._moments import (
    _bias_correction,
    _flag,
    _like,
    _sqrt,
    _state_leaves,
    _unflatten,
    _zeros,
)
from ._ops import Ops, Tensors, cast, grouped, promoted, scalar
from ._transforms import add_decayed_weights, scale_by_learning_rate


class ScaleByAdamState(NamedTuple):
    """The state of :func:`scale_by_adam` (and so of :func:`adam`, :func:`adamw`, ...)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """first-moment estimates, a pytree like the params"""
    nu: Any
    """second-moment estimates, a pytree like the params"""


class ScaleByAmsgradState(NamedTuple):
    """The state of :func:`scale_by_amsgrad` (and so of :func:`amsgrad`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """first-moment estimates, a pytree like the params"""
    nu: Any
    """second-moment estimates, a pytree like the params"""
    nu_max: Any
    """the largest second-moment estimate so far"""


def _adam_denominator(
    ops: Ops, nus: Tensors, bc2: Scalar, eps: Scalar, root: Scalar, scale: Scalar
) -> Tensors:
    """``scale * (sqrt(nu / bc2 + eps_root) + eps)`` (new tensors), as ``sqrt(nu) *
    (scale / sqrt(bc2)) + scale * eps`` where ``eps_root`` is 0 (``scale``, Adam's first
    bias correction, folded in saves a pass over the leaves)."""
    if isinstance(root, float) and root == 0.0:
        d = ops.mul_(ops.sqrt(nus), scale / _sqrt(bc2))
    else:
        d = ops.sqrt_(ops.add_scalar_(ops.div(nus, bc2), root))
        if not (isinstance(scale, float) and scale == 1.0):
            d = ops.mul_(d, scale)
    return ops.add_scalar_(d, scale * eps)


def scale_by_adam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam's scaling: ``m_hat / (sqrt(v_hat + eps_root) + eps)``, the moments' estimates
    bias-corrected (``m_hat = b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)`` with
    ``nesterov``, Dozat's NAdam).

    Arguments:
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: dtype of the first moment (``None``: the param's).
        nesterov: Nesterov momentum.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdamState`.
    """
    where = "fm.optim.scale_by_adam"
    b1 = number(where, "b1", b1, below=1.0)
    b2 = number(where, "b2", b2, below=1.0)
    eps = number(where, "eps", eps)
    eps_root = number(where, "eps_root", eps_root)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)
    _flag(where, "nesterov", nesterov)

    def init(params):
        return ScaleByAdamState(count_like(params), _zeros(params, mu_dtype), _zeros(params, None))

    def fused(us, state, ps, spec, factor=1.0, decay=None):
        """The update times ``factor``, plus ``factor * decay * param`` with a ``decay``
        (what a chain's weight decay and learning rate after it would make, in fewer
        passes: ``factor`` goes into the denominator)."""
        check_state(state, ScaleByAdamState, where)
        mus, nus = _state_leaves(
            where, us, spec, [(state.mu, "first moments"), (state.nu, "second moments")]
        )
        count = state.count + 1
        extra = [ps] if decay is not None else []

        def math(ops, dtype, device, us, mus, nus, *ps):
            a, b, e, r, c = (scalar(v, dtype, device) for v in (b1, b2, eps, eps_root, factor))
            g = cast(us, [dtype] * len(us))
            m = ops.lerp(cast(mus, [dtype] * len(us)), g, 1 - a)
            v = ops.square_average(cast(nus, [dtype] * len(us)), g, b)
            bc1, bc2 = _bias_correction(a, count, dtype), _bias_correction(b, count, dtype)
            # a nonzero number goes into the denominator (c * m / bc1 / (...) as
            # m / (bc1 / c * (...))); a tensor (a schedule's value, maybe 0) multiplies
            fold = isinstance(c, float) and c != 0.0
            if nesterov:
                bc1_next = _bias_correction(a, count + 1, dtype)
                num = ops.add_(ops.mul(m, a / bc1_next), ops.mul(g, (1 - a) / bc1))
                out = ops.div_into(
                    num, _adam_denominator(ops, v, bc2, e, r, 1.0 / c if fold else 1.0)
                )
            else:
                out = ops.div_into(
                    m, _adam_denominator(ops, v, bc2, e, r, bc1 / c if fold else bc1)
                )
            if not fold:
                out = ops.mul_(out, c)
            if ps:
                wd = scalar(decay, dtype, device)
                out = ops.add_scaled_(out, cast(ps[0], [dtype] * len(us)), c * wd)
            return out, _like(m, mus), _like(v, nus)

        dtypes = promoted(us, mus, nus, *extra)
        hyper = (b1, b2, eps, eps_root, factor, decay)
        out, mus, nus = grouped(math, dtypes, us, mus, nus, *extra, hyper=hyper)
        mu, nu = _unflatten(spec, mus, nus)
        return out, ScaleByAdamState(count, mu, nu)

    def fn(us, state, ps, spec, own):
        return (*fused(us, state, ps, spec), True)

    return flat_transformation(where, init, fn, fuse=("adam", fused))


def scale_by_amsgrad(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> GradientTransformation:
    """AMSGrad's scaling: Adam's, with the denominator from the largest (bias-corrected,
    unless ``bias_correction_nu=False``) second-moment estimate so far:
    ``m_hat / (sqrt(max(nu_hat) + eps_root) + eps)``.

    Arguments:
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment before the maximum is taken.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAmsgradState`.
    """
    where = "fm.optim.scale_by_amsgrad"
    b1 = number(where, "b1", b1, below=1.0)
    b2 = number(where, "b2", b2, below=1.0)
    eps, eps_root = number(where, "eps", eps), number(where, "eps_root", eps_root)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)
    _flag(where, "bias_correction_mu", bias_correction_mu)
    _flag(where, "bias_correction_nu", bias_correction_nu)

    def init(params):
        zeros = _zeros(params, None)
        return ScaleByAmsgradState(
            count_like(params), _zeros(params, mu_dtype), zeros, _zeros(params, None)
        )

    def fn(us, state, ps, spec, own):
        check_state(state, ScaleByAmsgradState, where)
        olds = _state_leaves(
            where,
            us,
            spec,
            [(state.mu, "first moments"), (state.nu, "second moments"), (state.nu_max, "maxima")],
        )
        count = state.count + 1

        def math(ops, dtype, device, us, mus, nus, maxs):
            a, b, e, r = (scalar(v, dtype, device) for v in (b1, b2, eps, eps_root))
            n = len(us)
            g = cast(us, [dtype] * n)
            m = ops.lerp(cast(mus, [dtype] * n), g, 1 - a)
            v = ops.square_average(cast(nus, [dtype] * n), g, b)
            m_hat = ops.div(m, _bias_correction(a, count, dtype)) if bias_correction_mu else m
            v_hat = ops.div(v, _bias_correction(b, count, dtype)) if bias_correction_nu else v
            top = ops.maximum(cast(maxs, [dtype] * n), v_hat)
            d = ops.add_scalar_(ops.sqrt_(ops.add_scalar(top, r)), e)
            return ops.div_into(m_hat, d), _like(m, mus), _like(v, nus), _like(top, maxs)

        hyper = (b1, b2, eps, eps_root)
        out, *new = grouped(math, promoted(us, *olds), us, *olds, hyper=hyper)
        return out, ScaleByAmsgradState(count, *_unflatten(spec, *new)), True

    return flat_transformation(where, init, fn)


def scale_by_adamax(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8
) -> GradientTransformation:
    """Adamax's scaling (Kingma and Ba, 2015): ``m_hat / nu``, ``nu = max(b2 * nu, |u| +
    eps)`` the exponentially weighted infinity norm (as :class:`torch.optim.Adamax`).

    Arguments:
        b1: the first moment's decay.
        b2: the infinity norm's decay.
        eps: added to ``|u|``.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByAdamState` (``nu`` the
            infinity norm).
    """
    where = "fm.optim.scale_by_adamax"
    b1 = number(where, "b1", b1, below=1.0)
    b2 = number(where, "b2", b2, below=1.0 + 1e-12)
    eps = number(where, "eps", eps)

    def init(params):
        return ScaleByAdamState(count_like(params), _zeros(params, None), _zeros(params, None))

    def fn(us, state, ps, spec, own):
        check_state(state, ScaleByAdamState, where)
        olds = _state_leaves(
            where, us, spec, [(state.mu, "first moments"), (state.nu, "infinity norms")]
        )
        count = state.count + 1

        def math(ops, dtype, device, us, mus, nus):
            a, b, e = (scalar(v, dtype, device) for v in (b1, b2, eps))
            n = len(us)
            g = cast(us, [dtype] * n)
            m = ops.lerp(cast(mus, [dtype] * n), g, 1 - a)
            v = ops.maximum(ops.add_scalar_(ops.abs(g), e), ops.mul(cast(nus, [dtype] * n), b))
            out = ops.div_(ops.div(m, v), _bias_correction(a, count, dtype))
            return out, _like(m, mus), _like(v, nus)

        out, *new = grouped(math, promoted(us, *olds), us, *olds, hyper=(b1, b2, eps))
        return out, ScaleByAdamState(count, *_unflatten(spec, *new)), True

    return flat_transformation(where, init, fn)


def amsgrad(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> GradientTransformation:
    """AMSGrad: ``chain(scale_by_amsgrad(...), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment before the maximum is taken.

    Returns:
        The chained GradientTransformation.
    """
    lr = number("fm.optim.amsgrad", "learning_rate", learning_rate, schedule=True)
    return chain(
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu),
        scale_by_learning_rate(lr),
    )


def adamax(
    learning_rate: Scalar, b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8
) -> GradientTransformation:
    """Adamax: ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))``;
    :class:`torch.optim.Adamax` (without weight decay) up to rounding.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay of the infinity norm, in ``[0, 1)``.
        eps: added to ``|u|``.

    Returns:
        The chained GradientTransformation.
    """
    lr = number("fm.optim.adamax", "learning_rate", learning_rate, schedule=True)
    return chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(lr))


def adamaxw(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-4,
    mask: Any = None,
) -> GradientTransformation:
    """Adamax with decoupled weight decay: ``chain(scale_by_adamax(b1, b2, eps),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay of the infinity norm, in ``[0, 1)``.
        eps: added to ``|u|``.
        weight_decay: the decoupled weight decay coefficient, ``>= 0``: a number, a 0-dim tensor or
            a schedule of the step count.
        mask: which params decay: a pytree of bools like the params (or a prefix of it), or a
            function of the params returning one; ``None`` decays all.

    Returns:
        The chained GradientTransformation.
    """
    lr = number("fm.optim.adamaxw", "learning_rate", learning_rate, schedule=True)
    return chain(
        scale_by_adamax(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )
