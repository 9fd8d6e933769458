"""Plumbing shared by the ``fm.optim.contrib`` optimisers: the params' lowest and highest
floating dtypes (where optax keeps a 0-dim state scalar), a required params argument, and
reductions over all leaves."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from .._more_common import hyper


def _floating(params: Any) -> list[torch.dtype]:
    return [x.dtype for x in pytree.tree_leaves(params) if isinstance(x, torch.Tensor)]


def lowest_dtype(params: Any) -> torch.dtype:
    """The floating dtype of fewest bits among the params' leaves (optax's
    ``tree.dtype(params, 'lowest')``); float32 for a tree without leaves."""
    dtypes = _floating(params)
    return min(dtypes, key=lambda d: torch.finfo(d).bits) if dtypes else torch.float32


def highest_dtype(params: Any) -> torch.dtype:
    """The floating dtype of most bits among the params' leaves."""
    dtypes = _floating(params)
    return max(dtypes, key=lambda d: torch.finfo(d).bits) if dtypes else torch.float32


def device_of(params: Any) -> torch.device | None:
    leaves = pytree.tree_leaves(params)
    return leaves[0].device if leaves else None


def scalar(value: Any, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """A hyperparameter as a 0-dim tensor of ``dtype`` (a tensor is cast, never promoted)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device)
    return torch.tensor(value, dtype=dtype, device=device)


def need_params(where: str, params: Any) -> None:
    if params is None:
        raise ValueError(f"{where}: update needs the params (pass them as its third argument)")


def tree_sum(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The sum of all elements of ``xs``, in the promotion of their dtypes and ``dtype``."""
    total = torch.zeros((), dtype=dtype, device=xs[0].device if xs else None)
    for x in xs:
        total = total + x.sum()
    return total


def vdot(xs: list[torch.Tensor], ys: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``sum_i <x_i, y_i>`` over the leaves (optax's ``tree.vdot``)."""
    return tree_sum([(x * y) for x, y in zip(xs, ys, strict=True)], dtype)


def as_operand(value: Any, like: torch.Tensor) -> Any:
    """A hyperparameter as an operand for ``like`` (numbers stay numbers)."""
    return hyper(value, like)
