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
from collections.abc import Mapping, Sequence

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


def _steps(where: str, name: str, value: object, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(
            f"{where}: {name} must be {'positive' if positive else '>= 0'}, got {value}"
        )
    return int(value)


def constant_schedule(value: float) -> Schedule:
    """``value`` at every step."""
    value = _real("fm.optim.constant_schedule", "value", value)
    return lambda count: torch.full_like(_count(count), value)


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """From ``init_value`` to ``end_value`` linearly over ``transition_steps`` steps,
    starting after ``transition_begin`` steps; constant before and after."""
    where = "fm.optim.linear_schedule"
    a, b = _real(where, "init_value", init_value), _real(where, "end_value", end_value)
    steps = _steps(where, "transition_steps", transition_steps)
    begin = _steps(where, "transition_begin", transition_begin, positive=False)

    def schedule(count):
        frac = ((_count(count) - begin).clamp(0, steps)) / steps
        return a + (b - a) * frac

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """``end + (init - end) * (1 - t / steps) ** power`` over ``transition_steps`` steps."""
    where = "fm.optim.polynomial_schedule"
    a, b = _real(where, "init_value", init_value), _real(where, "end_value", end_value)
    power = _real(where, "power", power)
    steps = _steps(where, "transition_steps", transition_steps)
    begin = _steps(where, "transition_begin", transition_begin, positive=False)

    def schedule(count):
        t = (_count(count) - begin).clamp(0, steps)
        return b + (a - b) * (1 - t / steps) ** power

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """``init * ((1 - alpha) * c ** exponent + alpha)``, ``c = (1 + cos(pi * t / steps)) / 2``,
    ``t`` the count clipped to ``decay_steps`` (as torch's ``CosineAnnealingLR`` with
    ``eta_min = alpha * init``, for ``exponent = 1``)."""
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
    optax's)."""
    where = "fm.optim.warmup_cosine_decay_schedule"
    peak = _real(where, "peak_value", peak_value, positive=True)
    warmup = _steps(where, "warmup_steps", warmup_steps, positive=False)
    decay = _steps(where, "decay_steps", decay_steps)
    if decay <= warmup:
        raise ValueError(f"{where}: decay_steps ({decay}) must exceed warmup_steps ({warmup})")
    end = _real(where, "end_value", end_value)
    cosine = cosine_decay_schedule(peak, decay - warmup, alpha=end / peak, exponent=exponent)
    if warmup == 0:
        return cosine
    return join_schedules([linear_schedule(init_value, peak, warmup), cosine], [warmup])


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
    bounded by ``end_value`` when given."""
    where = "fm.optim.exponential_decay"
    init = _real(where, "init_value", init_value)
    steps = _steps(where, "transition_steps", transition_steps)
    rate = _real(where, "decay_rate", decay_rate, positive=True)
    begin = _steps(where, "transition_begin", transition_begin, positive=False)
    if not isinstance(staircase, bool):
        raise TypeError(f"{where}: staircase must be a bool, got {staircase!r}")
    end = None if end_value is None else _real(where, "end_value", end_value)

    def schedule(count):
        p = (_count(count) - begin).clamp(min=0) / steps
        if staircase:
            p = torch.floor(p)
        value = init * rate**p
        if end is not None:
            value = value.clamp(min=end) if rate < 1 else value.clamp(max=end)
        return value

    return schedule


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """``init_value``, multiplied by ``scale`` from step ``boundary`` on, for each entry
    (as torch's ``MultiStepLR`` with per-milestone factors)."""
    where = "fm.optim.piecewise_constant_schedule"
    init = _real(where, "init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    for b, s in items:
        _steps(where, "a boundary", b, positive=False)
        _real(where, "a scale", s)

    def schedule(count):
        c = _count(count)
        value = torch.full_like(c, init)
        for b, s in items:
            value = torch.where(c >= b, value * s, value)
        return value

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` (its count starting
    again at 0), and so on; ``len(boundaries) == len(schedules) - 1``."""
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
                c >= start, torch.as_tensor(s(c - start), dtype=torch.float64), value
            )
        return value

    return schedule
