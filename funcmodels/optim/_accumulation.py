"""Gradient accumulation: optax's ``MultiSteps`` (and its function form
:func:`multi_steps`), ``apply_every``, and the skip rules a ``MultiSteps`` may take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    as_transformation,
    call_update,
    check_state,
    count_like,
    dtype_arg,
    flatten_like,
    zeros_like_tree,
)
from ._wrappers import _select


class ApplyEveryState(NamedTuple):
    """The state of :func:`apply_every` (``ApplyEvery`` is optax's name for it)."""

    count: torch.Tensor
    """updates done modulo ``k``, a 0-dim int64 tensor"""
    grad_acc: Any
    """the updates summed since the last emitted one"""


#: optax's name for it
ApplyEvery = ApplyEveryState


class MultiStepsState(NamedTuple):
    """The state of :func:`multi_steps` and :class:`MultiSteps`."""

    mini_step: torch.Tensor
    """micro-batches accumulated since the last update, a 0-dim int64 tensor"""
    gradient_step: torch.Tensor
    """updates of the inner optimiser so far, a 0-dim int64 tensor"""
    inner_opt_state: Any
    """the state of the inner optimiser"""
    acc_grads: Any
    """the mean (or sum) of the gradients accumulated so far"""
    skip_state: Any = ()
    """what ``should_skip_update_fn`` returned last"""


def apply_every(k: int = 1) -> GradientTransformation:
    """Accumulate updates and emit their sum every ``k`` steps (zeros in between).

    Put it last in a chain (after the learning rate) to apply the summed steps of ``k``
    micro-batches at once; :class:`MultiSteps` is the usual gradient accumulation.

    Arguments:
        k: the period, a positive int.

    Returns:
        A GradientTransformation; its state is an :class:`ApplyEveryState`.

    Raises:
        ValueError: ``k`` is not a positive int.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"fm.optim.apply_every: k must be a positive int, got {k!r}")

    def init(params):
        return ApplyEveryState(count_like(params), zeros_like_tree(params))

    def update(updates, state, params=None):
        check_state(state, ApplyEveryState, "fm.optim.apply_every")
        us, spec = pytree.tree_flatten(updates)
        acc = flatten_like(state.grad_acc, spec, "accumulated updates", "the updates")
        c = state.count % k
        acc = [torch.where(c != 0, a + u, u) for a, u in zip(acc, us, strict=True)]
        emit = c == k - 1
        out = [torch.where(emit, a, torch.zeros_like(a)) for a in acc]
        new = ApplyEveryState((state.count + 1) % k, pytree.tree_unflatten(acc, spec))
        return pytree.tree_unflatten(out, spec), new

    return GradientTransformation(init, update)


def skip_not_finite(updates: Any, gradient_step: torch.Tensor, params: Any) -> tuple:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip a micro-batch whose
    updates hold an inf or a NaN.

    Arguments:
        updates: the micro-batch's updates, a pytree, as :class:`MultiSteps` passes them.
        gradient_step: the inner optimiser's step count, a 0-dim int64 tensor.
        params: the params (not looked at).

    Returns:
        ``(should_skip, {"should_skip": ..., "num_not_finite": ...})``, 0-dim tensors.
    """
    leaves = pytree.tree_leaves(updates)
    count = torch.zeros((), dtype=torch.int64, device=gradient_step.device)
    for u in leaves:
        count = count + (~torch.isfinite(u)).sum()
    skip = count > 0
    return skip, {"should_skip": skip, "num_not_finite": count}


def skip_large_updates(
    updates: Any, gradient_step: torch.Tensor, params: Any, max_squared_norm: float
) -> tuple:
    """A ``should_skip_update_fn`` for :class:`MultiSteps` (bind ``max_squared_norm`` with
    ``functools.partial``): skip a micro-batch whose squared global norm is not below
    ``max_squared_norm`` (NaN included).

    Arguments:
        updates: the micro-batch's updates, a pytree, as :class:`MultiSteps` passes them.
        gradient_step: the inner optimiser's step count, a 0-dim int64 tensor.
        params: the params (not looked at).
        max_squared_norm: the bound.

    Returns:
        ``(should_skip, {"should_skip": ..., "norm_squared": ...})``, 0-dim tensors.
    """
    leaves = pytree.tree_leaves(updates)
    dtype = leaves[0].dtype if leaves else torch.float32
    norm_sq = torch.zeros((), dtype=dtype, device=gradient_step.device)
    for u in leaves:
        norm_sq = norm_sq + (u * u).sum()
    skip = ~(norm_sq < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": norm_sq}


class MultiSteps:
    """Gradient accumulation, as optax's ``MultiSteps``: ``update`` averages (or sums) the
    gradients of ``every_k_schedule`` micro-batches and returns zero updates until the
    last one, where ``opt`` takes one step on the accumulated gradient.

    Every call computes ``opt``'s update and keeps it or not with ``torch.where``: no
    data-dependent branch, so a step runs under ``vmap`` and ``torch.compile``; for
    Adam-like optimisers that costs a few elementwise passes per micro-batch.

    Arguments:
        opt: the optimiser to step.
        every_k_schedule: micro-batches per step: an int, or a function of the step count
            (``gradient_step``) returning one (a varying batch size).
        use_grad_mean: average (Welford's update, as optax's) or sum the gradients.
        should_skip_update_fn: ``fn(updates, gradient_step, params) -> (bool tensor,
            info)``; a micro-batch it rejects is as if it never came (see
            :func:`skip_not_finite`).
        accumulator_dtype: the dtype of the accumulated gradients (optax's default,
            float32; ``None``: the params').
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable[..., tuple] | None = None,
        accumulator_dtype: torch.dtype | None = torch.float32,
    ):
        where = "fm.optim.MultiSteps"
        self._opt = as_transformation(where, "opt", opt)
        if isinstance(every_k_schedule, bool) or not (
            callable(every_k_schedule) or isinstance(every_k_schedule, int)
        ):
            raise TypeError(f"{where}: every_k_schedule must be an int or a schedule")
        if isinstance(every_k_schedule, int) and every_k_schedule < 1:
            raise ValueError(f"{where}: every_k_schedule must be positive, got {every_k_schedule}")
        self._every_k = every_k_schedule
        self._use_grad_mean = bool(use_grad_mean)
        self._skip = should_skip_update_fn
        self._dtype = dtype_arg(where, "accumulator_dtype", accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    def init(self, params: Any) -> MultiStepsState:
        """The state: zero counts, ``opt``'s state, zero accumulators."""
        step = count_like(params)
        acc = pytree.tree_map(lambda p: torch.zeros_like(p, dtype=self._dtype), params)
        skip_state = (
            () if self._skip is None else self._skip(zeros_like_tree(params), step, params)[1]
        )
        return MultiStepsState(step, step.clone(), self._opt.init(params), acc, skip_state)

    def update(
        self, updates: Any, state: MultiStepsState, params: Any = None, **extra_args: Any
    ) -> tuple:
        """Accumulate ``updates``; the inner step's updates on the last micro-batch,
        zeros before. Extra keyword arguments go to ``opt`` if it takes them."""
        check_state(state, MultiStepsState, "fm.optim.MultiSteps")
        k = self._every_k if isinstance(self._every_k, int) else self._every_k(state.gradient_step)
        us, spec = pytree.tree_flatten(updates)
        olds = flatten_like(state.acc_grads, spec, "accumulated gradients", "the updates")
        n = state.mini_step
        if self._use_grad_mean:
            acc = [a + (u - a) / (n + 1) for u, a in zip(us, olds, strict=True)]
        else:
            acc = [u + a for u, a in zip(us, olds, strict=True)]
        given = [a.to(u.dtype) for a, u in zip(acc, us, strict=True)]
        stepped, inner = call_update(
            self._opt, pytree.tree_unflatten(given, spec), state.inner_opt_state, params, extra_args
        )
        emit = n == k - 1
        gradient_step = torch.where(emit, state.gradient_step + 1, state.gradient_step)
        new = MultiStepsState(
            (n + 1) % k,
            gradient_step,
            _select(emit, inner, state.inner_opt_state),
            pytree.tree_unflatten(
                [
                    torch.where(emit, torch.zeros_like(a), a).to(o.dtype)
                    for a, o in zip(acc, olds, strict=True)
                ],
                spec,
            ),
            state.skip_state,
        )
        out = pytree.tree_map(lambda u: torch.where(emit, u, torch.zeros_like(u)), stepped)
        if self._skip is None:
            return out, new
        return self._maybe_skip(updates, state, params, new, out)

    def _maybe_skip(self, updates, state, params, new, out) -> tuple:
        skip, skip_state = self._skip(updates, state.gradient_step, params)
        if not isinstance(skip, torch.Tensor) or skip.dtype != torch.bool or skip.dim() != 0:
            raise ValueError(
                "fm.optim.MultiSteps: should_skip_update_fn must return a 0-dim bool tensor "
                f"first, got {skip!r}"
            )
        kept = _select(~skip, new._replace(skip_state=()), state._replace(skip_state=()))
        out = pytree.tree_map(lambda u: torch.where(skip, torch.zeros_like(u), u), out)
        return out, kept._replace(skip_state=skip_state)

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the last ``update`` stepped the inner optimiser (a bool tensor)."""
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        return GradientTransformationExtraArgs(self.init, self.update)


def multi_steps(
    opt: GradientTransformation,
    every_k_schedule: int | Callable[[torch.Tensor], Any],
    use_grad_mean: bool = True,
    should_skip_update_fn: Callable[..., tuple] | None = None,
    accumulator_dtype: torch.dtype | None = torch.float32,
) -> GradientTransformation:
    """:class:`MultiSteps` as a GradientTransformation.

    Arguments:
        opt: the optimiser to step.
        every_k_schedule: micro-batches per step: an int, or a function of the step count returning
            one.
        use_grad_mean: average (``True``) or sum the gradients.
        should_skip_update_fn: ``fn(updates, gradient_step, params) -> (bool tensor, info)``; a
            micro-batch it rejects is as if it never came (see :func:`skip_not_finite`).
        accumulator_dtype: the dtype of the accumulated gradients (``None``: the params').

    Returns:
        A GradientTransformation; its state is a :class:`MultiStepsState`.
    """
    return MultiSteps(
        opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype
    ).gradient_transformation()
