"""Updating params outside an optimiser: moving averages (Polyak/EMA) and periodic
copies, as optax's ``incremental_update`` and ``periodic_update``."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from ._base import Scalar, flatten_like, number
from ._ops import grouped, promoted, scalar


def incremental_update(new_tensors: Any, old_tensors: Any, step_size: Scalar) -> Any:
    """A moving average of params: ``step_size * new + (1 - step_size) * old`` leaf by
    leaf (optax's ``incremental_update``); a parameter EMA with decay ``d`` is
    ``ema = incremental_update(params, ema, 1 - d)`` after each step.

    Arguments:
        new_tensors: the latest values (a pytree of tensors, :class:`funcmodels.Params`
            included).
        old_tensors: the average so far, same structure.
        step_size: a number in ``[0, 1]`` or a 0-dim tensor (cast to each leaf's dtype).

    Returns:
        The new average, a pytree like ``old_tensors`` of the leaves' promoted dtypes.

    Raises:
        ValueError: the two trees differ in structure.
    """
    step = number("fm.optim.incremental_update", "step_size", step_size, below=1.0 + 1e-12)
    news, spec = pytree.tree_flatten(new_tensors)
    olds = flatten_like(old_tensors, spec, "old_tensors", "new_tensors")
    dtypes = promoted(news, olds)

    def math(ops, dtype, device, news, olds):
        s = scalar(step, dtype, device)
        return (ops.add_scaled_(ops.mul(news, s), olds, 1 - s),)

    (out,) = grouped(math, dtypes, news, olds, hyper=(step,))
    return pytree.tree_unflatten(out, spec)


def periodic_update(
    new_tensors: Any, old_tensors: Any, steps: int | torch.Tensor, update_period: int
) -> Any:
    """``new_tensors`` when ``steps`` is a multiple of ``update_period``, else
    ``old_tensors`` (a target network's slow copy), as optax's ``periodic_update``.

    With a tensor ``steps`` the choice is a ``torch.where`` per leaf (no host sync, so it
    traces under ``torch.compile`` and maps under ``vmap``).

    Arguments:
        new_tensors: the online network's params, a pytree of tensors.
        old_tensors: the target network's params, a pytree of the same structure.
        steps: the online network's step count (an int or an integer tensor).
        update_period: a positive int.

    Returns:
        ``new_tensors`` or ``old_tensors`` (with a tensor ``steps``: a new tree whose
            leaves come from one or the other).
    """
    news, spec = pytree.tree_flatten(new_tensors)
    olds = flatten_like(old_tensors, spec, "old_tensors", "new_tensors")
    if not isinstance(steps, torch.Tensor):
        return new_tensors if steps % update_period == 0 else old_tensors
    now = steps % update_period == 0
    return pytree.tree_unflatten(
        [torch.where(now, n, o) for n, o in zip(news, olds, strict=True)], spec
    )
