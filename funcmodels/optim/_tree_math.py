"""optax.tree's arithmetic over torch pytrees: sums, products, inner products, norms,
reductions and tree constructors, leaf by leaf.

A tree is any pytree of tensors (dicts, lists, tuples, NamedTuples, :class:`funcmodels.Params`
and the optimiser states); results are new trees of the same structure, never the inputs
modified. Two-tree functions need trees of one structure (torch's pytree raises otherwise).
"""

from __future__ import annotations

import builtins
import functools
import operator
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._more_common import hyper


def _leaves(tree: Any) -> list[Any]:
    return pytree.tree_leaves(tree)


def add(tree_x: Any, tree_y: Any, *other_trees: Any) -> Any:
    """Add two (or more) trees, leaf by leaf.

    Arguments:
        tree_x: the first tree.
        tree_y: the second tree, same structure.
        *other_trees: more trees to add, same structure.

    Returns:
        The sum, a tree like ``tree_x``.
    """
    return pytree.tree_map(lambda *leaves: builtins.sum(leaves), tree_x, tree_y, *other_trees)


def sub(tree_x: Any, tree_y: Any) -> Any:
    """Subtract two trees, leaf by leaf: ``tree_x - tree_y``.

    Arguments:
        tree_x: the first tree.
        tree_y: the second tree, same structure.

    Returns:
        The difference, a tree like ``tree_x``.
    """
    return pytree.tree_map(operator.sub, tree_x, tree_y)


def mul(tree_x: Any, tree_y: Any) -> Any:
    """Multiply two trees, leaf by leaf.

    Arguments:
        tree_x: the first tree.
        tree_y: the second tree, same structure.

    Returns:
        The product, a tree like ``tree_x``.
    """
    return pytree.tree_map(operator.mul, tree_x, tree_y)


def div(tree_x: Any, tree_y: Any) -> Any:
    """Divide two trees, leaf by leaf: ``tree_x / tree_y``.

    Arguments:
        tree_x: the numerators.
        tree_y: the denominators, same structure.

    Returns:
        The quotient, a tree like ``tree_x``.
    """
    return pytree.tree_map(operator.truediv, tree_x, tree_y)


