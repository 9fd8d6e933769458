"""Hyperparameters as state, with schedules that keep a state of their own: optax's
``inject_stateful_hyperparams`` and ``WrappedSchedule``."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch

from ._base import GradientTransformation, as_transformation, check_state, count_like
from ._types import Schedule, StatefulSchedule
from ._utilities import safe_increment
from ._wrappers import _as_hyper, _hyper_dtype, factory_signature

_WHERE = "fm.optim.inject_stateful_hyperparams"


class InjectStatefulHyperparamsState(NamedTuple):
    """The state of :func:`inject_stateful_hyperparams`."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    hyperparams: dict[str, torch.Tensor]
    """name -> the value used at the last step (a 0-dim tensor); replace a numeric
    entry to change it (a scheduled one is recomputed every step)"""
    hyperparams_states: dict[str, Any]
    """name -> the state of that hyperparameter's schedule"""
    inner_state: Any
    """the state of the wrapped transformation"""


class WrappedScheduleState(NamedTuple):
    """The state of a :class:`WrappedSchedule`."""

    count: torch.Tensor
    """steps done, a 0-dim int64 tensor"""


class WrappedSchedule:
    """A plain schedule (a function of the count) seen as a stateful one: its state is
    the count, as optax's.

    Arguments:
        schedule_fn: a function of a 0-dim integer tensor.

    Raises:
        TypeError: ``schedule_fn`` is not callable.
    """

    def __init__(self, schedule_fn: Schedule):
        if not callable(schedule_fn):
            raise TypeError(f"fm.optim.WrappedSchedule: expected a schedule, got {schedule_fn!r}")
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        """The first state, count 0.

        Returns:
            A WrappedScheduleState with a 0-dim int64 count.
        """
        return WrappedScheduleState(count=torch.zeros((), dtype=torch.int64))

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        """The state one step later.

        Arguments:
            state: the current state.
            **extra_args: ignored.

        Returns:
            A WrappedScheduleState with the count increased by one.
        """
        return WrappedScheduleState(count=safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> Any:
        """The schedule's value at the state's count.

        Arguments:
            state: the current state.
            **extra_args: ignored.

        Returns:
            ``schedule_fn(state.count)``.
        """
        return self.schedule_fn(state.count)


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Make an optimiser's numeric hyperparameters part of its state, with stateful
    schedules allowed, as optax's (deprecated there as here in favour of
    :func:`inject_hyperparams`; it warns so).

    Like :func:`inject_hyperparams`, and beyond it: an argument may be a stateful schedule
    (an object with ``init()``, ``update(state, **extra_args)`` and
    ``__call__(state, **extra_args)``, see ``fm.optim.StatefulSchedule``), whose state
    is kept in ``state.hyperparams_states`` and which sees the keyword arguments given
    to ``update`` (``value=loss``, ...). A plain schedule is wrapped in a
    :class:`WrappedSchedule`. Numbers are held as 0-dim tensors of ``hyperparam_dtype``
    (default: the widest floating dtype of the params); tensors a user gives are kept and
    cast to each leaf's dtype where used, so they never promote a leaf.

    Arguments:
        inner_factory: a function returning a GradientTransformation, such as
            ``fm.optim.adam``.
        static_args: names of arguments that are callables but not schedules (``mask``).
        hyperparam_dtype: the dtype of the hyperparameters held as tensors.

    Returns:
        A function taking ``inner_factory``'s arguments and returning the transformation
            (its ``update`` takes extra keyword arguments; its state is an
            ``InjectStatefulHyperparamsState``).

    Raises:
        TypeError: a non-callable factory.
        ValueError: ``static_args`` not among its arguments.
    """
    warnings.warn(
        "inject_stateful_hyperparams is deprecated, use inject_hyperparams instead",
        DeprecationWarning,
        stacklevel=2,
    )
    signature, static = factory_signature(_WHERE, inner_factory, static_args)

    @functools.wraps(inner_factory)
    def make(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        scheduled, numeric, other = _classify(bound.arguments, static)
        # check every argument once, here, where errors belong
        first = {k: f(f.init()) for k, f in scheduled.items()}
        inner_factory(**other, **numeric, **first)
        return _injected(inner_factory, scheduled, numeric, other, hyperparam_dtype)

    return make


def _classify(arguments: Mapping[str, Any], static: set[str]):
    """Split bound arguments into (stateful schedules, numbers and tensors, the rest)."""
    scheduled, numeric, other = {}, {}, {}
    for name, value in arguments.items():
        if name in static or isinstance(value, bool):
            other[name] = value
        elif isinstance(value, StatefulSchedule):
            scheduled[name] = value
        elif callable(value) and not isinstance(value, torch.Tensor):
            scheduled[name] = WrappedSchedule(value)
        elif isinstance(value, (int, float, torch.Tensor)):
            numeric[name] = value
        else:
            other[name] = value
    return scheduled, numeric, other


def _value(value: Any, dtype: torch.dtype, device: Any) -> Any:
    """A schedule's value as a 0-dim tensor of ``dtype`` (optax casts floating values)."""
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        value = value.to(dtype)
    return _as_hyper(value, dtype, device)


def _injected(factory, scheduled, numeric, other, hyperparam_dtype) -> GradientTransformation:
    def init(params):
        count = count_like(params)
        dtype = _hyper_dtype(hyperparam_dtype, params)
        hp = {k: _as_hyper(v, dtype, count.device) for k, v in numeric.items()}
        hp_states = {k: f.init() for k, f in scheduled.items()}
        hp.update({k: _value(f(hp_states[k]), dtype, count.device) for k, f in scheduled.items()})
        inner_state = factory(**other, **hp).init(params)
        return InjectStatefulHyperparamsState(count, hp, hp_states, inner_state)

    def update(updates, state, params=None, **extra_args):
        check_state(state, InjectStatefulHyperparamsState, _WHERE)
        dtype = _hyper_dtype(hyperparam_dtype, params if params is not None else updates)
        device = state.count.device
        hp = {k: _as_hyper(state.hyperparams[k], dtype, device) for k in numeric}
        for k, f in scheduled.items():
            hp[k] = _value(f(state.hyperparams_states[k], **extra_args), dtype, device)
        hp_states = {
            k: f.update(state.hyperparams_states[k], **extra_args) for k, f in scheduled.items()
        }
        inner = as_transformation(_WHERE, "the factory's result", factory(**other, **hp))
        updates, inner_state = _inner_update(inner, updates, state.inner_state, params, extra_args)
        count = safe_increment(state.count)
        return updates, InjectStatefulHyperparamsState(count, hp, hp_states, inner_state)

    return GradientTransformation(init, update)


def _inner_update(inner, updates, state, params, extra_args):
    """The inner update, given the extra arguments where it takes them (optax wraps it in
    ``with_extra_args_support``, which drops them for a plain update)."""
    if extra_args and _takes_extra(inner.update):
        return inner.update(updates, state, params, **extra_args)
    return inner.update(updates, state, params)


def _takes_extra(update: Callable) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
