"""Adafactor's factored second moment (Shazeer and Stern, 2018), optax's
``scale_by_factored_rms``, leaf by leaf."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import GradientTransformation, Scalar, check_state, count_like, number
from ._more_common import hyper, leafwise, rebuild, state_leaves, work_dtype


class FactoredState(NamedTuple):
    """The state of :func:`scale_by_factored_rms` (and so of :func:`adafactor`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    v_row: Any
    """factored leaves: the row averages (others: a zero of shape ``(1,)``)"""
    v_col: Any
    """factored leaves: the column averages (others: a zero of shape ``(1,)``)"""
    v: Any
    """unfactored leaves: the average of the squares (factored: a zero of shape ``(1,)``)"""


def _decay_rate_pow(i: torch.Tensor, exponent: float = 0.8) -> torch.Tensor:
    """Adafactor's default decay, ``1 - (i + 1)**-exponent``, in float32 as optax's."""
    t = torch.as_tensor(i).to(torch.float32) + 1.0
    return 1.0 - t ** (-exponent)


def _factored_dims(shape: tuple, factored: bool, min_dim_size_to_factor: int) -> tuple | None:
    """``(d1, d0)``: the second largest and the largest dimension, if the leaf is
    factored (ties in size keep the dimensions' order, as numpy's sort of short arrays)."""
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: Scalar = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: Scalar = 1e-30,
    decay_rate_fn: Callable[[Any, Any], Any] = _decay_rate_pow,
) -> GradientTransformation:
    """Adafactor's scaling: the update divided by the root of a moving average of
    ``u**2 + epsilon``, kept factored (row and column averages) for leaves whose two
    largest dimensions are at least ``min_dim_size_to_factor``; the average's decay at
    step ``t`` is ``decay_rate_fn(t - step_offset, decay_rate)`` (by default ``1 - (t +
    1)**-decay_rate``, computed in float32 as optax's).

    Arguments:
        factored: factor the second moment where the leaf allows.
        decay_rate: the exponent (or argument) given to ``decay_rate_fn``.
        step_offset: subtracted from the step count.
        min_dim_size_to_factor: the smallest second-largest dimension factored.
        epsilon: added to the squared updates.
        decay_rate_fn: ``(step, decay_rate) -> decay`` of tensors.

    Returns:
        A GradientTransformation needing the params; its state is a
            :class:`FactoredState`.

    Raises:
        ValueError: a hyperparameter out of range; from ``update``, no params.
        TypeError: a hyperparameter of the wrong type.
    """
    where = "fm.optim.scale_by_factored_rms"
    if not isinstance(factored, bool):
        raise TypeError(f"{where}: factored must be a bool, got {factored!r}")
    for name, value in (
        ("min_dim_size_to_factor", min_dim_size_to_factor),
        ("step_offset", step_offset),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    epsilon = number(where, "epsilon", epsilon)
    if not callable(decay_rate_fn):
        raise TypeError(f"{where}: decay_rate_fn must be callable, got {decay_rate_fn!r}")

    def dims(p):
        return _factored_dims(tuple(p.shape), factored, min_dim_size_to_factor)

    def init(params):
        def one(p, which):
            d = dims(p)
            small = torch.zeros((1,), dtype=p.dtype, device=p.device)
            if d is None:
                return torch.zeros_like(p) if which == "v" else small
            if which == "v":
                return small
            return torch.zeros_like(p.sum(dim=d[1] if which == "row" else d[0]))

        rows, cols, vs = (
            pytree.tree_map(lambda p, w=w: one(p, w), params) for w in ("row", "col", "v")
        )
        return FactoredState(count_like(params), rows, cols, vs)

    def step(us, state, ps, spec):
        check_state(state, FactoredState, where)
        rows = state_leaves(state.v_row, spec, "row averages")
        cols = state_leaves(state.v_col, spec, "column averages")
        vs = state_leaves(state.v, spec, "averages")
        decay = decay_rate_fn(state.count - step_offset, decay_rate)
        out, new = [], ([], [], [])
        for g, row, col, v, p in zip(us, rows, cols, vs, ps, strict=True):
            results = _leaf(g, row, col, v, p, dims(p), decay, epsilon)
            out.append(results[0])
            for column, x in zip(new, results[1:], strict=True):
                column.append(x)
        return out, FactoredState(state.count + 1, *rebuild(spec, *new))

    return leafwise(where, init, step, needs_params=True)


def _leaf(g, row, col, v, p, d, decay, epsilon) -> tuple:
    """One leaf's ``(update, v_row, v_col, v)`` (states in the param's dtype, as optax)."""
    dtype = p.dtype
    work = work_dtype(g, row, col, v)
    g = g.to(work)
    # (1 - decay) in the decay's dtype first, as optax (float32 by default)
    k, k1 = decay, 1.0 - decay
    if isinstance(decay, torch.Tensor):
        k, k1 = k.to(work), k1.to(work)
    sq = g * g + hyper(epsilon, g)
    small = torch.zeros((1,), dtype=dtype, device=g.device)
    if d is None:
        new_v = (k * v.to(work) + k1 * sq).to(dtype)
        return g * new_v.to(work) ** -0.5, small, small, new_v
    d1, d0 = d
    new_row = (k * row.to(work) + k1 * sq.mean(dim=d0)).to(dtype)
    new_col = (k * col.to(work) + k1 * sq.mean(dim=d1)).to(dtype)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_w, col_w = new_row.to(work), new_col.to(work)
    row_factor = (row_w / row_w.mean(dim=reduced_d1, keepdim=True)) ** -0.5
    col_factor = col_w**-0.5
    update = g * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)
    return update, new_row, new_col, small