def scale(scalar: Any, tree: Any) -> Any:
    """Multiply a tree by a scalar: ``scalar * tree``.

    Arguments:
        scalar: a number or a 0-dim tensor.
        tree: a tree of tensors.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(lambda x: scalar * x, tree)


def add_scale(tree_x: Any, scalar: Any, tree_y: Any) -> Any:
    """``tree_x + scalar * tree_y``, leaf by leaf; ``None`` leaves of ``tree_x`` stay
    ``None``.

    Arguments:
        tree_x: the first tree.
        scalar: a number or a 0-dim tensor.
        tree_y: the tree scaled, same structure.

    Returns:
        A tree like ``tree_x``.
    """
    return pytree.tree_map(
        lambda x, y: None if x is None else x + scalar * y,
        tree_x,
        tree_y,
        is_leaf=lambda x: x is None,
    )


def _vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(
            f"fm.optim.tree.vdot: leaves of one shape expected, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.vdot(a.reshape(-1).to(dtype), b.reshape(-1).to(dtype))


def vdot(tree_x: Any, tree_y: Any) -> Any:
    """The inner product of two trees: the sum over leaves of ``vdot(x, y)`` (``x``
    conjugated when complex).

    Arguments:
        tree_x: the first tree.
        tree_y: the second tree, same structure and leaf shapes.

    Returns:
        A 0-dim tensor (the int ``0`` for trees without leaves).

    Raises:
        ValueError: if two leaves differ in shape.
    """
    return functools.reduce(operator.add, _leaves(pytree.tree_map(_vdot, tree_x, tree_y)), 0)


def sum(tree: Any, associative_reduction: bool = False) -> Any:  # noqa: A001
    """The sum of all the elements of a tree.

    Arguments:
        tree: a tree of tensors.
        associative_reduction: sum the leaves' sums pairwise (a balanced tree) rather than
            left to right, as optax's option does; the result may differ in the last bits.

    Returns:
        A 0-dim tensor (the int ``0`` for a tree without leaves).
    """
    sums = [torch.sum(torch.as_tensor(x)) for x in _leaves(tree)]
    if not associative_reduction:
        return functools.reduce(operator.add, sums, 0)
    while len(sums) > 1:
        pairs = [sums[i] + sums[i + 1] for i in range(0, len(sums) - 1, 2)]
        sums = pairs + sums[len(pairs) * 2 :]
    return sums[0] if sums else 0


def _extreme(tree: Any, reduce: Any, combine: Any, start: float) -> torch.Tensor:
    values = [reduce(torch.as_tensor(x)) for x in _leaves(tree) if torch.as_tensor(x).numel()]
    if not values:
        return torch.tensor(start)
    out = functools.reduce(combine, values)
    # optax starts the reduction from a Python float, which makes integer results floats
    return out if out.is_floating_point() else out.to(torch.get_default_dtype())


def max(tree: Any) -> torch.Tensor:  # noqa: A001
    """The largest element of a tree (empty leaves are skipped).

    Arguments:
        tree: a tree of real tensors.

    Returns:
        A 0-dim floating tensor; ``-inf`` for a tree without elements.
    """
    return _extreme(tree, torch.max, torch.maximum, -float("inf"))


def min(tree: Any) -> torch.Tensor:  # noqa: A001
    """The smallest element of a tree (empty leaves are skipped).

    Arguments:
        tree: a tree of real tensors.

    Returns:
        A 0-dim floating tensor; ``inf`` for a tree without elements.
    """
    return _extreme(tree, torch.min, torch.minimum, float("inf"))


def size(tree: Any) -> int:
    """The number of elements of a tree.

    Arguments:
        tree: a tree of tensors.

    Returns:
        An int, the sum of the leaves' ``numel()``.
    """
    return builtins.sum(torch.as_tensor(x).numel() for x in _leaves(tree))


def conj(tree: Any) -> Any:
    """The complex conjugate of each leaf (a copy for real leaves).

    Arguments:
        tree: a tree of tensors.

    Returns:
        A tree like ``tree``, of new tensors.
    """
    return pytree.tree_map(torch.conj_physical, tree)


def real(tree: Any) -> Any:
    """The real part of each leaf (a copy for real leaves).

    Arguments:
        tree: a tree of tensors.

    Returns:
        A tree like ``tree``, of new real tensors.
    """
    return pytree.tree_map(lambda x: torch.real(x).clone(), tree)


def _square(x: torch.Tensor) -> torch.Tensor:
    return x.real.square() + x.imag.square() if x.is_complex() else x.square()


def norm(tree: Any, ord: int | str | float | None = None, squared: bool = False) -> torch.Tensor:  # noqa: A002
    """The vector norm of a tree, all its elements taken as one vector.

    Arguments:
        tree: a tree of tensors.
        ord: ``None`` or ``2`` (Euclidean), ``1``, or ``inf`` (``float("inf")``, ``"inf"``
            or ``"infinity"``).
        squared: return the norm squared.

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: for another ``ord``.
    """
    if ord is None or ord == 2:
        sqnorm = torch.as_tensor(sum(pytree.tree_map(_square, tree)))
        return sqnorm if squared else sqnorm.sqrt()
    if ord == 1:
        out = torch.as_tensor(sum(pytree.tree_map(torch.abs, tree)))
    elif ord == float("inf") or ord in ("inf", "infinity"):
        out = max(pytree.tree_map(torch.abs, tree))
    else:
        raise ValueError(f"fm.optim.tree.norm: ord must be None, 1, 2 or inf, got {ord!r}")
    return _square(out) if squared else out


def batch_shape(tree: Any, shape: tuple[int, ...] = ()) -> Any:
    """Add leading batch dimensions to each leaf, by broadcasting.

    Arguments:
        tree: a tree of tensors.
        shape: the leading dimensions to add.

    Returns:
        A tree like ``tree`` whose leaves have shape ``(*shape, *leaf.shape)``, broadcast
            views of the leaves (no copy; torch refuses writes into them in place).
    """
    return pytree.tree_map(lambda x: torch.broadcast_to(x, (*shape, *x.shape)), tree)


def zeros_like(tree: Any, dtype: torch.dtype | None = None) -> Any:
    """A tree of zeros with the structure, shapes and (unless ``dtype``) dtypes of ``tree``.

    Arguments:
        tree: a tree of tensors.
        dtype: the dtype of every leaf, or ``None`` to keep each leaf's.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def ones_like(tree: Any, dtype: torch.dtype | None = None) -> Any:
    """A tree of ones with the structure, shapes and (unless ``dtype``) dtypes of ``tree``.

    Arguments:
        tree: a tree of tensors.
        dtype: the dtype of every leaf, or ``None`` to keep each leaf's.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def _full(x: torch.Tensor, fill_value: Any, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(fill_value, torch.Tensor):
        return torch.empty_like(x, dtype=dtype).copy_(fill_value)
    return torch.full_like(x, fill_value, dtype=dtype)


def full_like(tree: Any, fill_value: Any, dtype: torch.dtype | None = None) -> Any:
    """A tree like ``tree`` with every element ``fill_value``.

    Arguments:
        tree: a tree of tensors.
        fill_value: a number, or a tensor broadcast to each leaf's shape.
        dtype: the dtype of every leaf, or ``None`` to keep each leaf's.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(lambda x: _full(x, fill_value, dtype), tree)


