"""optax.tree's lookups by key: find, read and replace the values of a tree (an optimiser
state) stored under a dict key, a NamedTuple field or a NamedTuple's class name.

Paths are tuples of torch's pytree key entries (``MappingKey``, ``SequenceKey``,
``GetAttrKey``), with a :class:`NamedTupleKey` for each NamedTuple field, as optax's are
JAX's key entries with its ``NamedTupleKey``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch.utils._pytree as pytree


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """A path entry for a NamedTuple's field, naming the NamedTuple's class too, so a
    ``filtering`` function can tell apart equal field names of different states.

    Attributes:
        tuple_name: the name of the NamedTuple's class.
        name: the field's name.
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        """``tuple_name.name``.

        Returns:
            The entry as text.
        """
        return f"{self.tuple_name}.{self.name}"


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _has_keys(node: Any, keys: tuple[Any, ...]) -> bool:
    if _is_named_tuple(node):
        return any(k in node._fields for k in keys) or type(node).__name__ in keys
    return isinstance(node, dict) and any(k in node for k in keys)


def _children(node: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """One level of a pytree node: ``[(key entry, child)]`` and the spec rebuilding it."""
    with_path, spec = pytree.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return [(p[0], c) for p, c in with_path], spec


def _leaves_with_path(path: tuple, tree: Any, is_leaf: Callable[[Any], bool]) -> list:
    """The leaves (or nodes where ``is_leaf`` holds) with their paths, NamedTuple fields
    entered as :class:`NamedTupleKey`."""
    if is_leaf(tree) or pytree.tree_is_leaf(tree):
        return [(path, tree)]
    out = []
    if _is_named_tuple(tree):
        entries = [(NamedTupleKey(type(tree).__name__, f), getattr(tree, f)) for f in tree._fields]
    else:
        entries = _children(tree)[0]
    for entry, child in entries:
        out += _leaves_with_path((*path, entry), child, is_leaf)
    return out


def _children_with_path(path: tuple, node: Any) -> list[tuple[tuple, Any]]:
    if _is_named_tuple(node):
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields]
    return [((*path, pytree.MappingKey(k)), v) for k, v in node.items()]


def _at_key(path: tuple, node: Any, key: Any) -> tuple[tuple, Any]:
    if _is_named_tuple(node):
        if key == type(node).__name__:
            return path, node
        return (*path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)
    return (*path, pytree.MappingKey(key)), node[key]


def _find(tree: Any, key: Any) -> list[tuple[tuple, Any]]:
    """Every value under ``key``, the shallower ones of a subtree first, as optax orders
    them."""

    def has(x):
        return _has_keys(x, (key,))

    subtrees = [(p, s) for p, s in _leaves_with_path((), tree, has) if has(s)]
    found = [_at_key(p, s, key) for p, s in subtrees]
    for path, subtree in subtrees:
        for child_path, child in _children_with_path(path, subtree):
            found += [((*child_path, *p), v) for p, v in _find(child, key)]
    return found


def get_all_with_path(
    tree: Any, key: Any, filtering: Callable[[tuple, Any], bool] | None = None
) -> list[tuple[tuple, Any]]:
    """Every value of ``tree`` under ``key`` (a dict key, a NamedTuple field or a
    NamedTuple's class name), with its path.

    Arguments:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or class name to look for.
        filtering: keep only the values for which ``filtering(path, value)`` is true.

    Returns:
        A list of ``(path, value)``; a path is a tuple of key entries (see
            :class:`NamedTupleKey`).
    """
    found = _find(tree, key)
    return [(p, v) for p, v in found if filtering(p, v)] if filtering else found


def get(
    tree: Any,
    key: Any,
    default: Any | None = None,
    filtering: Callable[[tuple, Any], bool] | None = None,
) -> Any:
    """The one value of ``tree`` under ``key`` (see :func:`get_all_with_path`).

    Arguments:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or class name to look for.
        default: returned when nothing is found.
        filtering: keep only the values for which ``filtering(path, value)`` is true.

    Returns:
        The value, or ``default``.

    Raises:
        KeyError: if several values are found.
    """
    found = get_all_with_path(tree, key, filtering=filtering)
    if len(found) > 1:
        paths = ", ".join(pytree.keystr(p) for p, _ in found)
        raise KeyError(f"fm.optim.tree.get: several values for {key!r} in the tree, at {paths}")
    return found[0][1] if found else default


def _rebuild(node: Any, children: dict[Any, Any]) -> Any:
    if _is_named_tuple(node):
        return node._replace(**children)
    return type(node)(children) if type(node) is not dict else dict(children)


def set(  # noqa: A001
    tree: Any, filtering: Callable[[tuple, Any], bool] | None = None, /, **kwargs: Any
) -> Any:
    """A copy of ``tree`` with the values under the keys of ``kwargs`` replaced.

    Arguments:
        tree: the tree, e.g. an optimiser state; not modified.
        filtering: replace only the values for which ``filtering(path, value)`` is true.
        **kwargs: the new values, by key, NamedTuple field or NamedTuple class name.

    Returns:
        A tree of the same structure (where a replacement is itself a tree, its own).

    Raises:
        KeyError: if a key of ``kwargs`` matches no value (after ``filtering``).
    """
    for key in kwargs:
        if not get_all_with_path(tree, key, filtering):
            given = " given the filtering" if filtering else ""
            raise KeyError(f"fm.optim.tree.set: no value matches {key!r}{given} in the tree")
    keys = tuple(kwargs)

    def keep(path, value):
        return filtering is None or filtering(path, value)

    def replace(path, node):
        if not _has_keys(node, keys):
            return node
        if _is_named_tuple(node) and type(node).__name__ in kwargs and keep(path, node):
            return kwargs[type(node).__name__]
        new = {}
        for child_path, child in _children_with_path(path, node):
            key = child_path[-1].name if _is_named_tuple(node) else child_path[-1].key
            if key in kwargs and keep(child_path, child):
                new[key] = kwargs[key]
            else:
                nested = isinstance(child, (dict, list, tuple))
                new[key] = replace(child_path, child) if nested else child
        return _rebuild(node, new)

    def walk(path, node):
        if _has_keys(node, keys):
            return replace(path, node)
        if pytree.tree_is_leaf(node):
            return node
        if _is_named_tuple(node):
            name = type(node).__name__
            return node._replace(
                **{f: walk((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields}
            )
        entries, spec = _children(node)
        return pytree.tree_unflatten([walk((*path, e), c) for e, c in entries], spec)

    return walk((), tree)
