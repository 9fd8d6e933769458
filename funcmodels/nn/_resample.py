"""Resampling layers, matching :class:`torch.nn.Upsample`, :class:`torch.nn.UpsamplingNearest2d`,
:class:`torch.nn.UpsamplingBilinear2d`, :class:`torch.nn.PixelShuffle` and
:class:`torch.nn.PixelUnshuffle`. None of them has parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fit_rank, rank_known, show
from .._spec import Context, Spec
from ._check import boolean, positive_int

#: the modes of F.interpolate, with the spatial rank the interpolating ones need
_MODES = {
    "nearest": None,
    "nearest-exact": None,
    "area": None,
    "linear": 1,
    "bilinear": 2,
    "bicubic": 2,
    "trilinear": 3,
}
_ALIGNING = ("linear", "bilinear", "bicubic", "trilinear")
_DIMS = {1: "C, L", 2: "C, H, W", 3: "C, D, H, W"}


def _size(layer: str, value: object) -> int | tuple[int, ...]:
    """A positive int, or 1 to 3 of them (as a tuple)."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not 1 <= len(items) <= 3:
        raise ValueError(f"{layer}: size must be an int or 1 to 3 ints, got {list(items)}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{layer}: size must be ints, got {value!r}")
        if v < 1:
            raise ValueError(f"{layer}: size must be positive, got {value!r}")
    return items if isinstance(value, (list, tuple)) else items[0]


