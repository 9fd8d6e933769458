"""Convolutions, matching :class:`torch.nn.Conv1d`, :class:`torch.nn.Conv2d`,
:class:`torch.nn.Conv3d` and the transposed :class:`torch.nn.ConvTranspose1d`,
:class:`torch.nn.ConvTranspose2d` and :class:`torch.nn.ConvTranspose3d`.

Integer-or-tuple fields are stored as tuples, so ``Conv3d(2, 4, 3)`` and
``Conv3d(2, 4, (3, 3, 3))`` are the same spec. ``in_channels`` may be left out and is then
inferred from the input shape given to :func:`funcmodels.init`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, check_size, fill, fit_rank
from .._spec import Context, Spec
from ._check import (
    boolean,
    fan_in_bound,
    int_tuple,
    positive_int,
    sizes_known,
    torch_signature,
    uniform_param,
)

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvBase(Spec):
    """What every convolution shares; ``_n`` is the number of spatial dims."""

    _n: ClassVar[int]
    _fn: ClassVar = None
    _dims: ClassVar[str]
    inferred_fields: ClassVar[tuple[str, ...]] = ("in_channels",)

    def _check_common(self) -> None:
        """Channels, groups, bias, kernel_size, stride and dilation (as tuples)."""
        layer = self.type_name
        if self.in_channels is not None:
            positive_int(layer, "in_channels", self.in_channels)
        positive_int(layer, "out_channels", self.out_channels)
        positive_int(layer, "groups", self.groups)
        boolean(layer, "bias", self.bias)
        n = self._n
        object.__setattr__(
            self, "kernel_size", int_tuple(layer, "kernel_size", self.kernel_size, n, 1)
        )
        object.__setattr__(self, "stride", int_tuple(layer, "stride", self.stride, n, 1))
        object.__setattr__(self, "dilation", int_tuple(layer, "dilation", self.dilation, n, 1))
        for field in ("in_channels", "out_channels"):
            if getattr(self, field) is not None and getattr(self, field) % self.groups:
                raise ValueError(
                    f"{layer}: groups={self.groups} must divide {field}={getattr(self, field)}"
                )

    @property
    def example_ndim(self) -> int:  # type: ignore[override]
        return self._n + 1

    def _weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _fan_in(self) -> int:
        """torch's fan-in of the weight: ``weight.shape[1] * prod(kernel_size)``."""
        return self._weight_shape()[1] * math.prod(self.kernel_size)

    def param_shapes(self):
        sizes_known(self)
        shapes = {"weight": self._weight_shape()}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_params(self, key, *, dtype, device):
        # kaiming_uniform(a=sqrt(5)) for the weight and the fan-in rule for the bias: both
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch.
        sizes_known(self)
        bound = fan_in_bound(self._fan_in())
        return {
            name: uniform_param(key, name, shape, bound, dtype, device)
            for name, shape in self.param_shapes().items()
        }

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        c = fit_rank(self, path, in_shape, self._n + 1, self._dims)[0]
        if self.in_channels is not None or c is None:
            return self
        return fill(self, path, in_channels=c)

    def _check_input(self, x: object) -> torch.Tensor:
        n = self._n
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != self.in_channels:
            raise ValueError(
                f"expected input (N, {self._dims}) or ({self._dims}) with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        return x


class _ConvNd(_ConvBase):
    """Shared by Conv1d, Conv2d and Conv3d."""

    def __post_init__(self):
        self._check_common()
        layer, n = self.type_name, self._n
        if isinstance(self.padding, str):
            if self.padding not in ("same", "valid"):
                raise ValueError(
                    f"{layer}: padding must be an int, a tuple of ints, 'same' or 'valid', "
                    f"got {self.padding!r}"
                )
            if self.padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    f"{layer}: padding='same' needs stride 1 (as in torch), "
                    f"got stride {self.stride}"
                )
        else:
            object.__setattr__(self, "padding", int_tuple(layer, "padding", self.padding, n, 0))
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"{layer}: padding_mode must be one of {list(_PADDING_MODES)}, "
                f"got {self.padding_mode!r}"
            )
        # Derived once: forward checks the input size against it on every call.
        object.__setattr__(self, "_min", self._min_size())

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _explicit_padding(self) -> tuple[int, ...]:
        """Per-side padding for F.pad (last dim first), as torch's _reversed_padding."""
        if self.padding == "valid":
            return (0,) * (2 * self._n)
        if self.padding == "same":
            pads: list[int] = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size), strict=True):
                total = d * (k - 1)
                left = total // 2
                pads += [left, total - left]
            return tuple(pads)
        return tuple(p for p in reversed(self.padding) for _ in range(2))

    def _min_size(self) -> tuple[int, ...]:
        """Smallest spatial size per dim that fits one window (and the padding mode)."""
        pads = self._explicit_padding()[::-1]  # first spatial dim first, (after, before)
        sizes = []
        for i, (k, d) in enumerate(zip(self.kernel_size, self.dilation, strict=True)):
            after, before = pads[2 * i], pads[2 * i + 1]
            need = d * (k - 1) + 1 - before - after
            if self.padding_mode == "reflect":
                need = max(need, max(before, after) + 1)
            elif self.padding_mode == "circular":
                need = max(need, max(before, after))
            sizes.append(max(need, 1))
        return tuple(sizes)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = fit_rank(self, path, in_shape, self._n + 1, self._dims)
        check_size(self, path, "in_channels", self.in_channels, shape[0], in_shape)
        pads = self._explicit_padding()[::-1]  # first spatial dim first, (after, before)
        out = []
        for i, size in enumerate(shape[1:]):
            if size is None:
                out.append(None)
                continue
            if size < self._min[i]:
                raise self._error(
                    path,
                    f"input of spatial size {tuple(shape[1:])} is too small for kernel_size "
                    f"{self.kernel_size}, dilation {self.dilation}, padding {self.padding!r} "
                    f"and padding_mode {self.padding_mode!r} (needs at least {self._min})",
                )
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            out.append((size + pads[2 * i] + pads[2 * i + 1] - d * (k - 1) - 1) // s + 1)
        return (self.out_channels, *out)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        size = tuple(x.shape[-self._n :])
        if any(s < m for s, m in zip(size, self._min, strict=True)):
            raise ValueError(
                f"input of spatial size {size} is too small for kernel_size "
                f"{self.kernel_size}, dilation {self.dilation}, padding {self.padding!r} and "
                f"padding_mode {self.padding_mode!r} (needs at least {self._min})"
            )
        weight = ctx.param("weight")
        bias = ctx.param("bias") if self.bias else None
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return type(self)._fn(x, weight, bias, self.stride, padding, self.dilation, self.groups)


@torch_signature
@dataclass(frozen=True, init=False)
class Conv1d(_ConvNd):
    """1-d convolution over ``(N, C, L)`` or ``(C, L)``, as :class:`torch.nn.Conv1d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out, as in
            ``Conv1d(out_channels=16, kernel_size=3)``) to infer it from the input shape
            given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a 1-tuple.
        stride: the stride ``s``, an int or a 1-tuple.
        padding: the zero padding ``p`` on both sides, an int or a 1-tuple, or
            ``'same'`` or ``'valid'``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a 1-tuple.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Params: ``weight (out, in/groups, k)``, ``bias (out,)``.
    """

    _n: ClassVar[int] = 1
    _fn: ClassVar = staticmethod(F.conv1d)
    _dims: ClassVar[str] = "C, L"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int]
    stride: int | tuple[int] = 1
    padding: int | tuple[int] | str = 0
    dilation: int | tuple[int] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"