def _clip(g: torch.Tensor, low: Any, high: Any) -> torch.Tensor:
    if low is None and high is None:
        return g.clone()
    return torch.clamp(g, hyper(low, g), hyper(high, g))


def clip(tree: Any, min_value: Any = None, max_value: Any = None) -> Any:
    """Clip every element to ``[min_value, max_value]``.

    Arguments:
        tree: a tree of tensors.
        min_value: the lower bound (a number or a tensor cast to each leaf's dtype), or
            ``None`` for none.
        max_value: the upper bound, or ``None`` for none.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(lambda g: _clip(g, min_value, max_value), tree)


def where(condition: Any, tree_x: Any, tree_y: Any) -> Any:
    """Select ``tree_x``'s elements where ``condition`` holds, else ``tree_y``'s.

    Arguments:
        condition: a bool or a boolean tensor broadcastable to every leaf.
        tree_x: the tree chosen where ``condition`` is true.
        tree_y: the tree chosen elsewhere, same structure.

    Returns:
        A tree like ``tree_x``.
    """

    def pick(x, y):
        cond = torch.as_tensor(condition, device=torch.as_tensor(x).device)
        return torch.where(cond, x, y)

    return pytree.tree_map(pick, tree_x, tree_y)


def _isclose(a: Any, b: Any, rtol: Any, atol: Any, equal_nan: bool) -> torch.Tensor:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    close = torch.isclose(a.to(dtype), b.to(dtype), rtol=rtol, atol=atol, equal_nan=equal_nan)
    return close.all()


def allclose(
    a: Any, b: Any, rtol: Any = 1e-05, atol: Any = 1e-08, equal_nan: bool = False
) -> torch.Tensor:
    """Whether two trees are equal elementwise within ``atol + rtol * |b|``.

    Arguments:
        a: a tree.
        b: a tree of the same structure (leaves broadcast against ``a``'s).
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        equal_nan: count NaNs in the same place as equal.

    Returns:
        A 0-dim boolean tensor (usable in ``if``).
    """
    closes = _leaves(pytree.tree_map(lambda x, y: _isclose(x, y, rtol, atol, equal_nan), a, b))
    return functools.reduce(operator.and_, closes, torch.tensor(True))
