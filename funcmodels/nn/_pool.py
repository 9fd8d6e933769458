"""Sliding-window pools in 1, 2 and 3 spatial dims, matching :class:`torch.nn.MaxPool1d`
to ``MaxPool3d``, ``AvgPool1d`` to ``AvgPool3d`` and ``LPPool1d`` to ``LPPool3d`` (the
adaptive pools: :mod:`._adaptive_pool`).

None of them has parameters. Integer-or-tuple fields are stored as tuples, so
``MaxPool2d(2)`` and ``MaxPool2d((2, 2), stride=2)`` are the same spec. The max pools
return the pooled values only: torch's ``return_indices=True`` has no spec field
(``transforms.from_module`` refuses such a module).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
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
    """Input check shared by the pools: ``(N, C, *spatial)`` or one example ``(C, *spatial)``.

    Each pool declares ``example_ndim`` (``1 +`` its number of spatial dims) and
    ``_dims``, the example's dims for messages (``"C, H, W"``).
    """

    _dims: ClassVar[str]
    _fn: ClassVar = None

    @property
    def _n(self) -> int:
        """The number of spatial dims."""
        return self.example_ndim - 1

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
    """Sliding-window pooling: kernel_size, stride (default kernel_size), padding and, for
    max pools, dilation."""

    #: torch also needs the input itself (without padding) to span a window: its 3-d
    #: average pooling checks that
    _input_spans_kernel: ClassVar[bool] = False

    def _set_window(self, *, padding: bool = True) -> None:
        layer, n = self.type_name, self._n
        kernel = int_tuple(layer, "kernel_size", self.kernel_size, n, 1)
        stride = kernel if self.stride is None else int_tuple(layer, "stride", self.stride, n, 1)
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "stride", stride)
        if padding:
            pads = int_tuple(layer, "padding", self.padding, n, 0)
            # torch compares with the plain kernel size, not the dilated one.
            if any(p > k // 2 for p, k in zip(pads, kernel, strict=True)):
                raise ValueError(
                    f"{layer}: padding must be at most half of kernel_size (as in torch), "
                    f"got padding {pads} for kernel_size {kernel}"
                )
            object.__setattr__(self, "padding", pads)
        boolean(layer, "ceil_mode", self.ceil_mode)

    def _window(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(padding, dilation)`` per spatial dim (zeros and ones where the pool has none)."""
        n = self._n
        return getattr(self, "padding", (0,) * n), getattr(self, "dilation", (1,) * n)

    def _out_sizes(self, sizes: tuple) -> tuple:
        padding, dilation = self._window()
        return tuple(
            None if n is None else _pooled_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip(
                sizes, self.kernel_size, self.stride, padding, dilation, strict=True
            )
        )

    def _size_problem(self, sizes: tuple) -> str | None:
        """Why torch would refuse input spatial ``sizes`` (``None`` when it would not)."""
        out = self._out_sizes(sizes)
        if any(n is not None and n < 1 for n in out):
            return (
                f"input of spatial size {show(sizes)} is too small: the output would be {show(out)}"
            )
        if self._input_spans_kernel and any(
            n is not None and n < k for n, k in zip(sizes, self.kernel_size, strict=True)
        ):
            return (
                f"input of spatial size {show(sizes)} is too small for kernel_size "
                f"{self.kernel_size} (torch's 3-d average pooling needs the input, padding "
                "aside, to span one window)"
            )
        return None

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        """Output shape of one example ``(C, *spatial)``; raises when the windows do not fit."""
        shape = fit_rank(self, path, in_shape, self.example_ndim, self._dims)
        problem = self._size_problem(tuple(shape[1:]))
        if problem is not None:
            raise self._error(path, problem)
        return (shape[0], *self._out_sizes(tuple(shape[1:])))

    def _check_output(self, x: torch.Tensor) -> None:
        """Raise unless the sliding windows give a non-empty output (torch would fail)."""
        problem = self._size_problem(tuple(x.shape[-self._n :]))
        if problem is not None:
            raise ValueError(problem)


# -- max pools ---------------------------------------------------------------------------


class _MaxPool(_WindowPool):
    def __post_init__(self):
        self._set_window()
        dilation = int_tuple(self.type_name, "dilation", self.dilation, self._n, 1)
        object.__setattr__(self, "dilation", dilation)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_output(x)
        return type(self)._fn(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )


@dataclass(frozen=True)
class MaxPool1d(_MaxPool):
    """1-d max pooling over ``(N, C, L)`` or ``(C, L)``, as :class:`torch.nn.MaxPool1d`.

    Arguments:
        kernel_size: window size, an int or a 1-tuple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half of ``kernel_size``.
        dilation: spacing between window elements.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, L')`` with
    ``L' = floor((L + 2p - d(k-1) - 1) / s) + 1`` (ceil with ``ceil_mode``).

    Indices are not returned: torch's ``return_indices`` has no field here, so
    ``ceil_mode`` is keyword-only (torch's fifth positional argument is
    ``return_indices``; a fifth positional argument is refused, not misread).
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"
    _fn: ClassVar = staticmethod(F.max_pool1d)

    kernel_size: int | tuple[int]
    stride: int | tuple[int] | None = None
    padding: int | tuple[int] = 0
    dilation: int | tuple[int] = 1
    _: KW_ONLY
    ceil_mode: bool = False


@dataclass(frozen=True)
class MaxPool2d(_MaxPool):
    """2-d max pooling over ``(N, C, H, W)`` or ``(C, H, W)``, as :class:`torch.nn.MaxPool2d`.

    Arguments:
        kernel_size: window size, an int or a pair.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half of ``kernel_size``.
        dilation: spacing between window elements.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, H', W')`` with
    ``H' = floor((H + 2p - d(k-1) - 1) / s) + 1`` (ceil with ``ceil_mode``), likewise ``W'``.

    Indices are not returned: torch's ``return_indices`` has no field here, so
    ``ceil_mode`` is keyword-only (torch's fifth positional argument is
    ``return_indices``; a fifth positional argument is refused, not misread).
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"
    _fn: ClassVar = staticmethod(F.max_pool2d)

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    _: KW_ONLY
    ceil_mode: bool = False


@dataclass(frozen=True)
class MaxPool3d(_MaxPool):
    """3-d max pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)``, as
    :class:`torch.nn.MaxPool3d`.

    Arguments:
        kernel_size: window size, an int or a triple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit ``-inf`` padding on each side, at most half of ``kernel_size``.
        dilation: spacing between window elements.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, D', H', W')`` with
    ``D' = floor((D + 2p - d(k-1) - 1) / s) + 1`` (ceil with ``ceil_mode``), likewise ``H'``
    and ``W'``.

    Indices are not returned: torch's ``return_indices`` has no field here, so
    ``ceil_mode`` is keyword-only (torch's fifth positional argument is
    ``return_indices``; a fifth positional argument is refused, not misread).
    """

    example_ndim: ClassVar[int] = 4
    _dims: ClassVar[str] = "C, D, H, W"
    _fn: ClassVar = staticmethod(F.max_pool3d)

    kernel_size: int | tuple[int, int, int]
    stride: int | tuple[int, int, int] | None = None
    padding: int | tuple[int, int, int] = 0
    dilation: int | tuple[int, int, int] = 1
    _: KW_ONLY
    ceil_mode: bool = False


# -- average pools -----------------------------------------------------------------------


