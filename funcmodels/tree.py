"""Public tree tools, as ``jax.tree_util`` and Equinox's ``partition``/``combine``.

Trees are any nesting of dicts, lists, tuples, named tuples and funcmodels'
:class:`~funcmodels.Params` / :class:`~funcmodels.State` (with tensors, or anything else,
at the leaves); flattening is ``torch.utils._pytree``'s, the one ``torch.func`` uses. A
leaf's *path* is a dotted string: the dotted name of a Params/State entry (``'0.weight'``),
dict keys and sequence positions joined by dots for containers (``'1.0.weight'`` for the
params in ``(state, params)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._spec import Spec
from ._tree import HOLE, Params, _Tree
from ._tree_at import _paths, at
from .nn._stack import Stack

__all__ = [
    "HOLE",
    "at",
    "combine",
    "index",
    "leaves",
    "map",
    "map_with_path",
    "partition",
    "ravel",
    "stack",
    "structure",
    "unstack",
]

Predicate = Callable[[str, Any], bool] | type | tuple[type, ...]


def map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:  # noqa: A001 (jax's name)
    """``fn`` applied to the leaves of ``tree`` (and the matching leaves of ``rest``);
    the result has ``tree``'s structure (Params keep their spec).

    Arguments:
        fn: ``fn(leaf, *other_leaves)``, returning the new leaf.
        tree: any tree.
        *rest: trees of ``tree``'s structure, whose leaves are passed alongside.

    Returns:
        A tree of ``tree``'s structure holding ``fn``'s results.
    """
    return pytree.tree_map(fn, tree, *rest)


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Like :func:`map`, ``fn(path, leaf, *other_leaves)`` with the leaf's dotted path.

    Arguments:
        fn: ``fn(path, leaf, *other_leaves)``, returning the new leaf; ``path`` is the
            dotted path (``'0.weight'``).
        tree: any tree.
        *rest: trees of ``tree``'s structure, whose leaves are passed alongside.

    Returns:
        A tree of ``tree``'s structure holding ``fn``'s results.

    Raises:
        ValueError: a tree of ``rest`` has another structure.
    """
    leaves_, spec = pytree.tree_flatten(tree)
    others = [pytree.tree_flatten(r)[0] for r in rest]
    for r, o in zip(rest, others, strict=True):
        if len(o) != len(leaves_) or pytree.tree_structure(r) != spec:
            raise ValueError("fm.tree.map_with_path: the trees do not have the same structure")
    out = [fn(p, *ls) for p, *ls in zip(_paths(tree), leaves_, *others, strict=True)]
    return pytree.tree_unflatten(out, spec)


def leaves(tree: Any) -> list[Any]:
    """The leaves of ``tree``, in order (``state_dict`` order for Params).

    Arguments:
        tree: any tree.

    Returns:
        The list of leaves.
    """
    return pytree.tree_leaves(tree)


def structure(tree: Any) -> pytree.TreeSpec:
    """The structure of ``tree`` (``pytree.tree_unflatten(leaves, structure)`` rebuilds it).

    Arguments:
        tree: any tree.

    Returns:
        torch's ``TreeSpec`` of ``tree``; Params and State keep their spec in it.
    """
    return pytree.tree_structure(tree)


