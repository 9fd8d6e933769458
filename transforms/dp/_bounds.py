"""Clipping bounds: one number (global clipping) or one per layer path (per-layer
clipping), and the bound of a whole example's clipped gradient, :func:`total_norm`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _check_bound(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"transforms.dp.{where}: max_norm must be a positive finite number, got {value!r}"
        )
    return float(value)


def check_bounds(max_norm: Any, where: str) -> float | dict[str, float]:
    """A positive number (global clipping) or a non-empty mapping of layer paths to
    positive numbers (per-layer clipping)."""
    if not isinstance(max_norm, Mapping):
        return _check_bound(max_norm, where)
    if not max_norm:
        raise ValueError(f"transforms.dp.{where}: max_norm is an empty mapping")
    out = {}
    for path, value in max_norm.items():
        if not isinstance(path, str):
            raise TypeError(
                f"transforms.dp.{where}: max_norm keys must be layer paths (str), got {path!r}"
            )
        out[path] = _check_bound(value, f"{where}: max_norm[{path!r}]")
    return out


def total_norm(max_norm: float | Mapping[str, float]) -> float:
    """The bound of a whole example's clipped gradient: ``max_norm`` itself for global
    clipping, ``sqrt(sum of squares)`` of the per-layer bounds (the sensitivity that
    :func:`add_noise` scales its noise to).

    Arguments:
        max_norm: a positive number, or a mapping of layer paths to positive numbers.

    Returns:
        The bound, a float.

    Raises:
        TypeError: a key of the mapping is not a string (a layer path).
        ValueError: a bound that is not a positive finite number, or an empty mapping.

    Example:
        ```python
        assert transforms.dp.total_norm({"0": 3.0, "2": 4.0}) == 5.0
        ```
    """
    return total(max_norm, "total_norm")


def total(max_norm: Any, where: str) -> float:
    """:func:`total_norm`, with ``where`` (the calling function) named in its errors."""
    bounds = check_bounds(max_norm, where)
    if isinstance(bounds, float):
        return bounds
    return float(sum(b * b for b in bounds.values()) ** 0.5)
