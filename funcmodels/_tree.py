"""Params and State: pytrees of tensors that carry their spec as static metadata."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import optree
import torch
import torch.utils._pytree as pytree

from ._spec import Spec


class _Tree(Mapping):
    """A spec plus a flat ``{dotted path: tensor}`` dict, viewed as a nested mapping.

    ``tree['0']`` is the sub-tree of child ``'0'`` (same type, the child's spec);
    ``tree['0']['weight']`` or ``tree['0.weight']`` is a tensor. Iteration yields the
    top-level names (own tensors first, then children) in parameter order.
    """

    __slots__ = ("spec", "_flat")
    _kind = "tree"

    def __init__(self, spec: Spec, flat: dict[str, Any]):
        if not isinstance(spec, Spec):
            raise TypeError(f"{type(self).__name__}: expected a Spec, got {type(spec).__name__}")
        self.spec = spec
        self._flat = flat

    def flat(self) -> dict[str, Any]:
        """A new ``{dotted path: tensor}`` dict, in parameter order."""
        return dict(self._flat)

    def _names(self) -> list[str]:
        seen: dict[str, None] = {}
        for k in self._flat:
            seen.setdefault(k.split(".", 1)[0], None)
        return list(seen)

    def __getitem__(self, name: str):
        if not isinstance(name, str):
            raise KeyError(
                f"{type(self).__name__} of {self.spec.type_name} has no entry {name!r} (names "
                f"are strings such as '0' or '0.weight'); entries: {self._names()}"
            )
        if name in self._flat:
            return self._flat[name]
        prefix = name + "."
        sub = {k[len(prefix) :]: v for k, v in self._flat.items() if k.startswith(prefix)}
        if not sub:
            raise KeyError(
                f"{type(self).__name__} of {self.spec.type_name} has no entry {name!r}; "
                f"entries: {self._names()}"
            )
        spec = self.spec
        for part in name.split("."):
            spec = dict(spec.children())[part]
        return type(self)(spec, sub)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        body = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}"
            for k, v in self._flat.items()
        )
        return f"{type(self).__name__}({self.spec.type_name}, {{{body}}})"

    # Equality by identity (the Mapping default would compare tensors elementwise).
    __eq__ = object.__eq__
    __hash__ = object.__hash__


class Params(_Tree):
    """Trainable tensors of a model: a pytree whose leaves are the floating parameters."""

    __slots__ = ()


class State(_Tree):
    """Buffers of a model (BatchNorm running statistics, masks): a pytree of tensors."""

    __slots__ = ()


def _flatten(tree: _Tree):
    return list(tree._flat.values()), (tree.spec, tuple(tree._flat))


def _register(cls: type[_Tree]) -> None:
    def unflatten(leaves, context):
        spec, keys = context
        return cls(spec, dict(zip(keys, leaves, strict=True)))

    def flatten_with_keys(tree):
        return [(pytree.MappingKey(k), v) for k, v in tree._flat.items()], (
            tree.spec,
            tuple(tree._flat),
        )

    pytree.register_pytree_node(
        cls,
        _flatten,
        unflatten,
        serialized_type_name=f"funcmodels.{cls.__name__}",
        flatten_with_keys_fn=flatten_with_keys,
    )

    def oflatten(tree):
        return list(tree._flat.values()), (tree.spec, tuple(tree._flat)), tuple(tree._flat)

    # Register in optree's global namespace so plain optree.tree_map works; fall back to a
    # named namespace if optree ever hides it.
    ns = getattr(optree.registry, "__GLOBAL_NAMESPACE", "funcmodels")
    # optree passes (metadata, children), the reverse of torch's (children, context).
    optree.register_pytree_node(
        cls, oflatten, lambda context, leaves: unflatten(leaves, context), namespace=ns
    )


_register(Params)
_register(State)