def ravel(tree: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """All leaves as one flat vector, and the function that rebuilds the tree from one.

    The vector has the leaves' common dtype (``torch.result_type`` rules) and the first
    leaf's device; ``unravel`` casts each part back to its leaf's dtype and shape. As
    ``jax.flatten_util.ravel_pytree``.

    Arguments:
        tree: a tree whose leaves are all tensors.

    Returns:
        ``(flat, unravel)``; ``unravel(flat)`` equals ``tree``.

    Raises:
        TypeError: a leaf is not a tensor.
    """
    leaves_, spec = pytree.tree_flatten(tree)
    if not all(isinstance(t, torch.Tensor) for t in leaves_):
        raise TypeError("fm.tree.ravel: every leaf must be a tensor")
    shapes = [t.shape for t in leaves_]
    dtypes = [t.dtype for t in leaves_]
    sizes = [t.numel() for t in leaves_]
    if leaves_:
        dtype = leaves_[0].dtype
        for t in leaves_[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        flat = torch.cat([t.reshape(-1).to(dtype) for t in leaves_])
    else:
        flat = torch.zeros(0)

    def unravel(vector: torch.Tensor) -> Any:
        if vector.dim() != 1 or vector.shape[0] != sum(sizes):
            raise ValueError(
                f"fm.tree.ravel: unravel expects a vector of {sum(sizes)} values, got shape "
                f"{tuple(vector.shape)}"
            )
        parts = torch.split(vector, sizes) if sizes else []
        out = [p.reshape(s).to(d) for p, s, d in zip(parts, shapes, dtypes, strict=True)]
        return pytree.tree_unflatten(out, spec)

    return flat, unravel


def _owner_types(tree: Any) -> list[Spec | None]:
    """For each leaf, the spec of the layer that owns it (``None`` outside Params/State)."""
    out: list[Spec | None] = []
    for node in pytree.tree_leaves(tree, is_leaf=lambda n: isinstance(n, _Tree)):
        if not isinstance(node, _Tree):
            out.append(None)
            continue
        owners = {}
        for prefix, s in node.spec.walk():
            own = s.param_shapes() if isinstance(node, Params) else s.state_shapes()
            owners.update((prefix + n, s) for n in own)
        out.extend(owners.get(k) for k, v in node._flat.items() if v is not HOLE)
    return out


def _selection(tree: Any, predicate: Predicate, where: str) -> list[bool]:
    if isinstance(predicate, type) or (
        isinstance(predicate, tuple) and all(isinstance(t, type) for t in predicate)
    ):
        owners = _owner_types(tree)
        return [owner is not None and isinstance(owner, predicate) for owner in owners]
    if not callable(predicate):
        raise TypeError(
            f"{where}: predicate must be a function (path, leaf) -> bool or a layer type, got "
            f"{predicate!r}"
        )
    out = []
    for path, leaf in zip(_paths(tree), pytree.tree_leaves(tree), strict=True):
        flag = predicate(path, leaf)
        if not isinstance(flag, bool):
            raise TypeError(f"{where}: the predicate must return a bool, got {flag!r} for '{path}'")
        out.append(flag)
    return out


def partition(tree: Any, predicate: Predicate) -> tuple[Any, Any]:
    """Split ``tree`` into the selected leaves and the rest, as Equinox's ``partition``.

    Arguments:
        tree: params (or any tree).
        predicate: ``predicate(path, leaf) -> bool`` on the dotted path
            (``lambda path, t: path.startswith('head')``), or a layer type (or a tuple of
            them): the tensors owned by layers of that type (``fm.nn.BatchNorm2d``).

    Returns:
        ``(selected, rest)``: two trees of ``tree``'s structure, each with :data:`HOLE` in
            place of the other's leaves. A hole is no leaf to ``torch.func`` or an optimiser:
            ``grad(loss)(selected, rest)`` differentiates the selected ones only, with
            ``loss`` calling ``fm.apply(fm.tree.combine(selected, rest), x)``, and
            ``opt.init(selected)`` keeps state for them alone.
    """
    flags = _selection(tree, predicate, "fm.tree.partition")
    leaves_, spec = pytree.tree_flatten(tree)
    selected = [leaf if f else HOLE for leaf, f in zip(leaves_, flags, strict=True)]
    rest = [HOLE if f else leaf for leaf, f in zip(leaves_, flags, strict=True)]
    return pytree.tree_unflatten(selected, spec), pytree.tree_unflatten(rest, spec)


def combine(*trees: Any) -> Any:
    """Merge trees of one structure made by :func:`partition`: each leaf from the first
    tree that has one there (not a :data:`HOLE`).

    Arguments:
        *trees: trees of one structure, with holes.

    Returns:
        One tree of that structure; a position that is a hole in every tree stays a hole.

    Raises:
        TypeError: no tree given.
        ValueError: the trees have different structures.
    """
    if not trees:
        raise TypeError("fm.tree.combine: expected at least one tree")

    def first(*leaves_: Any) -> Any:
        for leaf in leaves_:
            if leaf is not HOLE:
                return leaf
        return HOLE

    flat = [_flat_with_holes(t) for t in trees]
    spec = flat[0][1]
    for _, s in flat[1:]:
        if s != spec:
            raise ValueError("fm.tree.combine: the trees do not have the same structure")
    merged = [first(*ls) for ls in zip(*(f[0] for f in flat), strict=True)]
    return pytree.tree_unflatten(merged, spec)


def _flat_with_holes(tree: Any) -> tuple[list[Any], pytree.TreeSpec]:
    """Flatten keeping holes as leaves, so the trees' positions line up."""
    return pytree.tree_flatten(tree, is_leaf=lambda n: n is HOLE)


def index(tree: Any, i: int) -> Any:
    """Member ``i`` of stacked params or state.

    For a :class:`~funcmodels.nn.Stack`'s Params/State, the member's own Params/State
    (its spec is the member spec, ``fm.apply`` runs it alone); for any other tree (an
    ensemble made by ``vmap(fm.init)``, per-sample gradients), every leaf indexed at ``i``
    along dim 0, the structure kept.

    Arguments:
        tree: a Stack's Params or State, or any tree whose leaves share a dim 0.
        i: the member, negative counting from the end.

    Returns:
        Member ``i``: its leaves have the shapes of the stacked ones without dim 0.

    Raises:
        IndexError: ``i`` is out of range.
    """
    if isinstance(tree, _Tree) and isinstance(tree.spec, Stack):
        n = tree.spec.n
        if not -n <= i < n:
            raise IndexError(f"fm.tree.index: member {i} of a Stack of {n}")
        return type(tree)._make(tree.spec.spec, {k: t[i] for k, t in tree._flat.items()})
    return pytree.tree_map(lambda t: t[i], tree)


def unstack(tree: Any) -> list[Any]:
    """Every member of stacked params or state, as :func:`index` gives them.

    Arguments:
        tree: a Stack's Params or State, or any tree whose leaves share a dim 0.

    Returns:
        The list of the ``n`` members, ``n`` the size of dim 0.

    Raises:
        ValueError: the tree has no leaves.
    """
    if isinstance(tree, _Tree) and isinstance(tree.spec, Stack):
        return [index(tree, i) for i in range(tree.spec.n)]
    first = pytree.tree_leaves(tree)
    if not first:
        raise ValueError("fm.tree.unstack: the tree has no leaves to unstack")
    return [index(tree, i) for i in range(first[0].shape[0])]


def stack(trees: Sequence[Any], *, as_stack: bool = False) -> Any:
    """Stack trees of one structure leaf by leaf on a new dim 0.

    Arguments:
        trees: Params (or any trees) of one structure.
        as_stack: for Params/State, give the result the spec ``fm.nn.Stack(spec, n)``
            (so ``fm.apply`` runs all members); otherwise the structure is kept, as
            ``vmap(fm.init)`` makes an ensemble.

    Returns:
        A tree whose leaves have a new dim 0 of size ``len(trees)``.

    Raises:
        ValueError: no tree given.
        TypeError: ``as_stack=True`` for trees that are not Params or State.
    """
    if not trees:
        raise ValueError("fm.tree.stack: expected at least one tree")
    out = pytree.tree_map(lambda *ts: torch.stack(ts), *trees)
    if as_stack:
        if not isinstance(out, _Tree):
            raise TypeError("fm.tree.stack: as_stack=True needs Params or State")
        return type(out)._make(Stack(out.spec, len(trees)), dict(out._flat))
    return out
