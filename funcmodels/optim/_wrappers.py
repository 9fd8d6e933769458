"""Transformations of transformations: masking, per-label optimisers, hyperparameters as
state, and gradient accumulation."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    GradientTransformation,
    check_state,
    count_like,
    flatten_like,
    is_schedule,
    zeros_like_tree,
)


class MaskedState(NamedTuple):
    inner_state: Any
    """the state of the masked transformation, over the selected leaves only"""


class MultiTransformState(NamedTuple):
    inner_states: dict[str, Any]
    """label -> the state of that label's transformation"""


class InjectHyperparamsState(NamedTuple):
    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    hyperparams: dict[str, torch.Tensor]
    """name -> the current value (a 0-dim tensor); replace an entry to change it"""
    inner_state: Any


class ApplyEveryState(NamedTuple):
    count: torch.Tensor
    grad_acc: Any


class MultiStepsState(NamedTuple):
    mini_step: torch.Tensor
    """micro-batches accumulated since the last update, a 0-dim int64 tensor"""
    inner_state: Any
    acc_grads: Any
    """the sum of the gradients accumulated so far"""


def _resolve(tree_or_fn: Any, params: Any) -> Any:
    return tree_or_fn(params) if callable(tree_or_fn) else tree_or_fn


def _labels(where: str, labels: Any, params: Any) -> list[Any]:
    """The leaves of ``labels`` (a tree or a function of the params), one per param leaf."""
    ps, spec = pytree.tree_flatten(params)
    tree = _resolve(labels, params)
    # Labels (bools, strings) may sit in a Params/State or plain container: flatten with
    # the params' structure, treating each label as a leaf.
    got = pytree.tree_flatten(tree)[0] if pytree.tree_structure(tree) == spec else None
    if got is None:
        raise ValueError(
            f"{where}: the mask or labels must have the structure of the params "
            f"({spec.num_leaves} leaves), got {type(tree).__name__}"
        )
    return got


