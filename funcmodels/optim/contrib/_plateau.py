"""``reduce_on_plateau``: scale the updates down when a monitored value stops improving
(optax.contrib's, with its arguments, defaults, state and arithmetic)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import GradientTransformation, check_state, number
from .._utilities import safe_increment
from ._common import device_of, highest_dtype, lowest_dtype, scalar


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau`."""

    scale: torch.Tensor
    """the factor on the updates (0-dim, the params' lowest floating dtype)"""
    best_value: torch.Tensor
    """the best averaged value so far (0-dim, the params' highest floating dtype)"""
    plateau_count: torch.Tensor
    """accumulations without improvement (0-dim int32)"""
    cooldown_count: torch.Tensor
    """accumulations left before plateaus count again (0-dim int32)"""
    count: torch.Tensor
    """values accumulated in ``avg_value`` (0-dim int32)"""
    avg_value: torch.Tensor
    """the running mean of the values of this accumulation (0-dim, highest dtype)"""


def _check(factor: float, rtol: float, atol: float) -> None:
    where = "fm.optim.contrib.reduce_on_plateau"
    if not 0.0 < factor < 1.0:
        raise ValueError(f"{where}: factor must be in the range (0, 1), got factor = {factor}")
    if rtol < 0.0 or atol < 0.0:
        raise ValueError(
            f"{where}: rtol and atol must be non-negative, got rtol = {rtol}, atol = {atol}"
        )
    if rtol == 0.0 and atol == 0.0:
        raise ValueError(f"{where}: at least one of rtol or atol must be positive")
    if rtol > 1.0:
        raise ValueError(f"{where}: rtol must be at most 1.0, got rtol = {rtol}")


def _new_scale(state: ReduceLROnPlateauState, hp: dict) -> ReduceLROnPlateauState:
    """optax's ``_update_scale``, both branches computed and picked with ``torch.where``."""
    avg, best = state.avg_value, state.best_value
    improved = avg < (1 - hp["rtol"]) * best - hp["atol"]
    new_best = torch.where(improved, avg.to(best.dtype), best)
    zero = torch.zeros_like(state.plateau_count)
    plateau = torch.where(improved, zero, safe_increment(state.plateau_count))
    hit = plateau == hp["patience"]
    cooling = state.cooldown_count > 0
    scale = state.scale
    floor = scalar(hp["min_scale"], scale.dtype, scale.device)
    reduced = torch.maximum(torch.where(hit, scale * hp["factor"], scale), floor)
    cooldown = torch.where(hit, torch.as_tensor(hp["cooldown"]).to(zero), zero)
    return ReduceLROnPlateauState(
        scale=torch.where(cooling, scale, reduced),
        best_value=new_best,
        plateau_count=torch.where(cooling | hit, zero, plateau),
        cooldown_count=torch.where(cooling, state.cooldown_count - 1, cooldown),
        count=zero,
        avg_value=torch.zeros_like(avg),
    )


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformation:
    """Scale the updates by ``factor`` when the monitored value has not improved for
    ``patience`` accumulations (optax.contrib's ``reduce_on_plateau``).

    ``update(updates, state, params=None, *, value)`` takes the monitored value (a loss)
    as ``value=``, as optax's ``GradientTransformationExtraArgs`` does. Every
    ``accumulation_size`` calls, the mean of the values is compared with the best mean
    so far: it improves when below ``(1 - rtol) * best - atol``; after ``patience``
    accumulations without improvement the scale is multiplied by ``factor`` (floored at
    ``min_scale``) and ``cooldown`` accumulations pass before plateaus count again. The
    updates are multiplied by the scale (cast to each leaf's dtype). No host sync: every
    decision is a ``torch.where``, so the step runs under ``vmap`` and ``torch.compile``.

    Arguments:
        factor: the factor on the scale at a plateau, in (0, 1).
        patience: accumulations without improvement before the scale is reduced.
        rtol: the relative improvement needed, in [0, 1].
        atol: the absolute improvement needed, >= 0 (``rtol`` or ``atol`` positive).
        cooldown: accumulations after a reduction during which plateaus do not count.
        accumulation_size: values averaged before each comparison.
        min_scale: the smallest scale.

    Returns:
        A GradientTransformation whose ``update`` needs ``value=``; the state is a
            :class:`ReduceLROnPlateauState`.

    Raises:
        ValueError: ``factor``, ``rtol`` or ``atol`` out of range.
    """
    where = "fm.optim.contrib.reduce_on_plateau"
    _check(factor, rtol, atol)
    number(where, "min_scale", min_scale)
    hp = dict(factor=factor, patience=patience, rtol=rtol, atol=atol, cooldown=cooldown)
    hp["min_scale"] = min_scale

    def init(params):
        device = device_of(params)
        high, low = highest_dtype(params), lowest_dtype(params)

        def int32(v):
            return torch.tensor(v, dtype=torch.int32, device=device)

        return ReduceLROnPlateauState(
            scale=torch.tensor(1.0, dtype=low, device=device),
            best_value=torch.tensor(float("inf"), dtype=high, device=device),
            plateau_count=int32(0),
            cooldown_count=int32(0),
            count=int32(0),
            avg_value=torch.tensor(0.0, dtype=high, device=device),
        )

    def update(updates, state, params=None, *, value, **extra_args):
        check_state(state, ReduceLROnPlateauState, where)
        count = state.count
        new_count = safe_increment(count)
        value = scalar(value, state.avg_value.dtype, state.avg_value.device)
        avg = (count * state.avg_value + value) / new_count
        state = state._replace(avg_value=avg.to(state.avg_value.dtype), count=new_count)
        reduced = _new_scale(state, hp)
        due = new_count == accumulation_size
        state = ReduceLROnPlateauState(
            *(torch.where(due, r, s) for r, s in zip(reduced, state, strict=True))
        )
        scale = state.scale
        return pytree.tree_map(lambda g: g * scale.to(g.dtype), updates), state

    return GradientTransformation(init, update)
