"""Trees under ``torch.compile``: Params and State flattened without pytree's generic walk.

Dynamo traces ``torch.utils._pytree`` line by line: its walk over a tree (a node per leaf,
a TreeSpec built per node) was most of the bytecode dynamo traced for an optimiser's step.
A Params or State of tensors has one structure per (spec, entry names), built here
directly; the TreeSpec is the one pytree would make, so it compares equal to structures
made in eager mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from .._tree import Params, State

#: the structure of one tensor, shared by the structures :func:`traced_flatten` makes
_LEAF = pytree.treespec_leaf()


def traced_flatten(cls: type, tree: Any) -> tuple[list[Any], pytree.TreeSpec]:
    """``pytree.tree_flatten(tree)`` of a Params or State ``tree`` (of class ``cls``)."""
    leaves = list(tree._flat.values())
    if not all(isinstance(t, torch.Tensor) for t in leaves):
        return pytree.tree_flatten(tree)
    return leaves, pytree.TreeSpec(cls, (tree.spec, tuple(tree._flat)), [_LEAF] * len(leaves))


def traced_unflatten(leaves: list[Any], spec: pytree.TreeSpec) -> Any:
    """``pytree.tree_unflatten(leaves, spec)``, a Params or State of one leaf per entry
    built directly."""
    if spec.type is Params or spec.type is State:
        layer_spec, keys = spec.context
        if spec.num_leaves == len(keys):  # every entry a leaf: as traced_flatten made it
            return spec.type._make(layer_spec, dict(zip(keys, leaves, strict=True)))
    return pytree.tree_unflatten(leaves, spec)


def same_structure(a: pytree.TreeSpec, b: pytree.TreeSpec) -> bool:
    """``a == b``, decided without comparing layer specs field by field (which dynamo
    would trace) where both are Params/State structures of one spec object."""
    if a is b:
        return True
    if (
        a.type is b.type
        and (a.type is Params or a.type is State)
        and a.context[0] is b.context[0]
        and a.context[1] == b.context[1]
        and a.num_leaves == b.num_leaves == len(a.context[1])  # no holes: all leaves
    ):
        return True
    return a == b
