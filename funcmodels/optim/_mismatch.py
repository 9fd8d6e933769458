"""The words of fm.optim's tree-mismatch errors: where two trees of params differ."""

from __future__ import annotations

import torch.utils._pytree as pytree

from .._core import describe_mismatch
from .._tree import Params, State


def model_difference(want: pytree.TreeSpec, got: pytree.TreeSpec) -> str | None:
    """Where two spec trees first differ, by layer path, when the first difference of
    the two structures is between Params (or State) of different specs."""
    stack = [(want, got)]
    while stack:
        a, b = stack.pop()
        if a == b:
            continue
        if a.type is b.type and a.type in (Params, State):
            return describe_mismatch(a.context[0], b.context[0])
        if a.type is not b.type or a.num_children != b.num_children or a.context != b.context:
            return None
        stack.extend(reversed(list(zip(a.children_specs, b.children_specs, strict=True))))
    return None


def describe_tree(spec: pytree.TreeSpec) -> str:
    """A tree structure in words: its type and the paths of its leaves."""
    if spec.is_leaf():
        return "a single tensor"
    skeleton = pytree.tree_unflatten([None] * spec.num_leaves, spec)
    paths = [pytree.keystr(k) for k, _ in pytree.tree_flatten_with_path(skeleton)[0]]
    return f"{spec.type.__name__} with leaves {paths}"