def _scale(layer: str, value: object) -> float | tuple[float, ...]:
    """A positive finite number, or 1 to 3 of them; stored as floats, as torch does."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not 1 <= len(items) <= 3:
        raise ValueError(
            f"{layer}: scale_factor must be a number or 1 to 3 numbers, got {list(items)}"
        )
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{layer}: scale_factor must be numbers, got {value!r}")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{layer}: scale_factor must be positive and finite, got {value!r}")
    floats = tuple(float(v) for v in items)
    return floats if isinstance(value, (list, tuple)) else floats[0]


def _optional_bool(layer: str, field: str, value: object) -> None:
    if value is not None:
        boolean(layer, field, value)


class _Interpolate(Spec):
    """``F.interpolate`` with a fixed size or scale factor; ``_settings()`` gives the mode,
    align_corners and recompute_scale_factor."""

    preserves_rank: ClassVar[bool] = True

    def _check_target(self) -> None:
        """Exactly one of size and scale_factor, normalised; both fit the mode's rank."""
        layer = self.type_name
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError(
                f"{layer}: give exactly one of size and scale_factor (as torch requires), got "
                f"size={self.size!r}, scale_factor={self.scale_factor!r}"
            )
        if self.size is not None:
            object.__setattr__(self, "size", _size(layer, self.size))
        else:
            object.__setattr__(self, "scale_factor", _scale(layer, self.scale_factor))
        mode = self._settings()[0]
        target = self.size if self.size is not None else self.scale_factor
        need = _MODES[mode]
        if isinstance(target, tuple) and need is not None and len(target) != need:
            field = "size" if self.size is not None else "scale_factor"
            raise ValueError(
                f"{layer}: mode {mode!r} works on {need} spatial dim(s), but {field} has "
                f"{len(target)} entries: {target}"
            )

    def _settings(self) -> tuple[str, bool | None, bool | None]:
        """``(mode, align_corners, recompute_scale_factor)``."""
        raise NotImplementedError

    @property
    def _n(self) -> int | None:
        """The number of spatial dims, when the spec tells it."""
        target = self.size if self.size is not None else self.scale_factor
        if isinstance(target, tuple):
            return len(target)
        return _MODES[self._settings()[0]]

    @property
    def example_ndim(self) -> int | None:  # type: ignore[override]
        n = self._n
        return None if n is None else n + 1

    def _out_sizes(self, sizes: tuple) -> tuple:
        """Output spatial sizes for input spatial sizes (``None`` stays unknown), by torch's
        rule: the given size, or ``floor(size * scale_factor)``."""
        n = len(sizes)
        if self.size is not None:
            return self.size if isinstance(self.size, tuple) else (self.size,) * n
        scales = self.scale_factor
        scales = scales if isinstance(scales, tuple) else (scales,) * n
        return tuple(
            None if d is None else math.floor(d * s) for d, s in zip(sizes, scales, strict=True)
        )

    def _size_problem(self, sizes: tuple, out: tuple) -> str | None:
        # torch's 'area' mode (an adaptive average pool) returns an empty output where
        # the other modes refuse one
        least = 0 if self._settings()[0] == "area" else 1
        if all(d is None or d >= 1 for d in sizes) and all(d is None or d >= least for d in out):
            return None
        rule = "both must be positive" if least else "the input must not be empty"
        return f"input of spatial size {show(sizes)} gives output size {show(out)}; {rule}"

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        n = self._n
        if n is not None:
            shape = fit_rank(self, path, in_shape, n + 1, _DIMS[n])
        elif not rank_known(in_shape):
            # the last dim is spatial; the known dims before it may be the channel dim
            if len(in_shape) == 1:
                return in_shape
            last = in_shape[-1:]
            out = self._out_sizes(last)
            problem = self._size_problem(last, out)
            if problem is not None:
                raise self._error(path, problem)
            return (..., *out)
        elif 2 <= len(in_shape) <= 4:
            shape = in_shape
        else:
            raise self._error(
                path,
                f"expected one example of shape (C, L), (C, H, W) or (C, D, H, W), got "
                f"{show(in_shape)}",
            )
        sizes = tuple(shape[1:])
        out = self._out_sizes(sizes)
        problem = self._size_problem(sizes, out)
        if problem is not None:
            raise self._error(path, problem)
        return (shape[0], *out)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        n = self._n
        if n is not None and x.dim() != n + 2:
            raise ValueError(f"expected input (N, {_DIMS[n]}), got shape {tuple(x.shape)}")
        if n is None and x.dim() not in (3, 4, 5):
            raise ValueError(
                f"expected input (N, C, L), (N, C, H, W) or (N, C, D, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        sizes = tuple(x.shape[2:])
        problem = self._size_problem(sizes, self._out_sizes(sizes))
        if problem is not None:
            raise ValueError(problem)
        mode, align_corners, recompute = self._settings()
        return F.interpolate(
            x,
            size=self.size,
            scale_factor=self.scale_factor,
            mode=mode,
            align_corners=align_corners,
            recompute_scale_factor=recompute,
        )


@dataclass(frozen=True)
class Upsample(_Interpolate):
    """Resample to a fixed size or by a scale factor, as :class:`torch.nn.Upsample`.

    Arguments:
        size: the output spatial size: an int (every spatial dim) or one int per spatial
            dim (stored as a tuple).
        scale_factor: the multiplier of the spatial size: a number or one per spatial dim
            (stored as floats, as torch); give exactly one of ``size`` and
            ``scale_factor``.
        mode: ``'nearest'`` (default), ``'linear'`` (1 spatial dim), ``'bilinear'`` or
            ``'bicubic'`` (2), ``'trilinear'`` (3); torch's ``F.interpolate`` modes
            ``'nearest-exact'`` and ``'area'`` work too.
        align_corners: for the interpolating modes (linear to trilinear) only: align the
            corner pixels of input and output; ``None`` means ``False``, as torch.
        recompute_scale_factor: with ``scale_factor``, compute the output size and
            interpolate for that size rather than with the given factor (as torch).

    Shapes: input ``(N, C, *spatial)`` with 1 to 3 spatial dims; output
    ``(N, C, *spatial')`` with ``spatial'`` = ``size``, or ``floor(spatial *
    scale_factor)`` per dim. When the mode or a tuple ``size``/``scale_factor`` fixes the
    number of spatial dims, one example ``(C, *spatial)`` is accepted too; otherwise, as
    in torch, the input is always a batch (a 3-d input is ``(N, C, L)``).
    """

    size: int | tuple[int, ...] | None = None
    scale_factor: float | tuple[float, ...] | None = None
    mode: str = "nearest"
    align_corners: bool | None = None
    recompute_scale_factor: bool | None = None

    def __post_init__(self):
        layer = self.type_name
        if self.mode not in _MODES:
            raise ValueError(f"{layer}: mode must be one of {list(_MODES)}, got {self.mode!r}")
        _optional_bool(layer, "align_corners", self.align_corners)
        _optional_bool(layer, "recompute_scale_factor", self.recompute_scale_factor)
        if self.align_corners is not None and self.mode not in _ALIGNING:
            raise ValueError(
                f"{layer}: align_corners can only be set with the interpolating modes "
                f"{list(_ALIGNING)} (as in torch), got mode {self.mode!r}"
            )
        self._check_target()
        if self.recompute_scale_factor and self.size is not None:
            raise ValueError(
                f"{layer}: recompute_scale_factor=True needs scale_factor; it means nothing "
                "with an explicit size (as in torch)"
            )

    def _settings(self) -> tuple[str, bool | None, bool | None]:
        return self.mode, self.align_corners, self.recompute_scale_factor


class _Upsampling2d(_Interpolate):
    """The fixed-mode 2-d upsampling layers: ``size`` or ``scale_factor`` only."""

    def __post_init__(self):
        self._check_target()
        target = self.size if self.size is not None else self.scale_factor
        if isinstance(target, tuple) and len(target) != 2:
            field = "size" if self.size is not None else "scale_factor"
            raise ValueError(f"{self.type_name}: {field} must have 2 entries, got {target}")

    @property
    def _n(self) -> int:
        return 2


@dataclass(frozen=True)
class UpsamplingNearest2d(_Upsampling2d):
    """Nearest-neighbour upsampling of images, as :class:`torch.nn.UpsamplingNearest2d`
    (``Upsample(size, scale_factor, mode='nearest')`` on 2 spatial dims).

    Arguments:
        size: the output ``(H', W')``, an int or a pair.
        scale_factor: the multiplier of ``(H, W)``, a number or a pair; give exactly one
            of ``size`` and ``scale_factor``.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H', W')``. (torch
    also runs this layer on a 3-d batch ``(N, C, L)``; here a 3-d input is one image.)
    """

    size: int | tuple[int, int] | None = None
    scale_factor: float | tuple[float, float] | None = None

    def _settings(self) -> tuple[str, bool | None, bool | None]:
        return "nearest", None, None


@dataclass(frozen=True)
class UpsamplingBilinear2d(_Upsampling2d):
    """Bilinear upsampling of images with aligned corners, as
    :class:`torch.nn.UpsamplingBilinear2d` (``Upsample(size, scale_factor,
    mode='bilinear', align_corners=True)``).

    Arguments:
        size: the output ``(H', W')``, an int or a pair.
        scale_factor: the multiplier of ``(H, W)``, a number or a pair; give exactly one
            of ``size`` and ``scale_factor``.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H', W')``.
    """

    size: int | tuple[int, int] | None = None
    scale_factor: float | tuple[float, float] | None = None

    def _settings(self) -> tuple[str, bool | None, bool | None]:
        return "bilinear", True, None


# -- pixel shuffle ------------------------------------------------------------------------


class _Shuffle(Spec):
    """Moves values between the channel dim and the two last dims: ``(*, C, H, W)``."""

    preserves_rank: ClassVar[bool] = True

    def _factor(self) -> int:
        raise NotImplementedError

    def _shuffled(self, c: int | None, h: int | None, w: int | None) -> tuple | str:
        """The output ``(C', H', W')``, or what is wrong with the input."""
        raise NotImplementedError

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if rank_known(in_shape):
            if len(in_shape) < 3:
                raise self._error(
                    path, f"expected one example of shape (*, C, H, W), got {show(in_shape)}"
                )
            lead, chw = in_shape[:-3], tuple(in_shape[-3:])
        else:
            shape = fit_rank(self, path, in_shape[-3:], 3, "C, H, W")
            lead, chw = (...,), tuple(shape)
        out = self._shuffled(*chw)
        if isinstance(out, str):
            raise self._error(path, out)
        return (*lead, *out)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.dim() < 3:
            raise ValueError(f"expected input (*, C, H, W), got shape {tuple(x.shape)}")
        out = self._shuffled(*x.shape[-3:])
        if isinstance(out, str):
            raise ValueError(out)
        return type(self)._fn(x, self._factor())


@dataclass(frozen=True)
class PixelShuffle(_Shuffle):
    """Rearrange ``(*, C r^2, H, W)`` into ``(*, C, H r, W r)``, as
    :class:`torch.nn.PixelShuffle`.

    Arguments:
        upscale_factor: ``r``, a positive int; the input channels must be a multiple of
            ``r^2``.

    Shapes: input ``(*, C r^2, H, W)``, output ``(*, C, H r, W r)``; ``*`` may be empty.
    """

    _fn: ClassVar = staticmethod(F.pixel_shuffle)

    upscale_factor: int

    def __post_init__(self):
        positive_int(self.type_name, "upscale_factor", self.upscale_factor)

    def _factor(self) -> int:
        return self.upscale_factor

    def _shuffled(self, c, h, w):
        r = self.upscale_factor
        if c is not None and c % (r * r):
            return (
                f"expected the channels (dim -3) to be a multiple of upscale_factor^2 = "
                f"{r * r}, got {c}"
            )
        return (
            None if c is None else c // (r * r),
            None if h is None else h * r,
            None if w is None else w * r,
        )


@dataclass(frozen=True)
class PixelUnshuffle(_Shuffle):
    """Rearrange ``(*, C, H r, W r)`` into ``(*, C r^2, H, W)``, the inverse of
    :class:`PixelShuffle`, as :class:`torch.nn.PixelUnshuffle`.

    Arguments:
        downscale_factor: ``r``, a positive int; the input height and width must be
            multiples of it.

    Shapes: input ``(*, C, H r, W r)``, output ``(*, C r^2, H, W)``; ``*`` may be empty.
    """

    _fn: ClassVar = staticmethod(F.pixel_unshuffle)

    downscale_factor: int

    def __post_init__(self):
        positive_int(self.type_name, "downscale_factor", self.downscale_factor)

    def _factor(self) -> int:
        return self.downscale_factor

    def _shuffled(self, c, h, w):
        r = self.downscale_factor
        if any(d is not None and d % r for d in (h, w)):
            return (
                f"expected the height and width (dims -2, -1) to be multiples of "
                f"downscale_factor = {r}, got {h} and {w}"
            )
        return (
            None if c is None else c * r * r,
            None if h is None else h // r,
            None if w is None else w // r,
        )
