"""Plumbing shared by the pieces written leaf by leaf (``_more_*.py``).

These pieces run the same torch ops on every leaf, one leaf at a time (no multi-tensor
kernels), so one code path serves eager mode, ``vmap`` and ``torch.compile``. They keep
fm.optim's dtype rule: a step computes in the promotion of the update's dtype and the
state's, a state leaf is stored back in its own dtype, and a hyperparameter held as a
tensor is cast to the leaf's dtype first (it never promotes a leaf).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._base import GradientTransformation, flat_transformation, flatten_like, unflatten


def hyper(value: Any, like: torch.Tensor) -> Any:
    """A hyperparameter as an operand for ``like``: numbers stay numbers, tensors are cast
    to ``like``'s dtype and device."""
    if isinstance(value, torch.Tensor) and (
        value.dtype != like.dtype or value.device != like.device
    ):
        return value.to(device=like.device, dtype=like.dtype)
    return value


def work_dtype(*xs: torch.Tensor) -> torch.dtype:
    """The promotion of the dtypes of ``xs``."""
    dtype = xs[0].dtype
    for x in xs[1:]:
        if x.dtype != dtype:
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def per_leaf(
    fn: Callable[..., Sequence[torch.Tensor]],
    us: Sequence[torch.Tensor],
    *states: Sequence[torch.Tensor],
    inputs: Sequence[Sequence[torch.Tensor]] = (),
) -> tuple[list[torch.Tensor], ...]:
    """``fn(u, *olds, *ins)`` for each leaf, the state leaves (and ``inputs``, such as the
    params) cast to the promoted dtype of the leaf's tensors; ``fn`` returns ``(out, *new
    states)``, and each new state comes back in the dtype of the state it replaces.

    Returns:
        ``(outs, *new state lists)``, lists in leaf order.
    """
    columns: list[list[torch.Tensor]] = [[] for _ in range(len(states) + 1)]
    for i, u in enumerate(us):
        olds, ins = [s[i] for s in states], [x[i] for x in inputs]
        dtype = work_dtype(u, *olds, *ins)
        out, *news = fn(u.to(dtype), *(o.to(dtype) for o in olds), *(x.to(dtype) for x in ins))
        columns[0].append(out)
        for column, new, old in zip(columns[1:], news, olds, strict=True):
            column.append(new.to(old.dtype))
    return tuple(columns)


def state_leaves(tree: Any, spec: Any, what: str) -> list[Any]:
    """The leaves of a state tree that must have the updates' structure ``spec``."""
    return flatten_like(tree, spec, what, "the updates")


def rebuild(spec: Any, *lists: list[torch.Tensor]) -> list[Any]:
    """Each list of leaves as a tree of structure ``spec``."""
    return [unflatten(xs, spec) for xs in lists]


def zeros(params: Any, dtype: torch.dtype | None = None) -> Any:
    return pytree.tree_map(lambda p: torch.zeros_like(p, dtype=dtype), params)


def full(params: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return pytree.tree_map(lambda p: torch.zeros_like(p) + value.to(p.dtype), params)
    return pytree.tree_map(lambda p: torch.full_like(p, value), params)


def leafwise(
    where: str,
    init: Callable[[Any], Any],
    step: Callable[..., tuple[list, Any]],
    *,
    needs_params: bool = False,
    fresh: bool = True,
) -> GradientTransformation:
    """A GradientTransformation from ``step(us, state, ps, spec) -> (out leaves, state)``.

    ``fresh`` says ``out`` holds only tensors the step made and keeps nowhere else (a chain
    may then write into them); a step whose updates are also its state passes ``False``.
    """

    def fn(us, state, ps, spec, own):
        out, new = step(us, state, ps, spec)
        return out, new, fresh

    return flat_transformation(where, init, fn, needs_params=needs_params)


def flag(where: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool, got {value!r}")
