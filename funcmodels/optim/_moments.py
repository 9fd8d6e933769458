"""The pieces that keep moving averages of the updates: RMSprop's, Adagrad's, Lion's,
momentum and the EMA (Adam's in ``_adam.py``), in optax's names, defaults and arithmetic,
and the helpers they share with Adam's.

State leaves keep the dtype they were made with (the param's, or ``mu_dtype`` /
``accumulator_dtype``); each step computes in the promotion of the update's dtype and the
state's, as optax does, so float32 params with bfloat16 gradients give float32 updates and
float32 moments. Hyperparameters are numbers or 0-dim tensors, cast to the computing dtype
(a 0-dim float64 tensor never promotes a 0-dim float32 leaf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    GradientTransformation,
    Scalar,
    check_state,
    count_like,
    dtype_arg,
    flat_transformation,
    flatten_like,
    number,
    unflatten,
)
from ._ops import Ops, Tensors, cast, eager, grouped, promoted, scalar


class ScaleByRmsState(NamedTuple):
    """The state of :func:`scale_by_rms` (without bias correction)."""

    nu: Any
    """running mean of squared updates"""


class ScaleByRmsWithCountState(NamedTuple):
    """The state of :func:`scale_by_rms` with ``bias_correction=True``."""

    count: torch.Tensor
    """updates done (``bias_correction=True``)"""
    nu: Any
    """running mean of squared updates"""


class ScaleByRStdDevState(NamedTuple):
    """The state of :func:`scale_by_stddev` (without bias correction)."""

    mu: Any
    """running mean of updates"""
    nu: Any
    """running mean of squared updates"""


class ScaleByRStdDevWithCountState(NamedTuple):
    """The state of :func:`scale_by_stddev` with ``bias_correction=True``."""

    count: torch.Tensor
    """updates done (``bias_correction=True``)"""
    mu: Any
    """running mean of updates"""
    nu: Any
    """running mean of squared updates"""


class ScaleByRssState(NamedTuple):
    """The state of :func:`scale_by_rss` (and so of :func:`adagrad`)."""

    sum_of_squares: Any
    """accumulated squared updates"""


class ScaleByLionState(NamedTuple):
    """The state of :func:`scale_by_lion` (and so of :func:`lion`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """the momentum buffers"""


class TraceState(NamedTuple):
    """The state of :func:`trace` (momentum)."""

    trace: Any
    """the momentum buffers"""


class EmaState(NamedTuple):
    """The state of :func:`ema`."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    ema: Any
    """the moving average"""


def _bias_correction(decay: Scalar, count: torch.Tensor, dtype: torch.dtype) -> Scalar:
    """``1 - decay**count``, computed as ``-expm1(count * log(decay))`` with ``log`` in
    double precision: near 1 (``b2 = 0.99999``) a float32 ``1 - decay**count`` loses most
    of its digits.

    A number where the count can be read for free (an eager CPU count, a number decay, as
    torch.optim reads its step); elsewhere (a count on an accelerator, ``vmap``,
    ``torch.compile``, a tensor decay) a 0-dim tensor of ``dtype``, with no host sync.
    """
    if isinstance(decay, float) and count.device.type == "cpu" and eager():
        return -math.expm1(int(count) * math.log(decay)) if decay > 0 else 1.0
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if isinstance(decay, torch.Tensor):
        log = torch.log(decay.to(torch.float64))
    else:
        log = math.log(decay) if decay > 0 else -math.inf
    return (-torch.expm1(count.to(work) * log)).to(dtype)


def _sqrt(x: Scalar) -> Scalar:
    return x.sqrt() if isinstance(x, torch.Tensor) else math.sqrt(x)


def _zeros(params: Any, dtype: torch.dtype | None) -> Any:
    return pytree.tree_map(lambda p: torch.zeros_like(p, dtype=dtype), params)


def _full(params: Any, value: Scalar) -> Any:
    if isinstance(value, torch.Tensor):
        return pytree.tree_map(lambda p: torch.zeros_like(p) + value.to(p.dtype), params)
    return pytree.tree_map(lambda p: torch.full_like(p, value), params)


def _state_leaves(where: str, us: list, spec: Any, trees: Sequence[tuple[Any, str]]) -> list:
    return [flatten_like(tree, spec, what, "the updates") for tree, what in trees]


def _like(xs: Tensors, olds: Tensors) -> Tensors:
    """``xs`` in the dtypes of ``olds`` (state leaves keep their dtype)."""
    return cast(xs, [o.dtype for o in olds])


def _unflatten(spec: Any, *lists: Tensors) -> list[Any]:
    return [unflatten(xs, spec) for xs in lists]


def _flag(where: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool, got {value!r}")


def scale_by_rms(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSprop's scaling: ``u / sqrt(nu + eps)`` (``u / (sqrt(nu) + eps)`` with
    ``eps_in_sqrt=False``, as :class:`torch.optim.RMSprop`), ``nu = decay * nu + (1 -
    decay) * u**2`` starting at ``initial_scale`` (bias-corrected with
    ``bias_correction``).

    Arguments:
        decay: the moving average's decay, in ``[0, 1]``.
        eps: added inside (``eps_in_sqrt``) or outside the square root.
        initial_scale: the average's start.
        eps_in_sqrt: where ``eps`` goes.
        bias_correction: divide the average by ``1 - decay**t``.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByRmsState` (with
            ``bias_correction``: :class:`ScaleByRmsWithCountState`).
    """
    return _rms(
        "fm.optim.scale_by_rms", False, decay, eps, initial_scale, eps_in_sqrt, bias_correction
    )


def scale_by_stddev(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Centered RMSprop's scaling: :func:`scale_by_rms` with ``nu - mu**2`` for ``nu``,
    ``mu`` the running mean of the updates (as :class:`torch.optim.RMSprop` with
    ``centered=True`` and ``eps_in_sqrt=False``).

    Arguments:
        decay: the decay of the moving averages of updates and squared updates, in ``[0, 1]``.
        eps: added inside (``eps_in_sqrt``) or outside the square root.
        initial_scale: the start of the average of squared updates.
        eps_in_sqrt: put ``eps`` inside the square root (optax's form) or, ``False``, outside
            (:class:`torch.optim.RMSprop`'s).
        bias_correction: divide the moving averages by ``1 - decay**t``.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByRStdDevState` (with
            ``bias_correction``: :class:`ScaleByRStdDevWithCountState`).
    """
    return _rms(
        "fm.optim.scale_by_stddev", True, decay, eps, initial_scale, eps_in_sqrt, bias_correction
    )


def _rms(where, centered, decay, eps, initial_scale, eps_in_sqrt, bias_correction):
    decay = number(where, "decay", decay, below=1.0 + 1e-12)
    eps = number(where, "eps", eps)
    initial_scale = number(where, "initial_scale", initial_scale)
    _flag(where, "eps_in_sqrt", eps_in_sqrt)
    _flag(where, "bias_correction", bias_correction)
    kinds = {
        (False, False): ScaleByRmsState,
        (False, True): ScaleByRmsWithCountState,
        (True, False): ScaleByRStdDevState,
        (True, True): ScaleByRStdDevWithCountState,
    }
    kind = kinds[centered, bias_correction]

    def init(params):
        fields = {"nu": _full(params, initial_scale)}
        if centered:
            fields["mu"] = _zeros(params, None)
        if bias_correction:
            fields["count"] = count_like(params)
        return kind(**fields)

    def fn(us, state, ps, spec, own):
        check_state(state, kind, where)
        trees = [(state.nu, "squared averages")] + ([(state.mu, "averages")] if centered else [])
        olds = _state_leaves(where, us, spec, trees)
        count = state.count + 1 if bias_correction else None

        def math(ops, dtype, device, us, *olds):
            k, e = scalar(decay, dtype, device), scalar(eps, dtype, device)
            g = cast(us, [dtype] * len(us))
            new = [ops.square_average(cast(olds[0], [dtype] * len(us)), g, k)]
            if centered:
                new.append(ops.lerp(cast(olds[1], [dtype] * len(us)), g, 1 - k))
            hats = new
            if bias_correction:
                bc = _bias_correction(k, count, dtype)
                hats = [ops.div(x, bc) for x in new]
            base = ops.addcmul(hats[0], hats[1], hats[1], -1.0) if centered else hats[0]
            d = _root(ops, base, e, eps_in_sqrt, fresh=centered or bias_correction)
            return (ops.div(g, d), *(_like(x, o) for x, o in zip(new, olds, strict=True)))

        out, *new = grouped(math, promoted(us, *olds), us, *olds, hyper=(decay, eps))
        fields = dict(zip(("nu", "mu"), _unflatten(spec, *new), strict=False))
        if bias_correction:
            fields["count"] = count
        return out, kind(**fields), True

    return flat_transformation(where, init, fn)


def _root(ops: Ops, base: Tensors, eps: Scalar, eps_in_sqrt: bool, fresh: bool) -> Tensors:
    """``sqrt(base + eps)``, or ``sqrt(base) + eps``; in place where ``base`` is ours."""
    if eps_in_sqrt:
        d = ops.add_scalar_(base, eps) if fresh else ops.add_scalar(base, eps)
        return ops.sqrt_(d)
    return ops.add_scalar_(ops.sqrt_(base) if fresh else ops.sqrt(base), eps)


def scale_by_rss(
    initial_accumulator_value: Scalar = 0.1, eps: Scalar = 1e-7
) -> GradientTransformation:
    """Adagrad's scaling: ``u / sqrt(s + eps)`` (0 where ``s`` is 0), ``s`` the sum of the
    squared updates so far, starting at ``initial_accumulator_value``.

    Arguments:
        initial_accumulator_value: the sum's start, ``>= 0``.
        eps: added inside the square root.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByRssState`.
    """
    where = "fm.optim.scale_by_rss"
    initial = number(where, "initial_accumulator_value", initial_accumulator_value)
    eps = number(where, "eps", eps)
    # With a positive eps, s = 0 means u = 0 and u / sqrt(eps) is the 0 optax gives there.
    guard = not (isinstance(eps, float) and eps > 0)

    def init(params):
        return ScaleByRssState(_full(params, initial))

    def fn(us, state, ps, spec, own):
        check_state(state, ScaleByRssState, where)
        (sums,) = _state_leaves(where, us, spec, [(state.sum_of_squares, "accumulated squares")])

        def math(ops, dtype, device, us, sums):
            g = cast(us, [dtype] * len(us))
            s = ops.addcmul(cast(sums, [dtype] * len(us)), g, g, 1.0)
            out = ops.div(g, ops.sqrt_(ops.add_scalar(s, scalar(eps, dtype, device))))
            if guard:
                out = [
                    torch.where(t > 0, o, torch.zeros_like(o)) for t, o in zip(s, out, strict=True)
                ]
            return out, _like(s, sums)

        out, sums = grouped(math, promoted(us, sums), us, sums, hyper=(initial, eps))
        return out, ScaleByRssState(*_unflatten(spec, sums)), True

    return flat_transformation(where, init, fn)


def scale_by_lion(
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> GradientTransformation:
    """Lion's direction (Chen et al., 2023): ``sign(b1 * mu + (1 - b1) * u)`` (``mode=
    'smooth'``: ``tanh(smooth_beta * .)``; ``'refined'``: linear inside ``(-1, 1)``), then
    ``mu = b2 * mu + (1 - b2) * u``.

    Arguments:
        b1: the weight of the momentum in the direction.
        b2: the momentum's decay.
        mu_dtype: the momentum's dtype (``None``: the param's).
        mode: ``'hard'``, ``'smooth'`` or ``'refined'``.
        smooth_beta: the slope of ``'smooth'``.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByLionState`.

    Raises:
        ValueError: ``mode`` is not ``'hard'``, ``'smooth'`` or ``'refined'``.
    """
    where = "fm.optim.scale_by_lion"
    b1 = number(where, "b1", b1, below=1.0 + 1e-12)
    b2 = number(where, "b2", b2, below=1.0 + 1e-12)
    mu_dtype = dtype_arg(where, "mu_dtype", mu_dtype)
    if mode not in ("hard", "smooth", "refined"):
        raise ValueError(f"{where}: mode must be 'hard', 'smooth' or 'refined', got {mode!r}")
    smooth_beta = number(where, "smooth_beta", smooth_beta)

    def direction(ops: Ops, xs: Tensors) -> Tensors:
        if mode == "hard":
            return ops.sign(xs)
        if mode == "smooth":
            return [torch.tanh(smooth_beta * x) for x in xs]
        return [torch.where(x.abs() < 1.0, x, x.sign()) for x in xs]

    def init(params):
        return ScaleByLionState(count_like(params), _zeros(params, mu_dtype))

    def fn(us, state, ps, spec, own):
        check_state(state, ScaleByLionState, where)
        (mus,) = _state_leaves(where, us, spec, [(state.mu, "momentum buffers")])

        def math(ops, dtype, device, us, mus):
            a, b = scalar(b1, dtype, device), scalar(b2, dtype, device)
            g, m = cast(us, [dtype] * len(us)), cast(mus, [dtype] * len(us))
            out = direction(ops, ops.lerp(m, g, 1 - a))
            return out, _like(ops.lerp(m, g, 1 - b), mus)

        out, mus = grouped(math, promoted(us, mus), us, mus, hyper=(b1, b2))
        (mu,) = _unflatten(spec, mus)
        return out, ScaleByLionState(state.count + 1, mu), True

    return flat_transformation(where, init, fn)


def trace(
    decay: Scalar, nesterov: bool = False, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    """Momentum: ``t = u + decay * t`` (``t`` starts at zero, so the first ``t`` is ``u``,
    as torch's SGD), and the update is ``t``, or ``u + decay * t`` with ``nesterov``.

    Arguments:
        decay: the momentum, ``>= 0``.
        nesterov: Nesterov momentum.
        accumulator_dtype: the buffers' dtype (``None``: the param's).

    Returns:
        A GradientTransformation; its state is a :class:`TraceState`.
    """
    where = "fm.optim.trace"
    decay = number(where, "decay", decay)
    _flag(where, "nesterov", nesterov)
    accumulator_dtype = dtype_arg(where, "accumulator_dtype", accumulator_dtype)

    def init(params):
        return TraceState(_zeros(params, accumulator_dtype))

    def fn(us, state, ps, spec, own):
        check_state(state, TraceState, where)
        (ts,) = _state_leaves(where, us, spec, [(state.trace, "momentum buffers")])

        def math(ops, dtype, device, us, ts):
            k = scalar(decay, dtype, device)
            g = cast(us, [dtype] * len(us))
            t = ops.add_scaled(g, cast(ts, [dtype] * len(us)), k)
            return (ops.add_scaled(g, t, k) if nesterov else t), _like(t, ts)

        out, ts = grouped(math, promoted(us, ts), us, ts, hyper=(decay,))
        # without nesterov the update is the new trace itself: not the chain's to write
        return out, TraceState(*_unflatten(spec, ts)), nesterov

    return flat_transformation(where, init, fn)


def ema(
    decay: Scalar, debias: bool = True, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    """An exponential moving average of the updates: ``e = decay * e + (1 - decay) * u``
    (``e`` starts at zero), the update ``e / (1 - decay**t)`` (``e`` itself without
    ``debias``). For a moving average of the params, see :func:`incremental_update`.

    Arguments:
        decay: the average's decay, in ``[0, 1]``.
        debias: divide by ``1 - decay**t``.
        accumulator_dtype: the average's dtype (``None``: the param's).

    Returns:
        A GradientTransformation; its state is an :class:`EmaState`.
    """
    where = "fm.optim.ema"
    decay = number(where, "decay", decay, below=1.0 + 1e-12)
    _flag(where, "debias", debias)
    accumulator_dtype = dtype_arg(where, "accumulator_dtype", accumulator_dtype)

    def init(params):
        return EmaState(count_like(params), _zeros(params, accumulator_dtype))

    def fn(us, state, ps, spec, own):
        check_state(state, EmaState, where)
        (es,) = _state_leaves(where, us, spec, [(state.ema, "moving averages")])
        count = state.count + 1

        def math(ops, dtype, device, us, es):
            k = scalar(decay, dtype, device)
            e = ops.lerp(cast(es, [dtype] * len(us)), cast(us, [dtype] * len(us)), 1 - k)
            return (ops.div(e, _bias_correction(k, count, dtype)) if debias else e), _like(e, es)

        out, es = grouped(math, promoted(us, es), us, es, hyper=(decay,))
        # without debias the update is the new average itself: not the chain's to write
        return out, EmaState(count, *_unflatten(spec, es)), debias

    return flat_transformation(where, init, fn)
