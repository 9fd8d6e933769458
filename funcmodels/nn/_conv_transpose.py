"""Transposed convolutions, matching :class:`torch.nn.ConvTranspose1d`,
:class:`torch.nn.ConvTranspose2d` and :class:`torch.nn.ConvTranspose3d` (the shared
checks and initialisation are the convolutions' base in ``_conv.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, check_size, fit_rank, show
from .._spec import Context
from ._check import (
    int_tuple,
    torch_signature,
)
from ._conv import _ConvBase


class _ConvTransposeNd(_ConvBase):
    """Shared by ConvTranspose1d, ConvTranspose2d and ConvTranspose3d."""

    def __post_init__(self):
        self._check_common()
        layer, n = self.type_name, self._n
        if isinstance(self.padding, str):
            raise TypeError(
                f"{layer}: padding must be an int or a tuple of ints (transposed convolutions "
                f"have no 'same' or 'valid', as in torch), got {self.padding!r}"
            )
        object.__setattr__(self, "padding", int_tuple(layer, "padding", self.padding, n, 0))
        output_padding = int_tuple(layer, "output_padding", self.output_padding, n, 0)
        object.__setattr__(self, "output_padding", output_padding)
        for op, s, d in zip(output_padding, self.stride, self.dilation, strict=True):
            if op >= s and op >= d:
                raise ValueError(
                    f"{layer}: output_padding must be smaller than either stride or dilation "
                    f"(as in torch), got output_padding {output_padding} for stride "
                    f"{self.stride} and dilation {self.dilation}"
                )
        if self.padding_mode != "zeros":
            raise ValueError(
                f"{layer}: padding_mode must be 'zeros', the only mode of transposed "
                f"convolutions (as in torch), got {self.padding_mode!r}"
            )

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def _sizes(self, size: tuple) -> tuple:
        """Output spatial sizes for input spatial sizes (``None`` stays unknown)."""
        return tuple(
            None if n is None else (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, k, s, p, op, d in zip(
                size,
                self.kernel_size,
                self.stride,
                self.padding,
                self.output_padding,
                self.dilation,
                strict=True,
            )
        )

    def _size_problem(self, size: tuple) -> str | None:
        out = self._sizes(size)
        if all(n is None or n >= 1 for n in size) and all(o is None or o >= 1 for o in out):
            return None
        return (
            f"input of spatial size {show(size)} gives an empty output {show(out)} for "
            f"kernel_size {self.kernel_size}, stride {self.stride}, padding {self.padding}, "
            f"output_padding {self.output_padding} and dilation {self.dilation}"
        )

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = fit_rank(self, path, in_shape, self._n + 1, self._dims)
        check_size(self, path, "in_channels", self.in_channels, shape[0], in_shape)
        problem = self._size_problem(tuple(shape[1:]))
        if problem is not None:
            raise self._error(path, problem)
        return (self.out_channels, *self._sizes(tuple(shape[1:])))

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        problem = self._size_problem(tuple(x.shape[-self._n :]))
        if problem is not None:
            raise ValueError(problem)
        weight = ctx.param("weight")
        bias = ctx.param("bias") if self.bias else None
        return type(self)._fn(
            x,
            weight,
            bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


@torch_signature
@dataclass(frozen=True, init=False)
class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution over ``(N, C, L)`` or ``(C, L)``, as
    :class:`torch.nn.ConvTranspose1d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out) to infer it
            from the input shape given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a 1-tuple.
        stride: the stride ``s``, an int or a 1-tuple.
        padding: ``p``, an int or a 1-tuple; ``d(k - 1) - p`` zeros are added on both
            sides of the input.
        output_padding: added to one side of the output, an int or a 1-tuple; each entry
            smaller than the stride or the dilation.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a 1-tuple.
        padding_mode: ``'zeros'``, the only mode torch allows.

    Shapes: input ``(N, C, L)`` or ``(C, L)``; output ``(N, out, L')`` with
    ``L' = (L - 1) s - 2p + d(k - 1) + output_padding + 1``.

    torch's ``forward(input, output_size)`` picks ``output_padding`` per call from a
    wanted output size; a spec holds no per-call argument, so give that ``output_padding``
    in the spec: for output size ``L'``, it is ``L' - ((L - 1) s - 2p + d(k - 1) + 1)``.

    Params: ``weight (in, out/groups, k)``, ``bias (out,)``, both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = out/groups * k``, as torch.
    """

    _n: ClassVar[int] = 1
    _fn: ClassVar = staticmethod(F.conv_transpose1d)
    _dims: ClassVar[str] = "C, L"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int]
    stride: int | tuple[int] = 1
    padding: int | tuple[int] = 0
    output_padding: int | tuple[int] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int] = 1
    padding_mode: str = "zeros"


