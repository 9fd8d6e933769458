"""optax's type names, for annotations: what a ported ``def step(params: optax.Params)``
writes as ``fm.optim.Params``.

They are annotations only (type aliases and ``typing.Protocol`` classes, as optax's), never
constructors. ``fm.optim.Params`` in particular is optax's "a pytree of tensors", not the
class :class:`funcmodels.Params` (a model's parameters with their spec): it is reachable as
``fm.optim.Params`` for ports but kept out of ``fm.optim.__all__``, so that
``from funcmodels.optim import *`` never rebinds ``Params`` to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

ArrayTree = torch.Tensor | float | int | Iterable["ArrayTree"] | Mapping[Any, "ArrayTree"]
"""A pytree of tensors (numbers allowed at leaves), optax's ``ArrayTree``."""

OptState = ArrayTree
"""An optimiser state: a pytree of tensors (usually named tuples of them)."""

Params = ArrayTree
"""Parameters as optax types them: any pytree of tensors (a dict, a
:class:`funcmodels.Params`, a tensor). Not the class ``funcmodels.Params``."""

Updates = ArrayTree
"""Gradients or updates: a pytree of tensors shaped as the params."""

ScheduleState = Any
"""The state of a :class:`StatefulSchedule` (any pytree)."""


class Schedule(Protocol):
    """A schedule: a function of the step count (a 0-dim integer tensor) to a value
    (optax's ``Schedule``, a ``Callable`` alias there; a protocol here, so it documents).

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(self, count: torch.Tensor) -> Any:
        """The value at ``count``.

        Arguments:
            count: the step count, a 0-dim integer tensor (or an int).

        Returns:
            The value, a number or a 0-dim tensor.
        """


ScalarOrSchedule = float | torch.Tensor | Schedule
"""A hyperparameter: a number, a 0-dim tensor or a :data:`Schedule`."""

MaskOrFn = Any | Callable[[Params], Any]
"""A mask (a pytree of bools shaped as the params, or a prefix of it) or a function of the
params returning one."""


class MaskedNode(NamedTuple):
    """A node with no children, which tree maps pass over: the place of a leaf left out
    of a masked tree, as optax's."""


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule that keeps a state: ``init()``, ``update(state, **extra_args)`` and
    ``__call__(state, **extra_args)`` giving the current value, as optax's.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def init(self) -> ScheduleState:
        """The schedule's first state.

        Returns:
            The state (any pytree of tensors).
        """

    def update(self, state: ScheduleState, **extra_args: Any) -> ScheduleState:
        """The state after one step.

        Arguments:
            state: the current state.
            **extra_args: what the optimiser's ``update`` was given beyond its three
                arguments.

        Returns:
            The new state.
        """

    def __call__(self, state: ScheduleState, **extra_args: Any) -> Any:
        """The schedule's value at ``state``.

        Arguments:
            state: the current state.
            **extra_args: what the optimiser's ``update`` was given beyond its three
                arguments.

        Returns:
            The value (a number or a 0-dim tensor).
        """


class TransformInitFn(Protocol):
    """The ``init`` of a GradientTransformation: ``init(params) -> state``.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(self, params: Params) -> OptState:
        """Make the first state.

        Arguments:
            params: the initial parameters.

        Returns:
            The transformation's state.
        """


class TransformUpdateFn(Protocol):
    """The ``update`` of a GradientTransformation:
    ``update(updates, state, params=None) -> (updates, state)``.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        """Transform one step's updates.

        Arguments:
            updates: the candidate updates (gradients).
            state: the transformation's state.
            params: the current parameters, where the transformation needs them.

        Returns:
            The transformed updates and the new state.
        """


class TransformUpdateExtraArgsFn(Protocol):
    """An ``update`` that also takes keyword arguments (``value=loss``, ...):
    ``update(updates, state, params=None, **extra_args) -> (updates, state)``.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(
        self,
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        """Transform one step's updates.

        Arguments:
            updates: the candidate updates (gradients).
            state: the transformation's state.
            params: the current parameters, where the transformation needs them.
            **extra_args: further keyword arguments; those not needed are ignored.

        Returns:
            The transformed updates and the new state.
        """


class ShouldSkipUpdateFunction(Protocol):
    """The test :class:`MultiSteps` takes as ``should_skip_update_fn``:
    ``fn(updates, gradient_step, params) -> (skip, skip_state)``.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(
        self, updates: Updates, gradient_step: torch.Tensor, params: Params | None
    ) -> tuple[torch.Tensor, ArrayTree]:
        """Whether to skip this step's updates.

        Arguments:
            updates: the updates the inner transformation proposed.
            gradient_step: the current gradient step (``MultiStepsState.gradient_step``).
            params: the current params, if known.

        Returns:
            A 0-dim bool tensor (skip or not) and a pytree kept in
            ``MultiStepsState.skip_state``.
        """


class ConditionFn(Protocol):
    """The condition of :func:`conditionally_transform` and :func:`conditionally_mask`:
    ``fn(step, **extra_args) -> bool tensor``.

    Arguments:
        *args (Any): none (an annotation, not instantiated).
        **kwargs (Any): none.
    """

    def __call__(self, step: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        """Whether the inner transformation runs at this step.

        Arguments:
            step: the step count, a 0-dim integer tensor.
            **extra_args: what the optimiser's ``update`` was given beyond its three
                arguments.

        Returns:
            A 0-dim bool tensor.
        """
