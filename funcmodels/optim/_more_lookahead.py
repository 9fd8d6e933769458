"""Lookahead (Zhang et al., 2019), optax's ``lookahead``: a fast optimiser, and slow params
pulled towards the fast ones every ``sync_period`` steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import GradientTransformation, as_transformation, check_state, count_like


class LookaheadState(NamedTuple):
    """The state of :func:`lookahead`."""

    fast_state: Any
    """the fast optimiser's state"""
    steps_since_sync: torch.Tensor
    """steps since the last synchronisation, a 0-dim int64 tensor"""


class LookaheadParams(NamedTuple):
    """The params :func:`lookahead` updates: the fast ones (the optimiser's) and the slow
    ones (the ones to evaluate with)."""

    fast: Any
    """the fast params, the ones the inner optimiser updates"""
    slow: Any
    """the slow params, the ones to evaluate with"""

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """Fast and slow params both ``params``.

        Arguments:
            params: a pytree of tensors.

        Returns:
            ``LookaheadParams(fast=params, slow=params)``.
        """
        return cls(slow=params, fast=params)


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: Any,
    reset_state: bool = False,
) -> GradientTransformation:
    """Lookahead: ``fast_optimizer`` steps the fast params; every ``sync_period`` steps the
    slow params move ``slow_step_size`` of the way to the fast ones, and the fast params
    are set to the slow ones. ``update`` takes and returns :class:`LookaheadParams`
    (updates for both; :func:`apply_updates` adds them).

    With ``reset_state`` the fast optimiser's state is re-initialised at each
    synchronisation, chosen with ``torch.where`` (optax blends ``(1 - s) * state + s *
    init``, the same for finite values).

    Arguments:
        fast_optimizer: the inner optimiser.
        sync_period: steps between synchronisations, ``>= 1``.
        slow_step_size: the slow params' step towards the fast ones, in ``[0, 1]``.
        reset_state: re-initialise the fast optimiser at each synchronisation.

    Returns:
        The transformation; its state is a :class:`LookaheadState`.

    Raises:
        ValueError: ``sync_period < 1``; from ``update``, params that are not
            :class:`LookaheadParams`.
    """
    where = "fm.optim.lookahead"
    fast_optimizer = as_transformation(where, "fast_optimizer", fast_optimizer)
    if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
        raise ValueError(f"{where}: sync_period must be an int >= 1, got {sync_period!r}")

    def init(params):
        fast = getattr(params, "fast", params)
        return LookaheadState(fast_optimizer.init(fast), count_like(fast))

    def update(updates, state, params=None):
        check_state(state, LookaheadState, where)
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                f"{where}: update needs the params as fm.optim.LookaheadParams(fast, slow) "
                f"(LookaheadParams.init_synced(params) makes them), got {type(params).__name__}"
            )
        updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast)
        sync = state.steps_since_sync == sync_period - 1
        updates = _lookahead_update(updates, sync, params, slow_step_size)
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = pytree.tree_map(
                lambda now, new: (
                    torch.where(sync, new, now) if isinstance(now, torch.Tensor) else now
                ),
                fast_state,
                fresh,
            )
        return updates, LookaheadState(fast_state, (state.steps_since_sync + 1) % sync_period)

    return GradientTransformation(init, update)


def _lookahead_update(updates: Any, sync: torch.Tensor, params: LookaheadParams, step: Any):
    """optax's arithmetic: ``diff = fast + u - slow``; the slow params move ``step * sync *
    diff``, the fast ones ``u - sync * (1 - step) * diff``."""
    diff = pytree.tree_map(lambda f, u, s: f + u - s, params.fast, updates, params.slow)

    def factor(x, value):
        value = value.to(x.dtype) if isinstance(value, torch.Tensor) else value
        return sync.to(x.dtype) * value

    slow = pytree.tree_map(lambda d: factor(d, step) * d, diff)
    fast = pytree.tree_map(lambda u, d: u - factor(d, 1 - step) * d, updates, diff)
    return LookaheadParams(fast=fast, slow=slow)
