"""More of optax's wrappers and combinators: freezing, partitions, named chains,
conditional steps, flattening, monitoring, and Lookahead.

A conditional step computes the inner update every step and keeps it or not with
``torch.where`` (as :func:`apply_if_finite`): no data-dependent branch, so it runs under
``vmap`` and ``torch.compile``; optax's ``lax.cond`` skips the work instead.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    as_transformation,
    call_update,
    check_state,
    count_like,
    set_to_zero,
)
from ._moments import ema
from ._utilities import stateless
from ._wrappers import MultiTransformState, _select, masked, multi_transform


class PartitionState(NamedTuple):
    """The state of :func:`partition`."""

    inner_states: Mapping[Hashable, Any]
    """label -> the state of that label's transformation"""


class ConditionallyTransformState(NamedTuple):
    """The state of :func:`conditionally_transform`."""

    inner_state: Any
    """the inner transformation's state"""
    step: torch.Tensor
    """steps done, a 0-dim int64 tensor"""


class ConditionallyMaskState(NamedTuple):
    """The state of :func:`conditionally_mask`."""

    step: torch.Tensor
    """steps done, a 0-dim int64 tensor"""
    inner_state: Any
    """the inner transformation's state"""


class SnapshotState(NamedTuple):
    """The state of :func:`snapshot`."""

    measurement: dict[str, Any]
    """the measure's name -> its value on the last updates (the params at init)"""


class MonitorState(NamedTuple):
    """The state of :func:`monitor`."""

    measurements: dict[str, Any]
    """each measure's name -> its value on the last updates"""
    measure_states: tuple
    """the measures' own states, in order"""


def freeze(mask: Any) -> GradientTransformation:
    """Zero the updates of the params ``mask`` selects: ``masked(set_to_zero(), mask)``.

    Arguments:
        mask: a bool, or a pytree of bools like the params or a prefix of it (``True``:
            frozen).

    Returns:
        A GradientTransformation; its state is a :class:`MaskedState`.
    """
    return masked(set_to_zero(), mask)


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """A transformation per group of params: optax's ``partition`` (its newer name for
    :func:`multi_transform`), with a :class:`PartitionState`.

    Arguments:
        transforms: label -> the transformation for the params of that label.
        param_labels: a pytree of labels like the params (or a prefix of it), or a
            function of the params returning one.
        mask_compatible_extra_args: as :func:`masked`'s.

    Returns:
        The transformation (a :class:`GradientTransformationExtraArgs`); its state is a
            :class:`PartitionState`.

    Raises:
        ValueError: a label without a transformation (from ``init``).
    """
    inner = multi_transform(
        transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args
    )

    def init(params):
        return PartitionState(inner.init(params).inner_states)

    def update(updates, state, params=None, **extra_args):
        check_state(state, PartitionState, "fm.optim.partition")
        inner_state = MultiTransformState(state.inner_states)
        out, new = inner.update(updates, inner_state, params, **extra_args)
        return out, PartitionState(new.inner_states)

    return GradientTransformationExtraArgs(init, update)


def selective_transform(
    optimizer: GradientTransformation, *, freeze_mask: Any
) -> GradientTransformation:
    """``optimizer`` for the params ``freeze_mask`` leaves out, zero updates for the others:
    ``partition({'train': optimizer, 'freeze': set_to_zero()}, labels)``.

    Arguments:
        optimizer: the transformation of the trained params.
        freeze_mask: a bool or a pytree of bools like the params or a prefix of it
            (``True``: frozen).

    Returns:
        The transformation; its state is a :class:`PartitionState`.
    """
    labels = pytree.tree_map(lambda m: "freeze" if m else "train", freeze_mask)
    return partition({"train": optimizer, "freeze": set_to_zero()}, param_labels=labels)


