"""Sharpness-aware minimisation (Foret et al., 2021) and its gradient normalisation, as
optax.contrib's ``sam`` and ``normalize``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    as_transformation,
    check_state,
    init_empty_state,
)
from .._more_common import leafwise
from ._common import device_of, tree_sum

#: optax's name for the state of :func:`normalize`.
NormalizeState = EmptyState


def normalize() -> GradientTransformation:
    """Divide the updates by their global norm (optax.contrib's ``normalize``, no floor:
    zero updates give NaNs, as optax's).

    Returns:
        A GradientTransformation; its state is an :class:`EmptyState`.
    """

    def step(us, state, ps, spec):
        norm = tree_sum([u.square() for u in us], us[0].dtype if us else torch.float32).sqrt()
        return [u / norm.to(u.dtype) for u in us], state

    return leafwise("fm.optim.contrib.normalize", init_empty_state, step)


class SAMState(NamedTuple):
    """The state of :func:`sam`."""

    steps_since_sync: torch.Tensor
    """steps since the outer optimiser last stepped (0-dim int32)"""
    opt_state: Any
    """the outer optimiser's state"""
    adv_state: Any
    """the adversarial optimiser's state"""
    cache: Any
    """the params at the last outer step (``None`` in opaque mode)"""


def _pick(cond: torch.Tensor, if_true: Any, if_false: Any) -> Any:
    """optax's ``cond * a + (1 - cond) * b`` leaf by leaf (a blend, not a select: it
    propagates a NaN of either side, as optax's)."""

    def leaf(a, b):
        if not isinstance(a, torch.Tensor):  # None and the like: nothing to pick
            return b
        if a.dtype == torch.bool or b.dtype == torch.bool:
            return torch.where(cond, a, b)
        c = cond.to(torch.promote_types(a.dtype, b.dtype))
        return (c * a + (1 - c) * b).to(b.dtype)

    return pytree.tree_map(leaf, if_true, if_false)


def _negate(tree: Any) -> Any:
    return pytree.tree_map(torch.neg, tree)


def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformation:
    """Sharpness-aware minimisation (optax.contrib's ``sam``).

    Transparent mode (the default): of every ``sync_period`` steps, the first
    ``sync_period - 1`` are adversarial (the params move up the gradient by
    ``adv_optimizer``'s updates, negated) and the last is the outer step: ``optimizer``'s
    update at the params cached at the cycle's start, applied from there. Opaque mode: one
    ``update`` runs the whole cycle, calling ``grad_fn(params, i)`` (an ``update``
    keyword argument) for the gradients at the adversarial points. A typical
    ``adv_optimizer`` is ``chain(contrib.normalize(), sgd(rho))``.

    Arguments:
        optimizer: the outer optimiser.
        adv_optimizer: the adversarial optimiser (its updates are negated: it ascends).
        sync_period: steps per cycle, >= 1.
        reset_state: re-initialise ``adv_optimizer``'s state at each outer step.
        opaque_mode: run the adversarial steps inside one ``update`` with ``grad_fn``.
        batch_axis_name: must be ``None`` (JAX's ``pmean`` over a named axis has no
            counterpart here; average the gradients in ``grad_fn`` instead).

    Returns:
        A GradientTransformation whose ``update(updates, state, params, *,
            grad_fn=None)`` needs the params; its state is a :class:`SAMState`.

    Raises:
        ValueError: ``sync_period < 1``, a ``batch_axis_name``, or (at ``update``) no
            ``grad_fn`` in opaque mode.
        TypeError: ``optimizer`` or ``adv_optimizer`` is not a transformation.
    """
    where = "fm.optim.contrib.sam"
    if sync_period < 1:
        raise ValueError(f"{where}: sync_period must be >= 1, got {sync_period}")
    if batch_axis_name is not None:
        raise ValueError(
            f"{where}: batch_axis_name is JAX's pmean over a named axis; pass None and "
            "average the gradients inside grad_fn (torch.distributed.all_reduce)"
        )
    opt = as_transformation(where, "optimizer", optimizer)
    adv = as_transformation(where, "adv_optimizer", adv_optimizer)

    def init(params):
        return SAMState(
            steps_since_sync=torch.zeros((), dtype=torch.int32, device=device_of(params)),
            opt_state=opt.init(params),
            adv_state=adv.init(params),
            cache=None if opaque_mode else pytree.tree_map(torch.clone, params),
        )

    def transparent(updates, state, params, *, grad_fn: Callable | None = None):
        check_state(state, SAMState, where)
        first, last = state.steps_since_sync == 0, state.steps_since_sync == sync_period - 1
        adv_updates, adv_state = adv.update(updates, state.adv_state, params)
        adv_updates = _negate(adv_updates)
        opt_updates, opt_state = opt.update(updates, state.opt_state, state.cache)
        opt_updates = pytree.tree_map(lambda c, p, u: c - p + u, state.cache, params, opt_updates)
        keep = adv.init(params) if reset_state else state.adv_state
        return _pick(last, opt_updates, adv_updates), SAMState(
            steps_since_sync=(state.steps_since_sync + 1) % sync_period,
            opt_state=_pick(last, opt_state, state.opt_state),
            adv_state=_pick(last, keep, adv_state),
            cache=_pick(first, params, state.cache),
        )

    def opaque(updates, state, params, *, grad_fn: Callable | None = None):
        check_state(state, SAMState, where)
        if grad_fn is None:
            raise ValueError(f"{where}: grad_fn must be provided when opaque_mode=True")
        adv_params, adv_updates, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            adv_updates, adv_state = adv.update(adv_updates, adv_state, adv_params)
            adv_params = apply_updates(adv_params, _negate(adv_updates))
            adv_updates = grad_fn(adv_params, i)
        if reset_state:
            adv_state = adv.init(params)
        updates, opt_state = opt.update(adv_updates, state.opt_state, params)
        steps = torch.zeros_like(state.steps_since_sync)
        return updates, SAMState(steps, opt_state, adv_state, None)

    return GradientTransformation(init, opaque if opaque_mode else transparent)
