"""Transformations of transformations: masking, per-label optimisers, hyperparameters as
state, and skipping non-finite steps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
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
    flatten_like,
    is_schedule,
)
from ._extra_args import mask_extra_args


class MaskedState(NamedTuple):
    """The state of :func:`masked`."""

    inner_state: Any
    """the state of the masked transformation, over the selected leaves only"""


class MultiTransformState(NamedTuple):
    """The state of :func:`multi_transform`."""

    inner_states: dict[str, Any]
    """label -> the state of that label's transformation"""


class InjectHyperparamsState(NamedTuple):
    """The state of :func:`inject_hyperparams`."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    hyperparams: dict[str, torch.Tensor]
    """name -> the current value (a 0-dim tensor); replace an entry to change it"""
    inner_state: Any
    """the state of the wrapped transformation"""


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite`."""

    notfinite_count: torch.Tensor
    """consecutive steps with a non-finite update (reset by a finite one), int64"""
    last_finite: torch.Tensor
    """whether the last step's updates were all finite, a bool tensor"""
    total_notfinite: torch.Tensor
    """steps with a non-finite update since init, int64"""
    inner_state: Any
    """the state of the wrapped transformation (unchanged by a non-finite step)"""


def _resolve(tree_or_fn: Any, params: Any) -> Any:
    return tree_or_fn(params) if callable(tree_or_fn) else tree_or_fn


def _labels(where: str, labels: Any, params: Any) -> list[Any]:
    """The leaves of ``labels`` (a tree like the params or a prefix of it, or a function
    of the params returning one), one per param leaf."""
    spec = pytree.tree_structure(params)
    tree = _resolve(labels, params)
    got = pytree._broadcast_to_and_flatten(tree, spec)
    if got is None:
        raise ValueError(
            f"{where}: the mask or labels must have the structure of the params or of a "
            f"prefix of it ({spec.num_leaves} leaves), got {type(tree).__name__}"
        )
    return got


def masked(
    inner: GradientTransformation, mask: Any, *, mask_compatible_extra_args: bool = False
) -> GradientTransformation:
    """Apply ``inner`` to the selected leaves only; the others' updates pass unchanged.

    Arguments:
        inner: the transformation for the selected leaves.
        mask: a pytree of bools like the params or a prefix of it (``{"encoder": True,
            "head": False}``), or a function of the params returning one (see
            ``fm.tree.map_with_path``).
        mask_compatible_extra_args: also select the leaves of the extra update
            arguments that have the structure of the updates (optax's flag).

    Returns:
        The transformation (a :class:`GradientTransformationExtraArgs`: extra update
            arguments go to ``inner`` if it takes them); its state holds ``inner``'s state
            over the selected leaves.
    """
    where = "fm.optim.masked"
    inner = as_transformation(where, "inner", inner)

    def selection(params: Any) -> list[bool]:
        flags = _labels(where, mask, params)
        bad = [f for f in flags if not isinstance(f, bool)]
        if bad:
            raise TypeError(f"{where}: mask leaves must be bools, got {type(bad[0]).__name__}")
        return flags

    def init(params):
        flags = selection(params)
        chosen = [p for p, f in zip(pytree.tree_leaves(params), flags, strict=True) if f]
        return MaskedState(inner.init(chosen))

    def update(updates, state, params=None, **extra_args):
        check_state(state, MaskedState, where)
        us, spec = pytree.tree_flatten(updates)
        flags = selection(params if params is not None else updates)
        ps = flatten_like(params, spec, "params", "the updates") if params is not None else None
        idx = [i for i, f in enumerate(flags) if f]
        chosen_ps = None if ps is None else [ps[i] for i in idx]

        def pick(tree):
            leaves = pytree.tree_leaves(tree)
            return [leaves[i] for i in idx]

        extra = mask_extra_args(extra_args, updates, pick, mask_compatible_extra_args)
        chosen = [us[i] for i in idx]
        new, inner_state = call_update(inner, chosen, state.inner_state, chosen_ps, extra)
        out = list(us)
        for i, u in zip(idx, new, strict=True):
            out[i] = u
        return pytree.tree_unflatten(out, spec), MaskedState(inner_state)

    return GradientTransformationExtraArgs(init, update)


