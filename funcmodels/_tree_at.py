"""``fm.tree.at``: replace leaves or sub-trees of a tree by dotted path, checked against the
entries they replace (the public name is :func:`funcmodels.tree.at`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._tree import _Tree


def _key_text(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _paths(tree: Any) -> list[str]:
    flat, _ = pytree.tree_flatten_with_path(tree)
    return [".".join(_key_text(k) for k in path) for path, _ in flat]


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
