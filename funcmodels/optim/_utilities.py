"""optax's utilities: moment updates and bias correction over trees, safe norms and
counters, ``tree_map_params`` and the ``stateless`` constructors.

Tree functions take any pytree of tensors (:class:`funcmodels.Params` included) and return
one of the same structure; ``None`` leaves of the updates stay ``None`` as in optax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    as_transformation,
    init_empty_state,
)
from ._moments import _bias_correction
from ._more_common import hyper


def _map_updates(fn: Callable[..., Any], updates: Any, *rest: Any) -> Any:
    """``fn`` over the leaves of ``updates`` and ``rest``; ``None`` updates stay ``None``."""
    return pytree.tree_map(
        lambda u, *r: None if u is None else fn(u, *r), updates, *rest, is_leaf=lambda x: x is None
    )


def update_moment(updates: Any, moments: Any, decay: Any, order: int) -> Any:
    """The exponential moving average of the ``order``-th power of the updates:
    ``(1 - decay) * u**order + decay * m``, leaf by leaf.

    Arguments:
        updates: a pytree of tensors.
        moments: the averages so far, same structure.
        decay: a number or a 0-dim tensor (cast to each leaf's dtype).
        order: the power.

    Returns:
        The new averages, a pytree like ``updates``.
    """
    return _map_updates(
        lambda g, t: (1 - hyper(decay, g)) * (g**order) + hyper(decay, g) * t, updates, moments
    )


def update_infinity_moment(updates: Any, moments: Any, decay: Any, eps: Any) -> Any:
    """The exponentially weighted infinity norm: ``max(|u| + eps, decay * m)``, leaf by
    leaf.

    Arguments:
        updates: a pytree of tensors.
        moments: the norms so far, same structure.
        decay: a number or a 0-dim tensor.
        eps: a number or a 0-dim tensor, added to ``|u|``.

    Returns:
        The new norms, a pytree like ``updates``.
    """
    return _map_updates(
        lambda g, t: torch.maximum(g.abs() + hyper(eps, g), hyper(decay, g) * t), updates, moments
    )


def update_moment_per_elem_norm(updates: Any, moments: Any, decay: Any, order: int) -> Any:
    """The exponential moving average of the ``order``-th power of each element's norm
    (``|u|**order``; for real tensors ``u**order`` as optax computes it).

    Arguments:
        updates: a pytree of tensors.
        moments: the averages so far, same structure.
        decay: a number or a 0-dim tensor.
        order: the power.

    Returns:
        The new averages, a pytree like ``updates``.
    """

    def norm(g):
        if not g.is_complex():
            return g**order
        half = order / 2
        return (g.conj() * g).real ** (int(half) if float(half).is_integer() else half)

    return _map_updates(
        lambda g, t: (1 - hyper(decay, g)) * norm(g) + hyper(decay, g) * t, updates, moments
    )


def bias_correction(moment: Any, decay: Any, count: Any) -> Any:
    """Each leaf divided by ``1 - decay**count`` (computed in double precision, then cast
    to the leaf's dtype).

    Arguments:
        moment: a pytree of tensors.
        decay: a number or a 0-dim tensor.
        count: the step count, an int or a 0-dim integer tensor.

    Returns:
        A pytree like ``moment``.
    """
    count = torch.as_tensor(count)
    return _map_updates(lambda t: t / _bias_correction(hyper(decay, t), count, t.dtype), moment)


def safe_norm(
    x: torch.Tensor, min_norm: Any, ord: Any = None, axis: Any = None, keepdims: bool = False
) -> torch.Tensor:
    """``max(norm(x), min_norm)`` whose gradient is 0, not NaN, where the norm is at most
    ``min_norm`` (as optax's).

    Arguments:
        x: a tensor.
        min_norm: the floor, a number or a 0-dim tensor.
        ord: the norm's order (``torch.linalg.norm``'s; ``None``: the 2-norm of the
            flattened tensor, or of each vector/matrix along ``axis``).
        axis: ``None``, an int or a pair of ints.
        keepdims: keep the reduced dimensions as size 1.

    Returns:
        The floored norm (a 0-dim tensor, or reduced along ``axis``).
    """
    dim = axis if axis is None or isinstance(axis, int) else tuple(axis)
    norm = torch.linalg.norm(x, ord=ord, dim=dim, keepdim=True)
    floor = hyper(min_norm, norm)
    masked = torch.where(norm <= floor, torch.ones_like(x), x)
    if not keepdims:
        norm = norm.reshape(()) if dim is None else norm.squeeze(dim)
    masked_norm = torch.linalg.norm(masked, ord=ord, dim=dim, keepdim=keepdims)
    return torch.where(norm <= floor, floor, masked_norm)


def safe_root_mean_squares(x: torch.Tensor, min_rms: Any) -> torch.Tensor:
    """``max(sqrt(mean(|x|**2)), min_rms)`` whose gradient is 0, not NaN, below the floor.

    Arguments:
        x: a tensor.
        min_rms: the floor, a number or a 0-dim tensor.

    Returns:
        A 0-dim tensor.
    """
    rms = torch.sqrt(torch.mean(_abs_sq(x)))
    floor = hyper(min_rms, rms)
    masked = torch.where(rms <= floor, torch.ones_like(x), x)
    return torch.where(rms <= floor, floor, torch.sqrt(torch.mean(_abs_sq(masked))))


def _abs_sq(x: torch.Tensor) -> torch.Tensor:
    return (x.conj() * x).real if x.is_complex() else x * x


def safe_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, staying at the dtype's largest value instead of overflowing.

    Arguments:
        count: a 0-dim integer or floating tensor.

    Returns:
        A tensor of ``count``'s dtype.

    Raises:
        TypeError: a tensor of another dtype (bool, complex).
    """
    count = torch.as_tensor(count)
    if count.dtype.is_floating_point:
        top = torch.finfo(count.dtype).max
    elif count.dtype in (torch.bool,) or count.dtype.is_complex:
        raise TypeError(f"fm.optim.safe_increment: cannot count in {count.dtype}")
    else:
        top = torch.iinfo(count.dtype).max
    return torch.where(count < top, count + 1, count)


def safe_int32_increment(count: torch.Tensor) -> torch.Tensor:
    """:func:`safe_increment` for an int32 count (optax's older name).

    Arguments:
        count: a 0-dim int32 tensor.

    Returns:
        An int32 tensor.

    Raises:
        TypeError: ``count`` is not int32.
    """
    count = torch.as_tensor(count)
    if count.dtype != torch.int32:
        raise TypeError(
            f"fm.optim.safe_int32_increment: expected an int32 count, got {count.dtype}"
        )
    return safe_increment(count)


class _ParamsPlaceholder:
    """Stands for the params in :func:`tree_map_params`: a pytree node without children,
    so an ``init`` maps over it and leaves it where the params' trees go."""


pytree.register_pytree_node(
    _ParamsPlaceholder,
    lambda p: ([], None),
    lambda children, context: _ParamsPlaceholder(),
    serialized_type_name="funcmodels.optim._ParamsPlaceholder",
)


def tree_map_params(
    initable: Any,
    f: Callable[..., Any],
    state: Any,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Apply ``f`` to the parts of an optimiser state that are trees like the params (the
    moments), leaving the rest (counts) alone or passing it to ``transform_non_params``.

    Arguments:
        initable: the optimiser (anything with ``init``) or its ``init`` function.
        f: applied to each leaf of the params-like trees (with the leaves of ``rest``).
        state: a state made by ``initable``'s ``init``.
        *rest: trees like the params, mapped along with the state's params-like trees.
        transform_non_params: applied to every other leaf of the state.
        is_leaf: passed to the map over the params-like trees.

    Returns:
        A state of the same structure.
    """
    init = getattr(initable, "init", initable)
    skeleton = init(_ParamsPlaceholder())

    def visit(marker, value):
        if isinstance(marker, _ParamsPlaceholder):
            return pytree.tree_map(f, value, *rest, is_leaf=is_leaf)
        return transform_non_params(value) if transform_non_params is not None else value

    return pytree.tree_map(
        visit, skeleton, state, is_leaf=lambda v: isinstance(v, _ParamsPlaceholder)
    )


def stateless(f: Callable[[Any, Any], Any]) -> GradientTransformation:
    """A transformation keeping no state from ``f(updates, params) -> updates``.

    Arguments:
        f: a function of the updates and the params (``None`` when not given).

    Returns:
        A GradientTransformation; its state is :class:`EmptyState`.
    """

    def update(updates, state, params=None):
        return f(updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update)


def stateless_with_tree_map(
    f: Callable[[torch.Tensor, Any], torch.Tensor],
) -> GradientTransformation:
    """A transformation keeping no state from ``f(update leaf, param leaf or None)``,
    mapped over the leaves.

    Arguments:
        f: a function of one update leaf and its param leaf (``None`` without params).

    Returns:
        A GradientTransformation; its state is :class:`EmptyState`.
    """

    def update(updates, state, params=None):
        if params is not None:
            return pytree.tree_map(f, updates, params), EmptyState()
        return pytree.tree_map(lambda u: f(u, None), updates), EmptyState()

    return GradientTransformation(init_empty_state, update)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """``tx`` as a :class:`GradientTransformationExtraArgs`: returned as it is when it is
    one, else with an ``update`` that accepts extra keyword arguments and drops them (as
    optax's).

    Arguments:
        tx: a GradientTransformation (or an object with ``init`` and ``update``).

    Returns:
        A GradientTransformationExtraArgs with the same ``init`` and state.

    Raises:
        TypeError: ``tx`` is not a transformation.
    """
    tx = as_transformation("fm.optim.with_extra_args_support", "tx", tx)
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx

    def update(updates, state, params=None, **extra_args):
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)
