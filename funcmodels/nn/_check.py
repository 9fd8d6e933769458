"""Argument checks shared by the layer specs: each error names the layer and the field."""

from __future__ import annotations

import math

import torch

from .. import random as _random
from .._spec import name_hash


def positive_int(layer: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {field} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{layer}: {field} must be positive, got {value}")
    return value


def non_negative_int(layer: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {field} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{layer}: {field} must be non-negative, got {value}")
    return value


def boolean(layer: str, field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{layer}: {field} must be a bool, got {type(value).__name__} {value!r}")
    return value


def number(
    layer: str,
    field: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{layer}: {field} must be a number, got {type(value).__name__} {value!r}")
    bad = (
        (lo is not None and (value < lo or (lo_open and value == lo)))
        or (hi is not None and (value > hi or (hi_open and value == hi)))
        or math.isnan(value)
    )
    if bad:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise ValueError(f"{layer}: {field} must be in {lo_b}{lo}, {hi}{hi_b}, got {value}")
    return float(value)


def int_tuple(layer: str, field: str, value: object, n: int, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints, each at least ``minimum``; returns an n-tuple."""
    if isinstance(value, (list, tuple)):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(f"{layer}: {field} must have {n} entries, got {list(items)}")
    else:
        items = (value,) * n
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{layer}: {field} must be ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{layer}: {field} must be >= {minimum}, got {value!r}")
    return items


def uniform_param(key: torch.Tensor, name: str, shape: tuple[int, ...], bound: float, dtype):
    """``U(-bound, bound)`` from the layer key with the parameter name folded in."""
    k = _random.fold_in(key, name_hash(name))
    return _random.uniform(k, shape, dtype, minval=-bound, maxval=bound)


def fan_in_bound(fan_in: int) -> float:
    """torch.nn's default bound: kaiming_uniform(a=sqrt(5)) and the bias rule both give this."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