def named_chain(*args: tuple[str, GradientTransformation]) -> GradientTransformation:
    """:func:`chain` whose state is an ordered dict of the pieces' states by name.

    Arguments:
        *args: ``(name, transformation)`` pairs; the names must differ.

    Returns:
        The chained transformation, a :class:`GradientTransformationExtraArgs` (extra
            update arguments go to the pieces that take them); its state is an ``OrderedDict``.

    Raises:
        ValueError: two pieces of the same name.
        TypeError: an argument that is not a ``(str, transformation)`` pair.
    """
    where = "fm.optim.named_chain"
    for arg in args:
        if not (isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], str)):
            raise TypeError(f"{where}: expected (name, transformation) pairs, got {arg!r}")
    names = [name for name, _ in args]
    if len(names) != len(set(names)):
        raise ValueError(f"{where}: named transformations must have unique names, got {names}")
    pieces = [(name, as_transformation(where, name, t)) for name, t in args]

    def init(params):
        return collections.OrderedDict((name, t.init(params)) for name, t in pieces)

    def update(updates, state, params=None, **extra_args):
        new = collections.OrderedDict()
        for name, t in pieces:
            updates, new[name] = call_update(t, updates, state[name], params, extra_args)
        return updates, new

    return GradientTransformationExtraArgs(init, update)


def _conditional(where, inner, should_transform_fn):
    inner = as_transformation(where, "inner", inner)
    if not callable(should_transform_fn):
        raise TypeError(f"{where}: should_transform_fn must be callable")
    return inner


def _keep(should_transform_fn, state, forward_extra_args, extra_args) -> torch.Tensor:
    """``should_transform_fn(step)``, given the extra arguments with ``forward_extra_args``."""
    kwargs = extra_args if forward_extra_args else {}
    return torch.as_tensor(should_transform_fn(state.step, **kwargs), device=state.step.device)


def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: Callable[[torch.Tensor], Any],
    forward_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` at the steps where ``should_transform_fn(step)`` holds; the other
    steps pass the updates through and keep ``inner``'s state.

    Arguments:
        inner: the transformation.
        should_transform_fn: step count (a 0-dim int64 tensor) -> a bool (tensor).
        forward_extra_args: also pass the extra update arguments to
            ``should_transform_fn`` (``inner`` gets them in any case, if it takes them).

    Returns:
        The transformation; its state is a :class:`ConditionallyTransformState`.

    Raises:
        TypeError: ``should_transform_fn`` not callable.
    """
    where = "fm.optim.conditionally_transform"
    inner = _conditional(where, inner, should_transform_fn)

    def init(params):
        return ConditionallyTransformState(inner.init(params), count_like(params))

    def update(updates, state, params=None, **extra_args):
        check_state(state, ConditionallyTransformState, where)
        keep = _keep(should_transform_fn, state, forward_extra_args, extra_args)
        new, inner_state = call_update(inner, updates, state.inner_state, params, extra_args)
        out = pytree.tree_map(lambda n, u: torch.where(keep, n, u), new, updates)
        inner_state = _select(keep, inner_state, state.inner_state)
        return out, ConditionallyTransformState(inner_state, state.step + 1)

    return GradientTransformationExtraArgs(init, update)


def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: Callable[[torch.Tensor], Any],
    forward_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` at the steps where ``should_transform_fn(step)`` holds; the other
    steps give zero updates and keep ``inner``'s state.

    Arguments:
        inner: the transformation.
        should_transform_fn: step count (a 0-dim int64 tensor) -> a bool (tensor).
        forward_extra_args: also pass the extra update arguments to
            ``should_transform_fn`` (``inner`` gets them in any case, if it takes them).

    Returns:
        The transformation; its state is a :class:`ConditionallyMaskState`.

    Raises:
        TypeError: ``should_transform_fn`` not callable.
    """
    where = "fm.optim.conditionally_mask"
    inner = _conditional(where, inner, should_transform_fn)

    def init(params):
        return ConditionallyMaskState(count_like(params), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        check_state(state, ConditionallyMaskState, where)
        keep = _keep(should_transform_fn, state, forward_extra_args, extra_args)
        new, inner_state = call_update(inner, updates, state.inner_state, params, extra_args)
        out = pytree.tree_map(lambda n: torch.where(keep, n, torch.zeros_like(n)), new)
        inner_state = _select(keep, inner_state, state.inner_state)
        return out, ConditionallyMaskState(state.step + 1, inner_state)

    return GradientTransformationExtraArgs(init, update)


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on one vector: every leaf of the updates (and params) flattened and
    concatenated, the result split back into the leaves' shapes.

    Arguments:
        inner: the transformation (its state is made for the concatenated vector).

    Returns:
        The transformation; its state is ``inner``'s.
    """
    inner = as_transformation("fm.optim.flatten", "inner", inner)

    def vector(tree):
        leaves = pytree.tree_leaves(tree)
        return torch.cat([leaf.reshape(-1) for leaf in leaves])

    def init(params):
        return inner.init(vector(params))

    def update(updates, state, params=None, **extra_args):
        leaves, spec = pytree.tree_flatten(updates)
        flat = None if params is None else vector(params)
        out, state = call_update(inner, vector(updates), state, flat, extra_args)
        parts = torch.split(out, [leaf.numel() for leaf in leaves])
        shaped = [p.reshape(leaf.shape) for p, leaf in zip(parts, leaves, strict=True)]
        return pytree.tree_unflatten(shaped, spec), state

    return GradientTransformationExtraArgs(init, update)


