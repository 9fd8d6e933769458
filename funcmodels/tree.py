"""Public tree tools, as ``jax.tree_util`` and Equinox's ``partition``/``combine``.

Trees are any nesting of dicts, lists, tuples, named tuples and funcmodels'
:class:`~funcmodels.Params` / :class:`~funcmodels.State` (with tensors, or anything else,
at the leaves); flattening is ``torch.utils._pytree``'s, the one ``torch.func`` uses. A
leaf's *path* is a dotted string: the dotted name of a Params/State entry (``'0.weight'``),
dict keys and sequence positions joined by dots for containers (``'1.0.weight'`` for the
params in ``(state, params)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._spec import Spec
from ._tree import HOLE, Params, _Tree
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


def _key_text(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _paths(tree: Any) -> list[str]:
    flat, _ = pytree.tree_flatten_with_path(tree)
    return [".".join(_key_text(k) for k in path) for path, _ in flat]


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


_MISSING = object()


def at(
    tree: Any,
    where: str | Sequence[str],
    value: Any = _MISSING,
    *,
    fn: Callable[[Any], Any] | None = None,
) -> Any:
    """A copy of ``tree`` with the leaves or sub-trees at some paths replaced, as Equinox's
    ``tree_at``: ``fm.tree.at(params, "0.weight", w)``.

    A path is a dotted string as :func:`map_with_path` names leaves: a Params/State entry
    (``'0.weight'``), a layer of Params/State (``'head'``: its sub-tree), and dict keys,
    sequence positions and named-tuple fields of containers (``'params.0.weight'`` in
    ``{"params": params}``, ``'1.mu.0.weight'`` in a chained optimiser's state). The input
    is never changed; untouched tensors are shared, not copied.

    Arguments:
        tree: Params, State, or any pytree of them and tensors (dicts, lists, tuples,
            named tuples).
        where: one path, or a list of paths (none inside another).
        value: the replacement for one path, or a sequence of them, one per path of a
            list.
        fn: instead of ``value``: ``fn(old) -> new``, applied at each path.

    Returns:
        a tree of ``tree``'s structure (Params keep their spec).

    Raises:
        TypeError: ``where`` is not a path or a list of them, both or neither of
            ``value`` and ``fn`` are given, or a list of paths has no sequence of values.
        ValueError: a path names nothing in ``tree`` (the message lists near names), two
            paths overlap, a replaced sub-tree has another structure than the old one, or
            a tensor of a Params/State entry is replaced by one of another shape or dtype
            (the entry named).
    """
    paths = _where(where)
    values = _values(where, paths, value, fn)
    leaves_, spec = pytree.tree_flatten(tree)
    names = _paths(tree)
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    owners = _entry_owners(tree)
    new = list(leaves_)
    for path, v in zip(paths, values, strict=True):
        if path in index:
            i = index[path]
            new[i] = fn(leaves_[i]) if fn is not None else v
            _check_leaf(owners[i], path, leaves_[i], new[i])
            continue
        old = _find(tree, path, names)
        node = fn(old) if fn is not None else v
        _check_structure(path, old, node)
        for rel, leaf in zip(_paths(old), pytree.tree_leaves(node), strict=True):
            i = index[f"{path}.{rel}" if rel and path else path or rel]
            new[i] = leaf
            _check_leaf(owners[i], names[i], leaves_[i], leaf)
    return pytree.tree_unflatten(new, spec)


def _where(where: Any) -> list[str]:
    paths = [where] if isinstance(where, str) else where
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
        raise TypeError(
            f"fm.tree.at: where must be a dotted path such as '0.weight' or a list of them, "
            f"got {where!r}"
        )
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if a == b or not a or not b or b.startswith(a + ".") or a.startswith(b + "."):
                raise ValueError(
                    f"fm.tree.at: the paths '{a}' and '{b}' overlap; give each part of the "
                    "tree once"
                )
    return list(paths)


def _values(where: Any, paths: list[str], value: Any, fn: Any) -> list[Any]:
    if (value is _MISSING) == (fn is None):
        raise TypeError("fm.tree.at: give either value (the replacement) or fn (old -> new)")
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"fm.tree.at: fn must be callable, got {fn!r}")
        return [None] * len(paths)
    if isinstance(where, str):
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) != len(paths):
        got = f"{len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        raise TypeError(
            f"fm.tree.at: for {len(paths)} paths, value must be a list of {len(paths)} "
            f"replacements, one per path, got {got}"
        )
    return list(value)


def _entry_owners(tree: Any) -> list[tuple[_Tree, str] | None]:
    """For each leaf, the Params/State and the entry it belongs to (``None`` elsewhere)."""
    out: list[tuple[_Tree, str] | None] = []
    for node in pytree.tree_leaves(tree, is_leaf=lambda n: isinstance(n, _Tree)):
        if not isinstance(node, _Tree):
            out.append(None)
            continue
        for k, v in node._flat.items():
            out.extend([(node, k)] * len(pytree.tree_leaves(v)))
    return out


def _check_leaf(owner: tuple[_Tree, str] | None, path: str, old: Any, new: Any) -> None:
    """A tensor of a Params/State entry is replaced by a tensor of its shape and dtype."""
    if owner is None or not isinstance(old, torch.Tensor):
        return
    node, k = owner
    entry = f"'{path}' ({type(node).__name__} entry '{k}' of {node.spec.type_name})"
    if not isinstance(new, torch.Tensor):
        raise ValueError(
            f"fm.tree.at: the value for {entry} is a {type(new).__name__}, not a tensor"
        )
    if new.shape != old.shape:
        raise ValueError(
            f"fm.tree.at: the value for {entry} has shape {tuple(new.shape)}, expected the "
            f"entry's {tuple(old.shape)} (a layer of another shape is another spec: "
            "fm.init it, or use with_spec)"
        )
    if new.dtype != old.dtype:
        raise ValueError(
            f"fm.tree.at: the value for {entry} has dtype {new.dtype}, expected the entry's "
            f"{old.dtype} (cast it first; params.to(dtype) casts a whole model)"
        )


def _find(tree: Any, path: str, names: list[str]) -> Any:
    """The sub-tree of ``tree`` at ``path`` (not a leaf)."""
    node, rest = tree, path
    while rest:
        if isinstance(node, _Tree):
            try:
                return node[rest]
            except KeyError as err:
                raise ValueError(
                    f"fm.tree.at: nothing at '{path}' ({err.args[0]}){_near(path, names)}"
                ) from None
        match = None
        for keys, child in _children(node):
            text = ".".join(_key_text(k) for k in keys)
            if keys and (rest == text or rest.startswith(text + ".")):
                if match is None or len(text) > len(match[0]):
                    match = (text, child)
        if match is None:
            near = _near(path, names) or (
                f"; the tree's top-level names: {sorted({n.split('.')[0] for n in names})}"
            )
            raise ValueError(f"fm.tree.at: nothing at '{path}'{near}")
        node, rest = match[1], rest[len(match[0]) + 1 :]
    return node


def _children(node: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """The children of a container with their keys (one level: every node below is a
    leaf here); a leaf gives one child with no keys."""
    return pytree.tree_flatten_with_path(node, is_leaf=lambda n: n is not node)[0]


def _near(path: str, names: list[str]) -> str:
    """The names close to ``path`` among the leaf paths ``names`` and the sub-trees above
    them, as a clause for a message (empty when none is close)."""
    known = set(names)
    for name in names:
        parts = name.split(".")
        known.update(".".join(parts[:i]) for i in range(1, len(parts)))
    near = difflib.get_close_matches(path, sorted(known), n=5)
    return f"; near names: {near}" if near else ""


def _check_structure(path: str, old: Any, new: Any) -> None:
    a, b = pytree.tree_structure(old), pytree.tree_structure(new)
    if a == b:
        return
    if isinstance(old, _Tree) and isinstance(new, _Tree) and type(old) is type(new):
        got = f"{type(new).__name__} of {new.spec!r}" if new.spec != old.spec else "other entries"
        want = f"{type(old).__name__} of {old.spec!r}"
    else:
        want, got = _shape_of(old), _shape_of(new)
    raise ValueError(
        f"fm.tree.at: the value for '{path}' does not have the structure of what it replaces: "
        f"expected {want}, got {got}"
    )


def _shape_of(node: Any) -> str:
    if isinstance(node, _Tree):
        return f"{type(node).__name__} of {node.spec.type_name}"
    paths = _paths(node)
    if paths == [""]:
        return "a single leaf"
    return f"a {type(node).__name__} with leaves {paths[:8]}{' ...' if len(paths) > 8 else ''}"
