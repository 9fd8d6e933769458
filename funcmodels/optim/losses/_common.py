"""Reductions with optax's (jax.numpy's) ``axis`` and ``where`` arguments, in torch ops
that work under ``vmap(grad)``."""

from __future__ import annotations

import math
from typing import Any

import torch

Axis = int | tuple[int, ...] | None


def dims(axis: Axis, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative dims (``None``: all of them)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of bounds for a tensor of {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    return tuple(out)


def floating(where: str, name: str, x: Any) -> torch.Tensor:
    """``x`` as a tensor, which must be floating (optax checks the same)."""
    x = torch.as_tensor(x)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{where}: {name} must be a floating tensor, got dtype {x.dtype}")
    return x


def same_shape(where: str, a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: {names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def masked_sum(x: torch.Tensor, axis: Axis, where: Any = None, keepdim: bool = False):
    """``jnp.sum(x, axis, where=where)``: masked-out entries count as 0 (NaNs there too)."""
    if where is not None:
        x = torch.where(torch.as_tensor(where, device=x.device), x, torch.zeros_like(x))
    d = dims(axis, x.dim())
    return x.sum(dim=d, keepdim=keepdim) if d else x.clone()


def masked_max(x: torch.Tensor, d: tuple[int, ...], where: Any) -> torch.Tensor:
    """``jnp.max(x, d, where=where, initial=-inf, keepdims=True)``."""
    if where is not None:
        x = torch.where(where, x, torch.full_like(x, -math.inf))
    return x.amax(dim=d, keepdim=True) if d else x


def log_softmax(x: torch.Tensor, axis: Axis = -1, where: Any = None) -> torch.Tensor:
    """``jax.nn.log_softmax(x, axis, where)``: -inf at masked-out entries."""
    d = dims(axis, x.dim())
    if where is not None:
        where = torch.as_tensor(where, device=x.device)
    x_max = masked_max(x, d, where).detach()
    x_safe = x if where is None else torch.where(where, x, torch.full_like(x, -math.inf))
    shifted = x_safe - x_max
    lse = torch.log(masked_sum(torch.exp(shifted), d, where, keepdim=True))
    result = shifted - lse
    if where is not None:
        return torch.where(where, result, torch.full_like(result, -math.inf))
    return result


def softmax(x: torch.Tensor, axis: Axis = -1, where: Any = None) -> torch.Tensor:
    """``jax.nn.softmax(x, axis, where)``: 0 at masked-out entries."""
    d = dims(axis, x.dim())
    if where is not None:
        where = torch.as_tensor(where, device=x.device)
    x_max = masked_max(x, d, where).detach()
    x_safe = x if where is None else torch.where(where, x, torch.full_like(x, -math.inf))
    unnormalized = torch.exp(x_safe - x_max)
    result = unnormalized / masked_sum(unnormalized, d, where, keepdim=True)
    if where is not None:
        return torch.where(where, result, torch.zeros_like(result))
    return result


def logsumexp(
    a: torch.Tensor, axis: Axis = -1, where: Any = None, b: torch.Tensor | None = None
) -> torch.Tensor:
    """``jax.nn.logsumexp(a, axis, b=b, where=where)`` (NaN where a weighted sum is
    negative)."""
    d = dims(axis, a.dim())
    if where is not None:
        where = torch.as_tensor(where, device=a.device)
        a = torch.where(where, a, torch.zeros_like(a))
    if b is not None:
        a = torch.where(b != 0, a, torch.full_like(a, -math.inf))
    amax = masked_max(a, d, where).detach()
    amax = torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax))
    exp_a = torch.exp(a - amax)
    if b is not None:
        exp_a = exp_a * b
    sumexp = masked_sum(exp_a, d, where, keepdim=True)
    out = torch.log(sumexp.abs()) + amax
    out = torch.where(sumexp < 0, torch.full_like(out, math.nan), out)
    return out.squeeze(d) if d else out


def one_hot(labels: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``jax.nn.one_hot``: rows of zeros for labels outside ``[0, n)``; no ``F.one_hot``
    (which fails under ``vmap``)."""
    classes = torch.arange(n, device=labels.device)
    return (labels[..., None] == classes).to(dtype)