@torch_signature
@dataclass(frozen=True, init=False)
class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution over ``(N, C, H, W)`` or ``(C, H, W)``, as
    :class:`torch.nn.ConvTranspose2d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out) to infer it
            from the input shape given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a pair.
        stride: the stride ``s``, an int or a pair.
        padding: ``p``, an int or a pair; ``d(k - 1) - p`` zeros are added on both
            sides of the input.
        output_padding: added to one side of the output, an int or a pair; each entry
            smaller than the stride or the dilation.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a pair.
        padding_mode: ``'zeros'``, the only mode torch allows.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, out, H', W')`` with
    ``H' = (H - 1) s - 2p + d(k - 1) + output_padding + 1``, likewise ``W'``.

    torch's ``forward(input, output_size)`` picks ``output_padding`` per call from a
    wanted output size; here give that ``output_padding`` in the spec: per dim, the wanted
    size minus ``(H - 1) s - 2p + d(k - 1) + 1``.

    Params: ``weight (in, out/groups, kh, kw)``, ``bias (out,)``, both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = out/groups * kh * kw``, as torch.
    """

    _n: ClassVar[int] = 2
    _fn: ClassVar = staticmethod(F.conv_transpose2d)
    _dims: ClassVar[str] = "C, H, W"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    output_padding: int | tuple[int, int] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int, int] = 1
    padding_mode: str = "zeros"


@torch_signature
@dataclass(frozen=True, init=False)
class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution over ``(N, C, D, H, W)`` or ``(C, D, H, W)``, as
    :class:`torch.nn.ConvTranspose3d`.

    Arguments:
        in_channels: the input's channel count ``C``; ``None`` (or left out) to infer it
            from the input shape given to :func:`funcmodels.init`.
        out_channels: the output's channel count ``out``.
        kernel_size: the kernel's size ``k``, an int or a triple.
        stride: the stride ``s``, an int or a triple.
        padding: ``p``, an int or a triple; ``d(k - 1) - p`` zeros are added on both
            sides of the input.
        output_padding: added to one side of the output, an int or a triple; each entry
            smaller than the stride or the dilation.
        groups: the number of blocked connections; must divide both channel counts.
        bias: learn a bias of shape ``(out,)``.
        dilation: the spacing ``d`` of the kernel's taps, an int or a triple.
        padding_mode: ``'zeros'``, the only mode torch allows.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output ``(N, out, D', H', W')``
    with ``D' = (D - 1) s - 2p + d(k - 1) + output_padding + 1``, likewise ``H'``, ``W'``.

    torch's ``forward(input, output_size)`` picks ``output_padding`` per call from a
    wanted output size; here give that ``output_padding`` in the spec: per dim, the wanted
    size minus ``(D - 1) s - 2p + d(k - 1) + 1``.

    Params: ``weight (in, out/groups, kd, kh, kw)``, ``bias (out,)``, both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = out/groups * kd * kh * kw``, as
    torch.
    """

    _n: ClassVar[int] = 3
    _fn: ClassVar = staticmethod(F.conv_transpose3d)
    _dims: ClassVar[str] = "C, D, H, W"

    in_channels: int | None = None
    out_channels: int
    kernel_size: int | tuple[int, int, int]
    stride: int | tuple[int, int, int] = 1
    padding: int | tuple[int, int, int] = 0
    output_padding: int | tuple[int, int, int] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int, int, int] = 1
    padding_mode: str = "zeros"
