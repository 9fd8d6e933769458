"""Pooling layers, matching :class:`torch.nn.MaxPool2d`, :class:`torch.nn.AvgPool2d`,
:class:`torch.nn.AdaptiveAvgPool1d` and :class:`torch.nn.AdaptiveAvgPool2d`.

None of them has parameters. Integer-or-pair fields are stored as tuples, so
``MaxPool2d(2)`` and ``MaxPool2d((2, 2), stride=2)`` are the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fit_rank, show
from .._spec import Context, Spec
from ._check import boolean, int_tuple, positive_int


def _pooled_size(
    size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length along one dim, by torch's ``pooling_output_shape`` rule.

    With ``ceil_mode`` a last window is kept only if it starts inside the input or the
    left padding, which is why the plain ceil-division result is sometimes one too many.
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class _Pool(Spec):
    """Input check shared by the pools: ``(N, C, *spatial)`` or one example ``(C, *spatial)``."""

    _dims: ClassVar[str]

    def _check_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        nd = self.example_ndim
        if x.dim() not in (nd, nd + 1):
            raise ValueError(
                f"expected input (N, {self._dims}) or ({self._dims}), got shape {tuple(x.shape)}"
            )
        return x


class _WindowPool(_Pool):
    """Sliding-window pooling: kernel_size, stride (default kernel_size), padding."""

    def _set_window(self) -> None:
        layer = self.type_name
        kernel = int_tuple(layer, "kernel_size", self.kernel_size, 2, 1)
        stride = kernel if self.stride is None else int_tuple(layer, "stride", self.stride, 2, 1)
        padding = int_tuple(layer, "padding", self.padding, 2, 0)
        # torch compares with the plain kernel size, not the dilated one.
        if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
            raise ValueError(
                f"{layer}: padding must be at most half of kernel_size (as in torch), "
                f"got padding {padding} for kernel_size {kernel}"
            )
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)
        boolean(layer, "ceil_mode", self.ceil_mode)

    def _pooled(self, path: str, in_shape: Shape, dilation: tuple[int, int]) -> Shape:
        """Output shape of one example ``(C, H, W)``; raises when the windows do not fit."""
        shape = fit_rank(self, path, in_shape, 3, self._dims)
        out_hw = tuple(
            None if n is None else _pooled_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip(
                shape[1:], self.kernel_size, self.stride, self.padding, dilation, strict=True
            )
        )
        if any(n is not None and n < 1 for n in out_hw):
            raise self._error(
                path,
                f"input of spatial size {show(shape[1:])} is too small: the output would be "
                f"{show(out_hw)}",
            )
        return (shape[0], *out_hw)

    def _check_output(self, x: torch.Tensor, dilation: tuple[int, int]) -> None:
        """Raise unless the sliding windows give a non-empty output (torch would fail)."""
        out_hw = tuple(
            _pooled_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip(
                x.shape[-2:], self.kernel_size, self.stride, self.padding, dilation, strict=True
            )
        )
        if min(out_hw) < 1:
            raise ValueError(
                f"input of spatial size {tuple(x.shape[-2:])} is too small: the output "
                f"would be {out_hw}"
            )


@dataclass(frozen=True)
class MaxPool2d(_WindowPool):
    """2-d max pooling over ``(N, C, H, W)`` or ``(C, H, W)``, as :class:`torch.nn.MaxPool2d`.

    Arguments:
        kernel_size: window size, an int or a pair.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half of ``kernel_size``.
        dilation: spacing between window elements.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, H', W')`` with ``H' = floor((H + 2p - d(k-1) - 1)
    / s) + 1`` (ceil with ``ceil_mode``), likewise ``W'``. Indices are not returned.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    ceil_mode: bool = False

    def __post_init__(self):
        self._set_window()
        dilation = int_tuple(self.type_name, "dilation", self.dilation, 2, 1)
        object.__setattr__(self, "dilation", dilation)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return self._pooled(path, in_shape, self.dilation)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_output(x, self.dilation)
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )


@dataclass(frozen=True)
class AvgPool2d(_WindowPool):
    """2-d average pooling over ``(N, C, H, W)`` or ``(C, H, W)``, as :class:`torch.nn.AvgPool2d`.

    Arguments:
        kernel_size: window size, an int or a pair.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit zero padding on each side, at most half of ``kernel_size``.
        ceil_mode: round the output size up instead of down.
        count_include_pad: count the zero padding in each window's divisor.
        divisor_override: a positive int to divide every window sum by instead.

    Returns (from ``forward``): ``(N, C, H', W')`` with ``H' = floor((H + 2p - k) / s) + 1``
    (ceil with ``ceil_mode``), likewise ``W'``.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    def __post_init__(self):
        self._set_window()
        boolean(self.type_name, "count_include_pad", self.count_include_pad)
        if self.divisor_override is not None:
            positive_int(self.type_name, "divisor_override", self.divisor_override)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return self._pooled(path, in_shape, (1, 1))

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_output(x, (1, 1))
        return F.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


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


class _AdaptiveAvgPool(_Pool):
    """Average pooling to a fixed output size, whatever the input size."""

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = fit_rank(self, path, in_shape, self.example_ndim, self._dims)
        sizes = tuple(
            n if o is None else o for n, o in zip(shape[1:], self.output_size, strict=True)
        )
        return (shape[0], *sizes)

    def _check_nonempty(self, x: torch.Tensor) -> None:
        n = self.example_ndim - 1
        if min(x.shape[-n:]) < 1:
            raise ValueError(f"expected non-empty spatial dims, got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Average pooling to a fixed length, as :class:`torch.nn.AdaptiveAvgPool1d`.

    Arguments:
        output_size: the output length ``L'``, a positive int or a 1-tuple (stored as a
            1-tuple, like Conv1d's sizes).

    Shapes: input ``(N, C, L)`` or ``(C, L)``; output ``(N, C, L')`` or ``(C, L')``. Output
    element ``i`` averages input positions ``floor(i L / L')`` to ``ceil((i + 1) L / L')``.
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"

    output_size: int | tuple[int]

    def __post_init__(self):
        sizes = _output_sizes(self.type_name, self.output_size, 1)
        object.__setattr__(self, "output_size", sizes)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_nonempty(x)
        return F.adaptive_avg_pool1d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Average pooling to a fixed ``(H', W')``, as :class:`torch.nn.AdaptiveAvgPool2d`.

    Arguments:
        output_size: an int (square output) or a pair; a ``None`` entry keeps that input
            dim's size, as in torch.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H', W')`` or
    ``(C, H', W')``. Windows are chosen as in :class:`AdaptiveAvgPool1d`, per dim.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"

    output_size: int | tuple[int | None, int | None]

    def __post_init__(self):
        sizes = _output_sizes(self.type_name, self.output_size, 2)
        object.__setattr__(self, "output_size", sizes)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_nonempty(x)
        return F.adaptive_avg_pool2d(x, self.output_size)