def snapshot(measure_name: str, measure: Callable[[Any], Any]) -> GradientTransformation:
    """Keep ``measure(updates)`` in the state (``measure(params)`` at init); the updates
    pass unchanged.

    Arguments:
        measure_name: the key of the measurement.
        measure: a function of the updates (a global norm, ...).

    Returns:
        The transformation; its state is a :class:`SnapshotState`.
    """

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None):
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


def monitor(measures: dict[str, Any]) -> GradientTransformation:
    """Keep several measurements of the updates in the state; the updates pass unchanged.

    Arguments:
        measures: name -> a function of the updates, or a transformation whose
            "updates" are the measurement (such as :func:`measure_with_ema`).

    Returns:
        The transformation; its state is a :class:`MonitorState`.
    """
    pieces = {
        name: (
            stateless(lambda u, _, m=m: m(u))
            if callable(m)
            else as_transformation("fm.optim.monitor", name, m)
        )
        for name, m in measures.items()
    }

    def init(params):
        return MonitorState({}, tuple(t.init(params) for t in pieces.values()))

    def update(updates, state, params=None):
        check_state(state, MonitorState, "fm.optim.monitor")
        measurements, states = {}, []
        for (name, t), s in zip(pieces.items(), state.measure_states, strict=True):
            measurements[name], s = t.update(updates, s, params)
            states.append(s)
        return updates, MonitorState(measurements, tuple(states))

    return GradientTransformation(init, update)


def measure_with_ema(
    measure: Callable[[Any], Any],
    decay: Any,
    debias: bool = True,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """An exponential moving average of ``measure(updates)``, for :func:`monitor`: its
    "updates" are the averaged measurement (optax's chain of the measure and an
    :func:`ema`; the state is the pair ``(EmptyState(), EmaState)``).

    Arguments:
        measure: a function of the updates.
        decay: the average's decay, in ``[0, 1]``.
        debias: divide by ``1 - decay**t``.
        accumulator_dtype: the average's dtype (``None``: the measurement's).

    Returns:
        A transformation whose output is the averaged measurement.
    """
    average = ema(decay, debias, accumulator_dtype)

    def init(params):
        return (EmptyState(), average.init(measure(params)))

    def update(updates, state, params=None):
        value, inner = average.update(measure(updates), state[1])
        return value, (state[0], inner)

    return GradientTransformation(init, update)
