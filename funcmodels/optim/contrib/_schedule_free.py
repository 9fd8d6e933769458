"""Schedule-free learning (Defazio et al., 2024): ``schedule_free`` around any optimiser,
its SGD and AdamW forms, and the evaluation params, as optax.contrib's."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._alias import sgd
from .._base import (
    GradientTransformation,
    Scalar,
    as_transformation,
    chain,
    check_state,
    dtype_arg,
    flatten,
    flatten_like,
    is_schedule,
    number,
    unflatten,
)
from .._moments import scale_by_rms
from .._more_common import hyper, work_dtype
from .._schedules import warmup_constant_schedule
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import safe_increment, with_extra_args_support
from ._common import device_of, lowest_dtype, need_params, scalar


class ScheduleFreeState(NamedTuple):
    """The state of :func:`schedule_free` (and of its SGD and AdamW forms)."""

    b1: torch.Tensor
    """the interpolation weight (0-dim, the params' lowest floating dtype)"""
    weight_sum: torch.Tensor
    """the sum of the averaging weights so far (0-dim)"""
    step_count: torch.Tensor
    """the step, counted from 1 (0-dim int32)"""
    max_lr: torch.Tensor
    """the largest learning rate so far (0-dim)"""
    base_optimizer_state: Any
    """the state of the base optimiser"""
    z: Any
    """the base optimiser's iterates (a tree like the params)"""


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The params to evaluate a model at: ``x = (y - (1 - b1) z) / b1`` from the training
    params ``y`` and the state's ``z`` (optax.contrib's ``schedule_free_eval_params``).

    Arguments:
        state: a :class:`ScheduleFreeState` (or a state with ``b1`` and ``z``).
        params: the params :func:`schedule_free` trains (``y``).

    Returns:
        A tree like ``params``.

    Raises:
        ValueError: ``state`` has no ``b1`` or ``z``.
    """
    b1, z = getattr(state, "b1", None), getattr(state, "z", None)
    if b1 is None or z is None:
        raise ValueError(
            "fm.optim.contrib.schedule_free_eval_params: expected a ScheduleFreeState, got "
            f"{type(state).__name__}"
        )
    one_minus = 1.0 - b1

    def leaf(y, zi):
        return (y - hyper(one_minus, y) * zi) / hyper(b1, y)

    return pytree.tree_map(leaf, params, z)


def _averaging_weight(max_lr: torch.Tensor, weight_sum: torch.Tensor, power: Any) -> tuple:
    """``(ck, next weight sum)``: the weight of the new iterate in the average."""
    weight = max_lr**power
    total = weight_sum + weight
    ratio = torch.nan_to_num(weight / total, nan=0.0, posinf=float("inf"))
    ck = torch.where(weight.isnan() | total.isnan(), torch.full_like(weight, float("nan")), ratio)
    return ck, total


def _interpolate(ys, zs_old, zs, b1, ck) -> list[torch.Tensor]:
    """``b1 * x + (1 - b1) * z - y`` per leaf, ``x`` the new average of the iterates."""
    # (1 - b1) and (1 - ck) in their own dtype, then cast to the leaf's, as JAX promotes
    b1_, ck_ = 1.0 - b1, 1.0 - ck
    out = []
    for y, z_old, z in zip(ys, zs_old, zs, strict=True):
        dtype = work_dtype(y, z_old, z)
        y, z_old, z = y.to(dtype), z_old.to(dtype), z.to(dtype)
        b, one_b, c, one_c = hyper(b1, y), hyper(b1_, y), hyper(ck, y), hyper(ck_, y)
        prev_x = (y - one_b * z_old) / b
        x = one_c * prev_x + c * z
        out.append(b * x + one_b * z - y)
    return out


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Schedule-free learning around ``base_optimizer`` (optax.contrib's).

    The base optimiser's updates move the iterates ``z``; the params trained on are
    ``y = b1 x + (1 - b1) z``, ``x`` the average of the ``z`` weighted by the largest
    learning rate so far to the power ``weight_lr_power``. Evaluate the model at
    :func:`schedule_free_eval_params` (``x``). Give the base optimiser no momentum
    (``b1=0`` for Adam). The learning rate's schedule is called with the step counted
    from 1, as optax's.

    Arguments:
        base_optimizer: the GradientTransformation whose updates move ``z``.
        learning_rate: the base optimiser's learning rate (a number, 0-dim tensor or
            schedule), used for the averaging weights.
        b1: the interpolation weight, > 0.
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: the dtype of ``z`` (the params' dtypes when ``None``).

    Returns:
        A GradientTransformation (``update`` accepts extra keyword arguments and passes
            them on); its state is a :class:`ScheduleFreeState`. ``update`` needs the params.

    Raises:
        TypeError: ``base_optimizer`` is not a transformation, ``state_dtype`` not a
            floating dtype, a hyperparameter of the wrong type.
        ValueError: a hyperparameter out of range.
    """
    where = "fm.optim.contrib.schedule_free"
    base = with_extra_args_support(as_transformation(where, "base_optimizer", base_optimizer))
    learning_rate = number(where, "learning_rate", learning_rate, schedule=True)
    b1 = number(where, "b1", b1)
    power = number(where, "weight_lr_power", weight_lr_power, lo=-float("inf"))
    state_dtype = dtype_arg(where, "state_dtype", state_dtype)

    def init(params):
        dtype, device = lowest_dtype(params), device_of(params)
        z = pytree.tree_map(lambda p: p.to(state_dtype or p.dtype).clone(), params)
        return ScheduleFreeState(
            b1=scalar(b1, dtype, device),
            weight_sum=torch.zeros((), dtype=dtype, device=device),
            step_count=torch.ones((), dtype=torch.int32, device=device),
            max_lr=torch.zeros((), dtype=dtype, device=device),
            base_optimizer_state=base.init(params),
            z=z,
        )

    def update(updates, state, params=None, **extra_args):
        check_state(state, ScheduleFreeState, where)
        need_params(where, params)
        max_lr = state.max_lr
        lr = learning_rate(state.step_count) if is_schedule(learning_rate) else learning_rate
        max_lr = torch.maximum(max_lr, scalar(lr, max_lr.dtype, max_lr.device))
        ck, total = _averaging_weight(max_lr, state.weight_sum, power)
        base_updates, base_state = base.update(
            updates, state.base_optimizer_state, params, **extra_args
        )
        ys, spec = flatten(params)
        us = flatten_like(base_updates, spec, "the base optimizer's updates")
        zs_old = flatten_like(state.z, spec, "the state's z")
        zs = [(z + u).to(z.dtype) for z, u in zip(zs_old, us, strict=True)]
        out = _interpolate(ys, zs_old, zs, b1, ck)
        new = ScheduleFreeState(
            state.b1,
            total,
            safe_increment(state.step_count),
            max_lr,
            base_state,
            unflatten(zs, spec),
        )
        return unflatten(out, spec), new

    return GradientTransformation(init, update)