def multi_transform(
    transforms: Mapping[str, GradientTransformation],
    param_labels: Any,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """A transformation per label: ``param_labels`` gives each param leaf a label, and
    the leaves of label ``l`` are updated by ``transforms[l]``.

    ``multi_transform({'train': adam(1e-3), 'frozen': set_to_zero()}, labels)`` freezes
    the leaves labelled ``'frozen'`` (their updates are zero, so they stay bit-identical).

    Arguments:
        transforms: label -> transformation.
        param_labels: a pytree of labels like the params, or a function of the params
            returning one (``fm.tree.map_with_path`` builds it from layer paths); a
            prefix of the params' structure labels whole subtrees.
        mask_compatible_extra_args: as :func:`masked`'s.

    Returns:
        A :class:`GradientTransformationExtraArgs` (extra update arguments go to the
            transformations that take them); its state is a :class:`MultiTransformState`.

    Raises:
        TypeError: ``transforms`` is not a non-empty dict of transformations.
        ValueError: a label of ``param_labels`` has no transformation.
    """
    where = "fm.optim.multi_transform"
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(f"{where}: transforms must be a non-empty dict of label -> transformation")
    transforms = {
        label: as_transformation(where, f"transforms[{label!r}]", t)
        for label, t in transforms.items()
    }

    def masks(params: Any) -> dict[str, list[bool]]:
        labels = _labels(where, param_labels, params)
        unknown = sorted({repr(lab) for lab in labels if lab not in transforms})
        if unknown:
            raise ValueError(
                f"{where}: labels {', '.join(unknown)} have no transformation; labels with one: "
                f"{sorted(transforms)}"
            )
        return {label: [lab == label for lab in labels] for label in transforms}

    def for_label(label: str, params: Any) -> GradientTransformation:
        flags = masks(params)[label]
        _, spec = pytree.tree_flatten(params)
        return masked(
            transforms[label],
            pytree.tree_unflatten(flags, spec),
            mask_compatible_extra_args=mask_compatible_extra_args,
        )

    def init(params):
        return MultiTransformState(
            {label: for_label(label, params).init(params) for label in transforms}
        )

    def update(updates, state, params=None, **extra_args):
        check_state(state, MultiTransformState, where)
        like = params if params is not None else updates
        new_states = {}
        for label in transforms:
            updates, new_states[label] = for_label(label, like).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, MultiTransformState(new_states)

    return GradientTransformationExtraArgs(init, update)


def factory_signature(
    where: str, inner_factory: Any, static_args: str | Iterable[str]
) -> tuple[inspect.Signature, set[str]]:
    """The factory's signature and the set of its static arguments, checked."""
    if not callable(inner_factory):
        raise TypeError(f"{where}: expected an optimiser factory, got {inner_factory!r}")
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not static <= set(signature.parameters):
        raise ValueError(
            f"{where}: static_args {sorted(static)} must name arguments of the factory, "
            f"which takes {list(signature.parameters)}"
        )
    return signature, static


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Make an optimiser's numeric hyperparameters part of its state, as optax's.

    ``opt = inject_hyperparams(adamw)(learning_rate=schedule, weight_decay=0.01)``: every
    numeric argument (defaults included) becomes a 0-dim tensor in ``state.hyperparams``,
    every callable is a schedule evaluated at each step and its value stored there too;
    bools, ``None``, dtypes, masks and the arguments named in ``static_args`` are passed as
    they are. A compiled training step then never recompiles when a value changes: put a
    new one in ``state.hyperparams`` (a number or a 0-dim tensor), or let a schedule
    change it. Numbers (ints too) and schedule values are held in ``hyperparam_dtype``
    (default: the widest floating dtype of the params); tensors are kept as given and cast
    to each leaf's dtype where used.

    Arguments:
        inner_factory: a function returning a GradientTransformation, such as
            ``fm.optim.adam``.
        static_args: names of arguments that are callables but not schedules (``mask``).
        hyperparam_dtype: the dtype of the hyperparameters held as tensors.

    Returns:
        A function taking ``inner_factory``'s arguments and returning the transformation.

    Raises:
        TypeError: a non-callable factory.
        ValueError: ``static_args`` not among its arguments.
    """
    signature, static = factory_signature("fm.optim.inject_hyperparams", inner_factory, static_args)

    @functools.wraps(inner_factory)
    def make(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        scheduled, numeric, other = _classify(bound.arguments, static)
        zero = torch.zeros((), dtype=torch.int64)
        # check every argument once, here, where errors belong
        inner_factory(**other, **numeric, **{k: f(zero) for k, f in scheduled.items()})
        return _injected(inner_factory, scheduled, numeric, other, hyperparam_dtype)

    return make


def _classify(arguments: Mapping[str, Any], static: set[str]):
    """Split bound arguments into (schedules, numbers and tensors, the rest)."""
    scheduled, numeric, other = {}, {}, {}
    for name, value in arguments.items():
        if name in static or isinstance(value, bool):
            other[name] = value
        elif is_schedule(value):
            scheduled[name] = value
        elif isinstance(value, (int, float, torch.Tensor)):
            numeric[name] = value
        else:
            other[name] = value
    return scheduled, numeric, other


def _hyper_dtype(given: torch.dtype | None, *trees: Any) -> torch.dtype:
    if given is not None:
        return given
    dtypes = [t.dtype for t in pytree.tree_leaves(trees) if t.dtype.is_floating_point]
    return functools.reduce(torch.promote_types, dtypes, dtypes[0]) if dtypes else torch.float32


def _as_hyper(value: Any, dtype: torch.dtype, device: Any) -> Any:
    """Numbers (and a schedule's values) as 0-dim tensors of ``dtype``; a tensor a user
    gave stays as it is (it is cast to each leaf's dtype where it is used)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=dtype, device=device)


def _injected(factory, scheduled, numeric, other, hyperparam_dtype) -> GradientTransformation:
    where = "fm.optim.inject_hyperparams"

    def values(count, current, dtype):
        hp = {k: _as_hyper(current[k], dtype, count.device) for k in numeric}
        for k, f in scheduled.items():
            value = f(count)
            if isinstance(value, torch.Tensor):
                value = value.to(dtype)
            hp[k] = _as_hyper(value, dtype, count.device)
        return hp

    def init(params):
        count = count_like(params)
        hp = values(count, numeric, _hyper_dtype(hyperparam_dtype, params))
        return InjectHyperparamsState(count, hp, factory(**other, **hp).init(params))

    def update(updates, state, params=None, **extra_args):
        check_state(state, InjectHyperparamsState, where)
        dtype = _hyper_dtype(hyperparam_dtype, params if params is not None else updates)
        hp = values(state.count, state.hyperparams, dtype)
        inner = as_transformation(where, "the factory's result", factory(**other, **hp))
        updates, inner_state = call_update(inner, updates, state.inner_state, params, extra_args)
        return updates, InjectHyperparamsState(state.count + 1, hp, inner_state)

    return GradientTransformationExtraArgs(init, update)


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip steps whose updates hold an inf or a NaN (zero updates, ``inner``'s state
    kept), unless more than ``max_consecutive_errors`` came in a row; as optax's.

    ``inner``'s update is computed every step and kept or not with ``torch.where`` (no
    data-dependent branch, so it runs under ``vmap`` and ``torch.compile``).

    Arguments:
        inner: the transformation to guard.
        max_consecutive_errors: how many non-finite steps in a row to skip.

    Returns:
        The transformation; its state is an :class:`ApplyIfFiniteState`.

    Raises:
        TypeError: ``max_consecutive_errors`` is not an int.
    """
    where = "fm.optim.apply_if_finite"
    inner = as_transformation(where, "inner", inner)
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int):
        raise TypeError(f"{where}: max_consecutive_errors must be an int")

    def init(params):
        zero = count_like(params)
        finite = torch.ones((), dtype=torch.bool, device=zero.device)
        return ApplyIfFiniteState(zero, finite, zero.clone(), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        check_state(state, ApplyIfFiniteState, where)
        leaves = pytree.tree_leaves(updates)
        finite = torch.ones((), dtype=torch.bool, device=state.notfinite_count.device)
        for u in leaves:
            finite = finite & torch.isfinite(u).all()
        errors = torch.where(
            finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1
        )
        new, inner_state = call_update(inner, updates, state.inner_state, params, extra_args)
        keep = finite | (errors > max_consecutive_errors)
        out = pytree.tree_map(lambda u: torch.where(keep, u, torch.zeros_like(u)), new)
        inner_state = _select(keep, inner_state, state.inner_state)
        total = torch.where(finite, state.total_notfinite, state.total_notfinite + 1)
        return out, ApplyIfFiniteState(errors, finite, total, inner_state)

    return GradientTransformationExtraArgs(init, update)


def _select(keep: torch.Tensor, new: Any, old: Any) -> Any:
    """``new`` where ``keep``, else ``old``, leaf by leaf (state leaves keep their dtype)."""

    def pick(a, b):
        if not isinstance(a, torch.Tensor):
            return a
        return torch.where(keep, a, b).to(b.dtype)

    return pytree.tree_map(pick, new, old)