def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Apply ``inner`` to the selected leaves only; the others' updates pass unchanged.

    Arguments:
        inner: the transformation for the selected leaves.
        mask: a pytree of bools like the params, or a function of the params returning
            one (see ``fm.tree.map_with_path``).
    """
    where = "fm.optim.masked"
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"{where}: inner must be a GradientTransformation, got {inner!r}")

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

    def update(updates, state, params=None):
        check_state(state, MaskedState, where)
        us, spec = pytree.tree_flatten(updates)
        flags = selection(params if params is not None else updates)
        ps = flatten_like(params, spec, "params", "the updates") if params is not None else None
        idx = [i for i, f in enumerate(flags) if f]
        chosen_ps = None if ps is None else [ps[i] for i in idx]
        new, inner_state = inner.update([us[i] for i in idx], state.inner_state, chosen_ps)
        out = list(us)
        for i, u in zip(idx, new, strict=True):
            out[i] = u
        return pytree.tree_unflatten(out, spec), MaskedState(inner_state)

    return GradientTransformation(init, update)


def multi_transform(
    transforms: Mapping[str, GradientTransformation], param_labels: Any
) -> GradientTransformation:
    """A transformation per label: ``param_labels`` gives each param leaf a label, and
    the leaves of label ``l`` are updated by ``transforms[l]``.

    ``multi_transform({'train': adam(1e-3), 'frozen': set_to_zero()}, labels)`` freezes
    the leaves labelled ``'frozen'`` (their updates are zero, so they stay bit-identical).

    Arguments:
        transforms: label -> transformation.
        param_labels: a pytree of labels like the params, or a function of the params
            returning one (``fm.tree.map_with_path`` builds it from layer paths).
    """
    where = "fm.optim.multi_transform"
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(f"{where}: transforms must be a non-empty dict of label -> transformation")
    for label, t in transforms.items():
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"{where}: transforms[{label!r}] must be a GradientTransformation")

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
        return masked(transforms[label], pytree.tree_unflatten(flags, spec))

    def init(params):
        return MultiTransformState(
            {label: for_label(label, params).init(params) for label in transforms}
        )

    def update(updates, state, params=None):
        check_state(state, MultiTransformState, where)
        like = params if params is not None else updates
        new_states = {}
        for label in transforms:
            updates, new_states[label] = for_label(label, like).update(
                updates, state.inner_states[label], params
            )
        return updates, MultiTransformState(new_states)

    return GradientTransformation(init, update)


def inject_hyperparams(
    factory: Callable[..., GradientTransformation],
) -> Callable[..., GradientTransformation]:
    """Make an optimiser's numeric hyperparameters part of its state.

    ``opt = inject_hyperparams(adamw)(lr=schedule, weight_decay=0.01)``: numbers and
    tensors become 0-dim tensors in ``state.hyperparams``, schedules are evaluated at each
    step and their values stored there too, other arguments (``betas`` pairs, flags) are
    passed as they are. A compiled training step then never recompiles when a value
    changes: replace it with ``state._replace(hyperparams={**state.hyperparams, 'lr':
    torch.tensor(1e-4)})``, or let a schedule change it.

    Arguments:
        factory: a function returning a GradientTransformation, such as ``fm.optim.adam``.

    Returns:
        a function taking the factory's arguments and returning the transformation.
    """
    if not callable(factory):
        raise TypeError(
            f"fm.optim.inject_hyperparams: expected an optimiser factory, got {factory!r}"
        )

    def make(*args: Any, **kwargs: Any) -> GradientTransformation:
        if args:
            raise TypeError("fm.optim.inject_hyperparams: pass the hyperparameters by name")
        numeric = {
            k: v
            for k, v in kwargs.items()
            if is_schedule(v)
            or isinstance(v, torch.Tensor)
            or (isinstance(v, numbers.Real) and not isinstance(v, bool))
        }
        static = {k: v for k, v in kwargs.items() if k not in numeric}
        factory(**kwargs)  # check every argument once, here, where errors belong

        def values(
            count: torch.Tensor, current: dict[str, torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            return {
                k: torch.as_tensor(v(count), dtype=torch.float64, device=count.device)
                if is_schedule(v)
                else current[k]
                for k, v in numeric.items()
            }

        def init(params):
            count = count_like(params)
            start = {
                k: torch.as_tensor(
                    v(count) if is_schedule(v) else v, dtype=torch.float64, device=count.device
                )
                for k, v in numeric.items()
            }
            return InjectHyperparamsState(count, start, factory(**start, **static).init(params))

        def update(updates, state, params=None):
            check_state(state, InjectHyperparamsState, "fm.optim.inject_hyperparams")
            hp = values(state.count, state.hyperparams)
            inner = factory(**hp, **static)
            updates, inner_state = inner.update(updates, state.inner_state, params)
            return updates, InjectHyperparamsState(state.count + 1, hp, inner_state)

        return GradientTransformation(init, update)

    return make


def apply_every(k: int = 1) -> GradientTransformation:
    """Accumulate updates and emit their sum every ``k`` steps (zeros in between).

    Put it last in a chain (after the learning rate) to apply the summed steps of ``k``
    micro-batches at once; :func:`multi_steps` is the usual gradient accumulation.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"fm.optim.apply_every: k must be a positive int, got {k!r}")

    def init(params):
        return ApplyEveryState(count_like(params), zeros_like_tree(params))

    def update(updates, state, params=None):
        check_state(state, ApplyEveryState, "fm.optim.apply_every")
        us, spec = pytree.tree_flatten(updates)
        acc = flatten_like(state.grad_acc, spec, "accumulated updates", "the updates")
        fresh = state.count % k == 0
        acc = [torch.where(fresh, u, a + u) for a, u in zip(acc, us, strict=True)]
        emit = state.count % k == k - 1
        out = [torch.where(emit, a, torch.zeros_like(a)) for a in acc]
        new = ApplyEveryState(state.count + 1, pytree.tree_unflatten(acc, spec))
        return pytree.tree_unflatten(out, spec), new

    return GradientTransformation(init, update)


def multi_steps(inner: GradientTransformation, every_k: int) -> GradientTransformation:
    """Gradient accumulation: average the gradients of ``every_k`` micro-batches, then
    take one step of ``inner`` on the average (zero updates in between, ``inner``'s state
    unchanged).

    Every call computes ``inner``'s update and keeps it or not with ``torch.where``, so a
    step has no data-dependent branch (``vmap`` and ``torch.compile`` need none); for
    Adam-like optimisers that costs a few elementwise passes per micro-batch.
    """
    where = "fm.optim.multi_steps"
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"{where}: inner must be a GradientTransformation, got {inner!r}")
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"{where}: every_k must be a positive int, got {every_k!r}")

    def init(params):
        return MultiStepsState(count_like(params), inner.init(params), zeros_like_tree(params))

    def update(updates, state, params=None):
        check_state(state, MultiStepsState, where)
        us, spec = pytree.tree_flatten(updates)
        acc = [
            a + u
            for a, u in zip(
                flatten_like(state.acc_grads, spec, "accumulated gradients", "the updates"),
                us,
                strict=True,
            )
        ]
        emit = state.mini_step + 1 == every_k
        mean = pytree.tree_unflatten([a / every_k for a in acc], spec)
        stepped, stepped_state = inner.update(mean, state.inner_state, params)

        def pick(new, old):
            return torch.where(emit, new, old) if isinstance(new, torch.Tensor) else new

        out = pytree.tree_map(lambda u: torch.where(emit, u, torch.zeros_like(u)), stepped)
        inner_state = pytree.tree_map(pick, stepped_state, state.inner_state)
        acc = [torch.where(emit, torch.zeros_like(a), a) for a in acc]
        mini = torch.where(emit, torch.zeros_like(state.mini_step), state.mini_step + 1)
        return out, MultiStepsState(mini, inner_state, pytree.tree_unflatten(acc, spec))

    return GradientTransformation(init, update)