@torch_signature
@dataclass(frozen=True, init=False)
class Conv2d(_ConvNd):
    """2-d convolution over ``(N, C, H, W)`` or ``(C, H, W)``, as :class:`torch.nn.Conv2d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out, as in
            ``Conv2d(out_channels=16, kernel_size=3)``) to infer it from the input shape
            given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a pair.
        stride: the stride ``s``, an int or a pair.
        padding: the zero padding ``p`` on both sides, an int or a pair, or
            ``'same'`` or ``'valid'``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a pair.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Params: ``weight (out, in/groups, kh, kw)``, ``bias (out,)``.
    """

    _n: ClassVar[int] = 2
    _fn: ClassVar = staticmethod(F.conv2d)
    _dims: ClassVar[str] = "C, H, W"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 0
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"


@torch_signature
@dataclass(frozen=True, init=False)
class Conv3d(_ConvNd):
    """3-d convolution over ``(N, C, D, H, W)`` or ``(C, D, H, W)``, as
    :class:`torch.nn.Conv3d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out, as in
            ``Conv3d(out_channels=16, kernel_size=3)``) to infer it from the input shape
            given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a triple.
        stride: the stride ``s``, an int or a triple.
        padding: the zero padding ``p`` on both sides, an int or a triple, or
            ``'same'`` or ``'valid'``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a triple.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output ``(N, out, D', H', W')``
    with ``D' = floor((D + 2p - d(k - 1) - 1) / s) + 1``, likewise ``H'`` and ``W'``.
    Params: ``weight (out, in/groups, kd, kh, kw)``, ``bias (out,)``, both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in/groups * kd * kh * kw``, as
    torch.
    """

    _n: ClassVar[int] = 3
    _fn: ClassVar = staticmethod(F.conv3d)
    _dims: ClassVar[str] = "C, D, H, W"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int, int, int]
    stride: int | tuple[int, int, int] = 1
    padding: int | tuple[int, int, int] | str = 0
    dilation: int | tuple[int, int, int] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"


# -- transposed convolutions ---------------------------------------------------------------