class _AvgPool(_WindowPool):
    def __post_init__(self):
        self._set_window()
        boolean(self.type_name, "count_include_pad", self.count_include_pad)
        divisor = getattr(self, "divisor_override", None)
        if divisor is not None:
            positive_int(self.type_name, "divisor_override", divisor)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_output(x)
        args = (x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        if self._n == 1:  # torch's avg_pool1d has no divisor_override
            return type(self)._fn(*args, self.count_include_pad)
        return type(self)._fn(*args, self.count_include_pad, self.divisor_override)


@dataclass(frozen=True)
class AvgPool1d(_AvgPool):
    """1-d average pooling over ``(N, C, L)`` or ``(C, L)``, as :class:`torch.nn.AvgPool1d`.

    Arguments:
        kernel_size: window size, an int or a 1-tuple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit zero padding on each side, at most half of ``kernel_size``.
        ceil_mode: round the output size up instead of down.
        count_include_pad: count the zero padding in each window's divisor.

    Returns (from ``forward``): ``(N, C, L')`` with ``L' = floor((L + 2p - k) / s) + 1`` (ceil with
    ``ceil_mode``).

    torch's AvgPool1d has no ``divisor_override``, and neither has this layer.
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"
    _fn: ClassVar = staticmethod(F.avg_pool1d)

    kernel_size: int | tuple[int]
    stride: int | tuple[int] | None = None
    padding: int | tuple[int] = 0
    ceil_mode: bool = False
    count_include_pad: bool = True


@dataclass(frozen=True)
class AvgPool2d(_AvgPool):
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
    _fn: ClassVar = staticmethod(F.avg_pool2d)

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None


@dataclass(frozen=True)
class AvgPool3d(_AvgPool):
    """3-d average pooling over ``(N, C, D, H, W)`` or ``(C, D, H, W)``, as
    :class:`torch.nn.AvgPool3d`.

    Arguments:
        kernel_size: window size, an int or a triple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        padding: implicit zero padding on each side, at most half of ``kernel_size``.
        ceil_mode: round the output size up instead of down.
        count_include_pad: count the zero padding in each window's divisor.
        divisor_override: a positive int to divide every window sum by instead.

    Returns (from ``forward``): ``(N, C, D', H', W')`` with ``D' = floor((D + 2p - k) / s) + 1``
    (ceil with ``ceil_mode``), likewise ``H'`` and ``W'``.
    """

    example_ndim: ClassVar[int] = 4
    _dims: ClassVar[str] = "C, D, H, W"
    _fn: ClassVar = staticmethod(F.avg_pool3d)
    _input_spans_kernel: ClassVar[bool] = True

    kernel_size: int | tuple[int, int, int]
    stride: int | tuple[int, int, int] | None = None
    padding: int | tuple[int, int, int] = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None


# -- power-average pools -----------------------------------------------------------------


class _LPPool(_WindowPool):
    def __post_init__(self):
        layer = self.type_name
        p = self.norm_type
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"{layer}: norm_type must be a number, got {type(p).__name__} {p!r}")
        if not math.isfinite(p) or p == 0:
            raise ValueError(
                f"{layer}: norm_type must be a finite non-zero number (specs are saved as "
                f"JSON; for p = inf use a MaxPool of the absolute values), got {p}"
            )
        object.__setattr__(self, "norm_type", float(p))
        self._set_window(padding=False)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        self._check_output(x)
        kernel, stride = self.kernel_size, self.stride
        if self._n == 1:  # torch's lp_pool1d scales by kernel_size, so it takes an int
            kernel, stride = kernel[0], stride[0]
        return type(self)._fn(x, self.norm_type, kernel, stride, self.ceil_mode)


@dataclass(frozen=True)
class LPPool1d(_LPPool):
    """1-d power-average pooling, ``(sum of x^p over each window)^(1/p)``, over ``(N, C, L)`` or
    ``(C, L)``, as :class:`torch.nn.LPPool1d`.

    Arguments:
        norm_type: the power ``p``, a finite non-zero number (stored as a float). torch
            also takes ``p = inf`` (max pooling of ``|x|``), which a spec cannot store
            (specs are saved as JSON): use a MaxPool of ``|x|`` there.
        kernel_size: window size, an int or a 1-tuple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, L')`` with ``L' = floor((L - k) / s) + 1`` (ceil with
    ``ceil_mode``).
    """

    example_ndim: ClassVar[int] = 2
    _dims: ClassVar[str] = "C, L"
    _fn: ClassVar = staticmethod(F.lp_pool1d)

    norm_type: float
    kernel_size: int | tuple[int]
    stride: int | tuple[int] | None = None
    ceil_mode: bool = False


@dataclass(frozen=True)
class LPPool2d(_LPPool):
    """2-d power-average pooling, ``(sum of x^p over each window)^(1/p)``, over ``(N, C, H, W)`` or
    ``(C, H, W)``, as :class:`torch.nn.LPPool2d`.

    Arguments:
        norm_type: the power ``p``, a finite non-zero number (stored as a float). torch
            also takes ``p = inf`` (max pooling of ``|x|``), which a spec cannot store
            (specs are saved as JSON): use a MaxPool of ``|x|`` there.
        kernel_size: window size, an int or a pair.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, H', W')`` with ``H' = floor((H - k) / s) + 1``
    (ceil with ``ceil_mode``), likewise ``W'``.
    """

    example_ndim: ClassVar[int] = 3
    _dims: ClassVar[str] = "C, H, W"
    _fn: ClassVar = staticmethod(F.lp_pool2d)

    norm_type: float
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    ceil_mode: bool = False


@dataclass(frozen=True)
class LPPool3d(_LPPool):
    """3-d power-average pooling, ``(sum of x^p over each window)^(1/p)``, over ``(N, C, D, H, W)``
    or ``(C, D, H, W)``, as :class:`torch.nn.LPPool3d`.

    Arguments:
        norm_type: the power ``p``, a finite non-zero number (stored as a float). torch
            also takes ``p = inf`` (max pooling of ``|x|``), which a spec cannot store
            (specs are saved as JSON): use a MaxPool of ``|x|`` there.
        kernel_size: window size, an int or a triple.
        stride: step between windows; ``None`` (default) means ``kernel_size``.
        ceil_mode: round the output size up instead of down.

    Returns (from ``forward``): ``(N, C, D', H', W')`` with ``D' = floor((D - k) / s) + 1``
    (ceil with ``ceil_mode``), likewise ``H'`` and ``W'``.
    """

    example_ndim: ClassVar[int] = 4
    _dims: ClassVar[str] = "C, D, H, W"
    _fn: ClassVar = staticmethod(F.lp_pool3d)
    _input_spans_kernel: ClassVar[bool] = True

    norm_type: float
    kernel_size: int | tuple[int, int, int]
    stride: int | tuple[int, int, int] | None = None
    ceil_mode: bool = False
