"""The zoom line search (Nocedal and Wright's Algorithms 3.5 and 3.6, with Hager and
Zhang's approximate decrease), as optax's ``scale_by_zoom_linesearch``: the same
conditions, interpolations and updates of the interval, evaluated in eager mode with one
host read per trial step (see :mod:`funcmodels.optim._linesearch`)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

from ._base import (
    GradientTransformationExtraArgs,
    check_state,
    flatten,
    flatten_like,
    unflatten,
)
from ._linesearch import (
    add_scale,
    check_search_call,
    first_device,
    scalar,
    value_dtype,
    vdot,
)


class ZoomLinesearchInfo(NamedTuple):
    """What the last zoom search did (for debugging), as optax's."""

    num_linesearch_steps: torch.Tensor
    """trial steps of the last search (int64)"""
    decrease_error: torch.Tensor
    """how far the chosen step misses the sufficient decrease (0: met)"""
    curvature_error: torch.Tensor
    """how far it misses the curvature condition (0: met)"""


class ScaleByZoomLinesearchState(NamedTuple):
    """The state of :func:`scale_by_zoom_linesearch`."""

    learning_rate: torch.Tensor
    """the step size the last search found"""
    value: torch.Tensor
    """the loss at that step (``inf`` before the first search)"""
    grad: Any
    """its gradient there, a tree like the params"""
    info: ZoomLinesearchInfo
    """what the last search did"""


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through ``(a, fa)`` with slope ``fpa``, ``(b, fb)``
    and ``(c, fc)`` (NaN where there is none), optax's (scipy's) formula."""
    db, dc = b - a, c - a
    denom = (db * dc) * (db * dc) * (db - dc)
    r0, r1 = fb - fa - fpa * db, fc - fa - fpa * dc
    big_a = (dc * dc * r0 + -(db * db) * r1) / denom
    big_b = (-(dc * dc * dc) * r0 + db * db * db * r1) / denom
    radical = big_b * big_b - 3.0 * big_a * fpa
    return a + (-big_b + torch.sqrt(radical)) / (3.0 * big_a)


def _quadmin(a, fa, fpa, b, fb):
    """The critical point of the parabola through ``(a, fa)`` with slope ``fpa`` and
    ``(b, fb)``."""
    db = b - a
    big_b = (fb - fa - fpa * db) / (db * db)
    return a - fpa / (2.0 * big_b)


def _nan_to_inf(x: torch.Tensor) -> torch.Tensor:
    x = torch.clamp_min(x, 0.0)
    return torch.where(torch.isnan(x), torch.full_like(x, float("inf")), x)


class _Conditions(NamedTuple):
    """The criteria of one search (optax's arguments)."""

    tol: float
    slope_rtol: float
    curv_rtol: float
    approx_dec_rtol: float | None

    def errors(self, s, stepsize, value, slope):
        """(decrease error, curvature error, their maximum) at a trial step."""
        dec = value - s.value_init - self.slope_rtol * stepsize * s.slope_init
        if self.approx_dec_rtol is not None:
            approx = slope - (2 * self.slope_rtol - 1.0) * s.slope_init
            delta = value - s.value_init - self.approx_dec_rtol * torch.abs(s.value_init)
            dec = torch.minimum(torch.maximum(approx, delta), dec)
        dec = _nan_to_inf(dec)
        curv = _nan_to_inf(torch.abs(slope) - self.curv_rtol * torch.abs(s.slope_init))
        return dec, curv, torch.maximum(dec, curv)


def _search_interval(s, c: _Conditions, at, max_stepsize, increase_factor, max_steps):
    """One step of the search for an interval holding a good step size (Algorithm 3.5)."""
    new = s.guess if s.count == 0 else increase_factor * s.stepsize
    reached = False
    if max_stepsize is not None:
        reached = bool(new >= max_stepsize)
        new = torch.clamp_max(new, max_stepsize)
    value, grad, slope = at(new)
    dec, curv, err = c.errors(s, new, value, slope)
    if bool(dec <= c.tol):
        s.safe = (new, value, grad)
    set_high = bool(dec > 0.0) or (bool(value >= s.value) and s.count > 0)
    set_low = bool(slope >= 0.0) and not set_high
    prev, fresh = (s.stepsize, s.value, s.slope), (new, value, slope)
    (s.low, s.value_low, s.slope_low), s.high_point = (fresh, prev) if set_low else (prev, fresh)
    good = bool(err <= c.tol)
    s.interval_found = set_high or set_low or good
    s.done = good or (reached and not s.interval_found)
    s.failed = s.count + 1 >= max_steps and not s.done
    s.cubic_ref = (s.low, s.value_low)
    s.stepsize, s.value, s.grad, s.slope = new, value, grad, slope
    s.errors = (dec, curv)
    s.count += 1


def _zoom(s, c: _Conditions, at, interval_threshold, max_steps):
    """One step of the zoom into the interval (Algorithm 3.6)."""
    low, (high, value_high, _) = s.low, s.high_point
    delta = torch.abs(high - low)
    left, right = torch.minimum(high, low), torch.maximum(high, low)
    too_small = bool(delta <= interval_threshold)
    cubic = _cubicmin(low, s.value_low, s.slope_low, high, value_high, *s.cubic_ref)
    quad = _quadmin(low, s.value_low, s.slope_low, high, value_high)
    if bool(cubic > left + 0.2 * delta) and bool(cubic < right - 0.2 * delta):
        middle = cubic
    elif bool(quad > left + 0.1 * delta) and bool(quad < right - 0.1 * delta):
        middle = quad
    else:
        middle = (low + high) / 2.0
    value, grad, slope = at(middle)
    dec, curv, err = c.errors(s, middle, value, slope)
    if bool(dec <= c.tol) and bool(value < s.safe[1]):
        s.safe = (middle, value, grad)
    s.done = bool(err <= c.tol)
    high_to_middle = bool(dec > 0.0) or bool(value >= s.value_low)
    high_to_low = bool(slope * (high - low) >= 0.0) and not high_to_middle
    s.cubic_ref = (high, value_high) if high_to_middle or high_to_low else (low, s.value_low)
    if high_to_middle:
        s.high_point = (middle, value, slope)
    elif high_to_low:
        s.high_point = (low, s.value_low, s.slope_low)
    if not high_to_middle:
        s.low, s.value_low, s.slope_low = middle, value, slope
    stuck = s.count + 1 >= max_steps or (too_small and bool(s.safe[0] > 0.0))
    s.failed = stuck and not s.done
    s.stepsize, s.value, s.grad, s.slope = middle, value, grad, slope
    s.errors = (dec, curv)
    s.count += 1


def _safe_step(s, verbose: bool, where: str) -> None:
    """After a failed search: the best step with sufficient decrease found, if any (or
    the start, where the loss was not finite), else the last one tried."""
    if verbose:
        print(
            f"INFO: {where}: value at current params {float(s.value_init):g}, slope along "
            f"update direction {float(s.slope_init):g}, stepsize reached "
            f"{float(s.stepsize):g}, decrease error {float(s.errors[0]):g}, curvature "
            f"error {float(s.errors[1]):g}; "
            + (
                "returning a stepsize with sufficient decrease but curvature condition not "
                "satisfied"
                if bool(s.safe[0] > 0.0)
                else "no stepsize satisfying sufficient decrease found"
            )
        )
    if bool(s.safe[0] > 0.0) or bool(torch.isinf(s.errors[0])):
        s.stepsize, s.value, s.grad = s.safe


def _start(value, grad_leaves, slope, guess, dtype, device):
    zero = torch.zeros((), dtype=dtype, device=device)
    inf = torch.full_like(zero, float("inf"))
    return SimpleNamespace(
        count=0,
        guess=guess,
        stepsize=zero,
        value=value,
        grad=grad_leaves,
        slope=slope,
        value_init=value,
        slope_init=slope,
        errors=(inf, inf),
        interval_found=False,
        done=False,
        failed=False,
        low=zero,
        value_low=value,
        slope_low=slope,
        high_point=(zero, value, slope),
        cubic_ref=(zero, value),
        safe=(zero, value, grad_leaves),
    )


def _on_line(value_fn: Callable, fn_kwargs: dict, ps, us, spec, dtype, where: str):
    """``stepsize -> (value, grad leaves, slope)`` at ``params + stepsize * updates``."""

    def at(stepsize):
        trial = unflatten(add_scale(ps, stepsize, us), spec)
        grad, value = torch.func.grad_and_value(lambda p: value_fn(p, **fn_kwargs))(trial)
        gs = flatten_like(grad, spec, "the gradient of value_fn")
        value = scalar(value, dtype, stepsize.device, where)
        return value, gs, vdot(gs, us).to(dtype)

    return at


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: float | None = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Line search for a step size with sufficient decrease and small curvature (the
    strong Wolfe conditions), as optax's: grow the step by ``increase_factor`` until an
    interval holds a good one, then zoom into it by cubic, quadratic or bisection steps.

    ``update(updates, state, params, *, value, grad, value_fn, **extra_args)``: the loss
    ``value`` and its gradient ``grad`` at ``params``, ``value_fn(params, **kwargs)`` the
    loss (a 0-dim tensor; its gradient is taken with ``torch.func``), and the extra
    arguments ``value_fn`` takes (data). The state keeps the value and gradient at the
    chosen step for :func:`value_and_grad_from_state`. A data-dependent loop: refused
    under ``torch.func`` transforms, run eagerly between graph breaks under
    ``torch.compile``.

    Arguments:
        max_linesearch_steps: the most trial steps per search.
        max_learning_rate: the largest step size, or ``None`` for no bound.
        tol: the tolerance of both conditions.
        increase_factor: the growth of the step while searching an interval.
        slope_rtol: the fraction of the linear decrease asked for (Armijo's ``c1``).
        curv_rtol: the curvature condition's ``c2``.
        approx_dec_rtol: the relative tolerance on the value for Hager and Zhang's
            approximate decrease, or ``None`` for Armijo's condition only.
        stepsize_precision: below this interval length, a step with sufficient
            decrease is taken.
        initial_guess_strategy: ``'keep'`` (start from the last step size) or ``'one'``.
        verbose: print what went wrong when a search fails.

    Returns:
        A :class:`GradientTransformationExtraArgs`; its state is a
            :class:`ScaleByZoomLinesearchState`.

    Raises:
        ValueError: an unknown ``initial_guess_strategy``; (update) inside a
            ``torch.func`` transform.
        TypeError: (update) an extra argument ``value_fn`` does not take, or no
            ``value``, ``grad`` or ``value_fn``.
    """
    where = "fm.optim.scale_by_zoom_linesearch"
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            f"{where}: initial_guess_strategy must be 'one' or 'keep', got "
            f"{initial_guess_strategy!r}"
        )
    conditions = _Conditions(tol, slope_rtol, curv_rtol, approx_dec_rtol)

    def init(params):
        leaves, spec = flatten(params)
        dtype = value_dtype(leaves)
        inf = torch.full((), float("inf"), dtype=dtype, device=first_device(leaves))
        info = ZoomLinesearchInfo(torch.zeros((), dtype=torch.int64), inf.clone(), inf.clone())
        grad = unflatten([torch.zeros_like(p) for p in leaves], spec)
        return ScaleByZoomLinesearchState(torch.ones_like(inf), inf, grad, info)

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        check_state(state, ScaleByZoomLinesearchState, where)
        if not flatten(updates)[0]:  # a tree with no leaves: nothing to search
            return updates, state
        fn_kwargs = check_search_call(where, params, value, grad, value_fn, extra_args)
        ps, spec = flatten(params)
        us = flatten_like(updates, spec, "updates")
        gs = flatten_like(grad, spec, "grad")
        dtype, device = state.learning_rate.dtype, state.learning_rate.device
        keep = initial_guess_strategy == "keep"
        guess = state.learning_rate if keep else torch.ones((), dtype=dtype, device=device)
        value = scalar(value, dtype, device, where)
        s = _start(value, gs, vdot(us, gs).to(dtype), guess, dtype, device)
        at = _on_line(value_fn, fn_kwargs, ps, us, spec, dtype, where)
        while not (s.done or s.failed):
            if s.interval_found:
                _zoom(s, conditions, at, stepsize_precision, max_linesearch_steps)
            else:
                _search_interval(
                    s, conditions, at, max_learning_rate, increase_factor, max_linesearch_steps
                )
            if s.failed:
                _safe_step(s, verbose, where)
        info = ZoomLinesearchInfo(torch.tensor(s.count, dtype=torch.int64), *s.errors)
        lr = s.stepsize
        out = unflatten([u * lr.to(u.dtype) for u in us], spec)
        new_state = ScaleByZoomLinesearchState(lr, s.value, unflatten(s.grad, spec), info)
        return out, new_state

    return GradientTransformationExtraArgs(init, update)