def _warmup(learning_rate: Scalar, warmup_steps: int | None) -> Scalar:
    if warmup_steps is None:
        return learning_rate
    return warmup_constant_schedule(0.0, learning_rate, warmup_steps)


def schedule_free_sgd(
    learning_rate: Scalar = 1.0,
    warmup_steps: int | None = None,
    b1: Scalar = 0.9,
    weight_decay: Scalar | None = None,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Schedule-free SGD: :func:`schedule_free` around ``sgd(learning_rate)`` (after
    ``add_decayed_weights(weight_decay)`` when given), as optax.contrib's.

    Arguments:
        learning_rate: SGD's learning rate.
        warmup_steps: the length of a linear warmup from 0 (none when ``None``).
        b1: the interpolation weight, > 0.
        weight_decay: an L2 term added to the gradients (scaled by the learning rate).
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: the dtype of ``z``.

    Returns:
        A GradientTransformation; its state is a :class:`ScheduleFreeState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    learning_rate = _warmup(learning_rate, warmup_steps)
    optimizer = sgd(learning_rate)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(optimizer, learning_rate, b1, weight_lr_power, state_dtype)


def schedule_free_adamw(
    learning_rate: Scalar = 0.0025,
    warmup_steps: int | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Schedule-free AdamW: :func:`schedule_free` around ``chain(scale_by_rms(b2, eps,
    eps_in_sqrt=False, bias_correction=True), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))`` (Adam without momentum), as optax.contrib's.

    Arguments:
        learning_rate: the learning rate.
        warmup_steps: the length of a linear warmup from 0 (none when ``None``).
        b1: the interpolation weight, > 0.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        weight_decay: decoupled weight decay.
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: the dtype of ``z``.

    Returns:
        A GradientTransformation; its state is a :class:`ScheduleFreeState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    learning_rate = _warmup(learning_rate, warmup_steps)
    optimizer = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    return schedule_free(optimizer, learning_rate, b1, weight_lr_power, state_dtype)
