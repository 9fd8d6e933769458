"""Adaptive pools, matching :class:`torch.nn.AdaptiveAvgPool1d` to
:class:`torch.nn.AdaptiveAvgPool3d` and :class:`torch.nn.AdaptiveMaxPool1d` to
:class:`torch.nn.AdaptiveMaxPool3d`: a fixed output size whatever the input size. None has
parameters; the max pools return the pooled values only (no ``return_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fit_rank
from .._spec import Context
from ._pool import _Pool


def _output_sizes(layer: str, value: object, n: int) -> tuple[int | None, ...]:
    """An int or ``n`` entries, each a positive int or ``None`` (keep the input's size)."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    if len(items) != n:
        raise ValueError(f"{layer}: output_size must have {n} entries, got {list(items)}")
    for v in items:
        if v is None and n > 1:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            what = "ints or None" if n > 1 else "an int"
            raise TypeError(f"{layer}: output_size must be {what}, got {value!r}")
        if v < 1:
            raise ValueError(f"{layer}: output_size must be positive, got {value!r}")
    return items


class _AdaptivePool(_Pool):
    """Pooling to a fixed output size, whatever the input size."""

    def __post_init__(self):
        sizes = _output_sizes(self.type_name, self.output_size, self._n)
        object.__setattr__(self, "output_size", sizes)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = fit_rank(self, path, in_shape, self.example_ndim, self._dims)
        sizes = tuple(
            n if o is None else o for n, o in zip(shape[1:], self.output_size, strict=True)
        )
        return (shape[0], *sizes)

    def _check_nonempty(self, x: torch.Tensor) -> None:
        if min(x.shape[-self._n :]) < 1:
            raise ValueError(f"expected non-empty spatial dims, got shape {tuple(x.shape)}")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_nonempty(x)
        return type(self)._fn(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveAvgPool1d(_AdaptivePool):
    """Average pooling to a fixed length, as :class:`torch.nn.AdaptiveAvgPool1d`.

    Arguments:
        output_size: the output length ``L'``, a positive int or a 1-tuple (stored as a
            1-tuple, like Conv1d's sizes).

    Shapes: input ``(N, C, L)`` or ``(C, L)``; output ``(N, C, L')`` or ``(C, L')``. Output
    element ``i`` pools input positions ``floor(i L / L')`` to ``ceil((i + 1) L / L')``.
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"
    _fn: ClassVar = staticmethod(F.adaptive_avg_pool1d)

    output_size: int | tuple[int]


@dataclass(frozen=True)
class AdaptiveAvgPool2d(_AdaptivePool):
    """Average pooling to a fixed ``(H', W')``, as :class:`torch.nn.AdaptiveAvgPool2d`.

    Arguments:
        output_size: an int (the same size on every spatial dim) or a pair; a ``None``
            entry keeps that input dim's size, as in torch.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H', W')`` or
    ``(C, H', W')``. Windows are chosen as in the 1-d pool, per dim.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"
    _fn: ClassVar = staticmethod(F.adaptive_avg_pool2d)

    output_size: int | tuple[int | None, int | None]


@dataclass(frozen=True)
class AdaptiveAvgPool3d(_AdaptivePool):
    """Average pooling to a fixed ``(D', H', W')``, as :class:`torch.nn.AdaptiveAvgPool3d`.

    Arguments:
        output_size: an int (the same size on every spatial dim) or a triple; a ``None``
            entry keeps that input dim's size, as in torch.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output ``(N, C, D', H', W')`` or
    ``(C, D', H', W')``. Windows are chosen as in the 1-d pool, per dim.
    """

    example_ndim: ClassVar[int] = 4
    _dims: ClassVar[str] = "C, D, H, W"
    _fn: ClassVar = staticmethod(F.adaptive_avg_pool3d)

    output_size: int | tuple[int | None, int | None, int | None]


@dataclass(frozen=True)
class AdaptiveMaxPool1d(_AdaptivePool):
    """Max pooling to a fixed length, as :class:`torch.nn.AdaptiveMaxPool1d`.

    Arguments:
        output_size: the output length ``L'``, a positive int or a 1-tuple (stored as a
            1-tuple, like Conv1d's sizes).

    Shapes: input ``(N, C, L)`` or ``(C, L)``; output ``(N, C, L')`` or ``(C, L')``. Output
    element ``i`` pools input positions ``floor(i L / L')`` to ``ceil((i + 1) L / L')``.

    torch's ``return_indices`` is not supported: the pooled values only.
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"
    _fn: ClassVar = staticmethod(F.adaptive_max_pool1d)

    output_size: int | tuple[int]


@dataclass(frozen=True)
class AdaptiveMaxPool2d(_AdaptivePool):
    """Max pooling to a fixed ``(H', W')``, as :class:`torch.nn.AdaptiveMaxPool2d`.

    Arguments:
        output_size: an int (the same size on every spatial dim) or a pair; a ``None``
            entry keeps that input dim's size, as in torch.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H', W')`` or
    ``(C, H', W')``. Windows are chosen as in the 1-d pool, per dim.

    torch's ``return_indices`` is not supported: the pooled values only.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"
    _fn: ClassVar = staticmethod(F.adaptive_max_pool2d)

    output_size: int | tuple[int | None, int | None]


@dataclass(frozen=True)
class AdaptiveMaxPool3d(_AdaptivePool):
    """Max pooling to a fixed ``(D', H', W')``, as :class:`torch.nn.AdaptiveMaxPool3d`.

    Arguments:
        output_size: an int (the same size on every spatial dim) or a triple; a ``None``
            entry keeps that input dim's size, as in torch.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output ``(N, C, D', H', W')`` or
    ``(C, D', H', W')``. Windows are chosen as in the 1-d pool, per dim.

    torch's ``return_indices`` is not supported: the pooled values only.
    """

    example_ndim: ClassVar[int] = 4
    _dims: ClassVar[str] = "C, D, H, W"
    _fn: ClassVar = staticmethod(F.adaptive_max_pool3d)

    output_size: int | tuple[int | None, int | None, int | None]
