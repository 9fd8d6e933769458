"""Schedules: functions of the step count, in optax's vocabulary and conventions.

A schedule maps a step count (a 0-dim int64 tensor, or an int; ``0`` for the first update)
to a value, computed with tensor operations only, so a compiled training step traces it
once and never recompiles as the count grows, and ``vmap`` over an ensemble's optimiser
states works. Values are float64 0-dim tensors (a 0-dim tensor does not change the dtype
of the updates it scales).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch

from ._base import Schedule


def _count(count) -> torch.Tensor:
    return torch.as_tensor(count).to(torch.float64)


def _real(where: str, name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{where}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where}: {name} must be positive, got {value!r}")
    return float(value)


def _int(where: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    return int(value)


def _steps(where: str, name: str, value: object, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(
            f"{where}: {name} must be {'positive' if positive else '>= 0'}, got {value}"
        )
    return int(value)


def constant_schedule(value: float) -> Schedule:
    """``value`` at every step.

    Arguments:
        value: a finite number.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    value = _real("fm.optim.constant_schedule", "value", value)
    return lambda count: torch.full_like(_count(count), value)


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """``(init - end) * (1 - t / steps) ** power + end``, ``t`` the count after
    ``transition_begin`` clipped to ``[0, transition_steps]``; ``init_value`` throughout
    when ``transition_steps <= 0`` (a negative ``transition_begin`` counts as 0), as
    optax's.

    Arguments:
        init_value: the value before the transition.
        end_value: the value after it.
        power: the exponent of the decay.
        transition_steps: the transition's length, in steps.
        transition_begin: the step where it starts (the value is ``init_value`` before).

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    where = "fm.optim.polynomial_schedule"
    a, b = _real(where, "init_value", init_value), _real(where, "end_value", end_value)
    power = _real(where, "power", power)
    steps = _int(where, "transition_steps", transition_steps)
    begin = max(_int(where, "transition_begin", transition_begin), 0)
    if steps <= 0:
        return constant_schedule(a)

    def schedule(count):
        frac = 1 - (_count(count) - begin).clamp(0, steps) / steps
        return (a - b) * frac**power + b

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """From ``init_value`` to ``end_value`` linearly over ``transition_steps`` steps,
    starting after ``transition_begin`` steps; constant before and after
    (:func:`polynomial_schedule` with ``power=1``).

    Arguments:
        init_value: the value before the transition.
        end_value: the value after it.
        transition_steps: the transition's length, in steps.
        transition_begin: the step where it starts (the value is ``init_value`` before).

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """``init * ((1 - alpha) * c ** exponent + alpha)``, ``c = (1 + cos(pi * t / steps)) / 2``,
    ``t`` the count clipped to ``decay_steps`` (as torch's ``CosineAnnealingLR`` with
    ``eta_min = alpha * init``, for ``exponent = 1``).

    Arguments:
        init_value: the value at step 0.
        decay_steps: the length of the decay, positive.
        alpha: the final value as a fraction of ``init_value``.
        exponent: the power of the cosine factor.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.

    Raises:
        ValueError: ``decay_steps`` not positive.
    """
    where = "fm.optim.cosine_decay_schedule"
    init = _real(where, "init_value", init_value)
    steps = _steps(where, "decay_steps", decay_steps)
    alpha = _real(where, "alpha", alpha)
    exponent = _real(where, "exponent", exponent)

    def schedule(count):
        t = _count(count).clamp(max=steps)
        cosine = 0.5 * (1 + torch.cos(math.pi * t / steps))
        return init * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``peak_value``.

    Arguments:
        init_value: the value at step 0.
        peak_value: the value after the warmup, kept from then on.
        warmup_steps: the length of the warmup.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    cosine decay to ``end_value`` at step ``decay_steps`` (which counts the warmup, as
    optax's).

    Arguments:
        init_value: the value at step 0.
        peak_value: the value at the end of the warmup.
        end_value: the value at ``decay_steps`` and after.
        warmup_steps: the length of the linear warmup.
        decay_steps: the length of the whole schedule, warmup included.
        exponent: the power of the cosine factor.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.

    Raises:
        ValueError: ``decay_steps <= warmup_steps``.
    """
    where = "fm.optim.warmup_cosine_decay_schedule"
    peak = _real(where, "peak_value", peak_value)
    warmup = _int(where, "warmup_steps", warmup_steps)
    decay = _int(where, "decay_steps", decay_steps)
    if decay <= warmup:
        raise ValueError(f"{where}: decay_steps ({decay}) must exceed warmup_steps ({warmup})")
    end = _real(where, "end_value", end_value)
    alpha = 0.0 if peak == 0.0 else end / peak
    return join_schedules(
        [
            linear_schedule(init_value, peak, warmup),
            cosine_decay_schedule(peak, decay - warmup, alpha=alpha, exponent=exponent),
        ],
        [warmup],
    )


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``init * decay_rate ** (t / transition_steps)`` (``floor`` of the exponent with
    ``staircase``, as torch's ``StepLR``), ``t`` the count after ``transition_begin``,
    bounded by ``end_value`` when given; ``init_value`` throughout when
    ``transition_steps <= 0`` or ``decay_rate == 0``, as optax's.

    Arguments:
        init_value: the value before the decay starts.
        transition_steps: the steps over which the value is multiplied by ``decay_rate``.
        decay_rate: the factor, ``>= 0``.
        transition_begin: the step the decay starts at.
        staircase: decay in whole steps of ``transition_steps``.
        end_value: a bound the value does not pass (or ``None``).

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.

    Raises:
        TypeError: a value that is not a finite number, a step count that is not an int,
            or ``staircase`` not a bool.
        ValueError: ``decay_rate`` is negative.
    """
    where = "fm.optim.exponential_decay"
    init = _real(where, "init_value", init_value)
    steps = _int(where, "transition_steps", transition_steps)
    rate = _real(where, "decay_rate", decay_rate)
    if rate < 0:
        raise ValueError(f"{where}: decay_rate must be >= 0, got {decay_rate!r}")
    begin = max(_int(where, "transition_begin", transition_begin), 0)
    if not isinstance(staircase, bool):
        raise TypeError(f"{where}: staircase must be a bool, got {staircase!r}")
    end = None if end_value is None else _real(where, "end_value", end_value)
    if steps <= 0 or rate == 0:
        return constant_schedule(init)

    def schedule(count):
        p = (_count(count) - begin).clamp(min=0) / steps
        if staircase:
            p = torch.floor(p)
        value = init * rate**p
        if end is not None:
            value = value.clamp(min=end) if rate < 1 else value.clamp(max=end)
        return value

    return schedule


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Linear warmup to ``peak_value`` over ``warmup_steps``, then
    :func:`exponential_decay` from ``peak_value`` (its count starting at the warmup's
    end).

    Arguments:
        init_value: the value at step 0.
        peak_value: the value at the end of the warmup.
        warmup_steps: the length of the linear warmup.
        transition_steps: the value is multiplied by ``decay_rate`` every this many steps.
        decay_rate: the factor per ``transition_steps``.
        transition_begin: steps after the warmup before the decay starts.
        staircase: decay in discrete jumps (integer division of the steps).
        end_value: a bound the value does not pass (or ``None``).

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    warmup = _int("fm.optim.warmup_exponential_decay_schedule", "warmup_steps", warmup_steps)
    decay = exponential_decay(
        peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )
    return join_schedules([linear_schedule(init_value, peak_value, warmup), decay], [warmup])


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """``init_value``, multiplied by ``scale`` from step ``boundary`` on, for each entry
    (as torch's ``MultiStepLR`` with per-milestone factors).

    Arguments:
        init_value: the value at step 0.
        boundaries_and_scales: ``{boundary step: scale >= 0}``.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    where = "fm.optim.piecewise_constant_schedule"
    init = _real(where, "init_value", init_value)
    items = _boundaries(where, boundaries_and_scales)

    def schedule(count):
        c = _count(count)
        value = torch.full_like(c, init)
        for b, s in items:
            value = torch.where(c >= b, value * s, value)
        return value

    return schedule


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    """Values at the boundaries as :func:`piecewise_constant_schedule`'s, joined by
    ``'linear'`` or ``'cosine'`` interpolation between them.

    Arguments:
        interpolate_type: ``'linear'`` or ``'cosine'``.
        init_value: the value at step 0.
        boundaries_and_scales: ``{boundary step: scale >= 0}``.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.

    Raises:
        ValueError: ``interpolate_type`` is neither ``'linear'`` nor ``'cosine'``.
    """
    where = "fm.optim.piecewise_interpolate_schedule"
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError(f"{where}: interpolate_type must be 'linear' or 'cosine'")
    init = _real(where, "init_value", init_value)
    items = _boundaries(where, boundaries_and_scales)
    bounds = [0] + [b for b, _ in items]
    values = [init]
    for _, s in items:
        values.append(values[-1] * s)

    def schedule(count):
        c = _count(count)
        out = torch.full_like(c, values[-1])
        for i in range(len(items) - 1, -1, -1):
            lo, hi = bounds[i], bounds[i + 1]
            pct = (c - lo) / max(hi - lo, 1)
            a, b = values[i], values[i + 1]
            if interpolate_type == "linear":
                part = (b - a) * pct + a
            else:
                part = b + (a - b) / 2.0 * (torch.cos(math.pi * pct) + 1)
            out = torch.where((c >= lo) & (c < hi), part, out)
        return out

    return schedule


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle policy, linear (Smith and Topin, 2018): up from ``peak /
    div_factor`` to ``peak`` over ``pct_start`` of the steps, back down by ``pct_final``,
    then to ``peak / (div_factor * final_div_factor)``, as optax's.

    Arguments:
        transition_steps: the length of the cycle, positive.
        peak_value: the highest value.
        pct_start: the fraction of the cycle where the rise ends.
        pct_final: the fraction of the cycle where the fall ends.
        div_factor: the start's divisor: the schedule starts at ``peak_value / div_factor``.
        final_div_factor: the end's divisor: it ends at ``peak_value / (div_factor *
            final_div_factor)``.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    steps = _steps("fm.optim.linear_onecycle_schedule", "transition_steps", transition_steps)
    return piecewise_interpolate_schedule(
        "linear",
        peak_value / div_factor,
        {
            int(pct_start * steps): div_factor,
            int(pct_final * steps): 1.0 / div_factor,
            steps: 1.0 / final_div_factor,
        },
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle policy with cosine steps: up from ``peak / div_factor`` to ``peak``
    over ``pct_start`` of the steps, then down to ``peak / (div_factor *
    final_div_factor)``, as optax's.

    Arguments:
        transition_steps: the length of the cycle, positive.
        peak_value: the highest value.
        pct_start: the fraction of the cycle where the rise ends.
        div_factor: the start's divisor: the schedule starts at ``peak_value / div_factor``.
        final_div_factor: the end's divisor: it ends at ``peak_value / (div_factor *
            final_div_factor)``.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    steps = _steps("fm.optim.cosine_onecycle_schedule", "transition_steps", transition_steps)
    return piecewise_interpolate_schedule(
        "cosine",
        peak_value / div_factor,
        {int(pct_start * steps): div_factor, steps: 1.0 / (div_factor * final_div_factor)},
    )


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, float]]) -> Schedule:
    """Warm restarts (Loshchilov and Hutter, 2017): one
    :func:`warmup_cosine_decay_schedule` per entry of keyword arguments, each starting
    when the previous one's ``decay_steps`` are over.

    Arguments:
        cosine_kwargs: the keyword arguments of each cycle's warmup-cosine schedule.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.
    """
    schedules, boundaries, step = [], [], 0
    for kwargs in cosine_kwargs:
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` (its count starting
    again at 0), and so on.

    Arguments:
        schedules: the schedules, in order.
        boundaries: increasing steps, ``len(schedules) - 1`` of them.

    Returns:
        A schedule: ``count`` (an int or a 0-dim int64 tensor) -> a 0-dim float64 tensor.

    Raises:
        TypeError: ``schedules`` is not a non-empty list of schedules.
        ValueError: boundaries of the wrong number or not increasing.
    """
    where = "fm.optim.join_schedules"
    if not schedules or not all(callable(s) for s in schedules):
        raise TypeError(f"{where}: schedules must be a non-empty list of schedules")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{where}: {len(schedules)} schedules need {len(schedules) - 1} boundaries, got "
            f"{len(boundaries)}"
        )
    bounds = [_steps(where, "a boundary", b, positive=False) for b in boundaries]
    if bounds != sorted(bounds):
        raise ValueError(f"{where}: boundaries must be increasing, got {list(boundaries)}")

    def schedule(count):
        c = torch.as_tensor(count)
        value = torch.as_tensor(schedules[0](c), dtype=torch.float64)
        for start, s in zip(bounds, schedules[1:], strict=True):
            value = torch.where(
                c < start, value, torch.as_tensor(s(c - start), dtype=torch.float64)
            )
        return value

    return schedule


def _boundaries(where: str, boundaries_and_scales: Mapping[int, float] | None) -> list:
    items = sorted((boundaries_and_scales or {}).items())
    for b, s in items:
        _steps(where, "a boundary", b, positive=False)
        if _real(where, "a scale", s) < 0:
            raise ValueError(f"{where}: scales must be >= 0, got {s!r}")
    return items
