"""Padding layers, matching torch.nn's ``ZeroPad``, ``ConstantPad``, ``ReflectionPad``,
``ReplicationPad`` and ``CircularPad`` in 1, 2 and 3 dims (:class:`torch.nn.ZeroPad2d`, ...).

``padding`` is an int (the same on every side) or one int per side, last dim first:
``(left, right)``, ``(left, right, top, bottom)``, ``(left, right, top, bottom, front,
back)``; it is stored as that tuple, so ``ZeroPad2d(1)`` and ``ZeroPad2d((1, 1, 1, 1))``
are the same spec. Negative entries crop, as in torch. None of these layers has
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fit_rank, rank_known, show
from .._spec import Context, Spec
from ._check import number

_DIMS = {1: "C, W", 2: "C, H, W", 3: "C, D, H, W"}


def _padding(layer: str, value: object, n: int) -> tuple[int, ...]:
    """An int or ``2n`` ints (any sign), as a ``2n``-tuple, last dim first."""
    if isinstance(value, (list, tuple)):
        items = tuple(value)
        if len(items) != 2 * n:
            raise ValueError(
                f"{layer}: padding must be an int or {2 * n} ints (two per padded dim, last "
                f"dim first), got {list(items)}"
            )
    else:
        items = (value,) * (2 * n)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{layer}: padding must be ints, got {value!r}")
    return items


def _padded(mode: str, size: int, before: int, after: int) -> int | None:
    """The padded length of one dim, or ``None`` where torch refuses the input size."""
    out = size + before + after
    if mode == "constant":
        # negative padding crops first; the crop must fit the input
        fits = size + min(before, 0) + min(after, 0) >= 0
    elif mode == "reflect":
        # an empty output dim is allowed as long as another padded dim is not empty
        # (torch's rule); _Pad._sizes checks that part
        fits = before < size and after < size and out >= 0
    elif mode == "replicate":
        fits = size >= 1 and out >= 0  # and not every padded dim empty, as for reflect
    else:
        # circular: negative padding crops first, and the padding wraps around what is
        # left at most once (torch checks against the uncropped size and then reads
        # uninitialised memory, so the stricter rule here)
        left = size + min(before, 0) + min(after, 0)
        fits = left >= 0 and max(before, 0) <= left and max(after, 0) <= left
    return out if fits else None


_RULES = {
    "constant": "the crop of negative padding must fit the input",
    "reflect": "reflection needs each side's padding smaller than the input size, and an "
    "output that is not empty in every padded dim",
    "replicate": "replication needs a non-empty input, and an output that is not empty in "
    "every padded dim",
    "circular": "circular padding may wrap around the input at most once: each side's "
    "padding must be at most the size left after negative padding crops it",
}


class _Pad(Spec):
    """Shared by the padding layers: ``_n`` padded dims, torch's ``F.pad`` ``_mode``."""

    preserves_rank: ClassVar[bool] = True
    _n: ClassVar[int]
    _mode: ClassVar[str]

    def __post_init__(self):
        object.__setattr__(self, "padding", _padding(self.type_name, self.padding, self._n))

    @property
    def _value(self) -> float:
        return 0.0

    def _sizes(self, sizes: tuple) -> tuple | None:
        """The padded sizes of the last ``len(sizes)`` (at most ``_n``) dims; ``None``
        when the padding does not fit them."""
        pads = self.padding
        out = []
        for i, size in enumerate(reversed(sizes)):
            if size is None:
                out.append(None)
                continue
            padded = _padded(self._mode, size, pads[2 * i], pads[2 * i + 1])
            if padded is None:
                return None
            out.append(padded)
        if self._mode in ("reflect", "replicate") and all(d is not None and d < 1 for d in out):
            return None  # torch's rule: not every padded dim may be empty
        return tuple(reversed(out))

    def _problem(self, sizes: tuple) -> str:
        return (
            f"padding {self.padding} does not fit an input of size {show(sizes)} in its last "
            f"{self._n} dim(s) ({_RULES[self._mode]})"
        )

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        n = self._n
        if self.example_ndim is not None:
            shape = fit_rank(self, path, in_shape, n + 1, _DIMS[n])
            lead, tail = shape[:1], shape[1:]
        elif rank_known(in_shape):
            if len(in_shape) < n:
                raise self._error(
                    path,
                    f"expected one example with at least {n} dims to pad, got "
                    f"{show(in_shape)} (the padding would reach into the batch dim)",
                )
            lead, tail = in_shape[: len(in_shape) - n], in_shape[len(in_shape) - n :]
        else:  # (..., known tail): the dims before it are unknown, padded or not
            k = min(n, len(in_shape) - 1)
            lead, tail = in_shape[: len(in_shape) - k], in_shape[len(in_shape) - k :]
        padded = self._sizes(tuple(tail))
        if padded is None:
            raise self._error(path, self._problem(tuple(tail)))
        return (*lead, *padded)

    def _check_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        n = self._n
        if self.example_ndim is None:
            if x.dim() < n:
                raise ValueError(
                    f"expected an input with at least {n} dims, got shape {tuple(x.shape)}"
                )
        elif x.dim() not in (n + 1, n + 2):
            raise ValueError(
                f"expected input (N, {_DIMS[n]}) or ({_DIMS[n]}), got shape {tuple(x.shape)}"
            )
        return x

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        sizes = tuple(x.shape[-self._n :])
        if self._sizes(sizes) is None:
            raise ValueError(self._problem(sizes))
        if self._mode == "constant":
            return F.pad(x, self.padding, "constant", self._value)
        return F.pad(x, self.padding, self._mode)


class _ConstantPad(_Pad):
    """Constant padding works on any input of rank at least ``_n``, batched or not."""

    _mode: ClassVar[str] = "constant"


class _ValuePad(_ConstantPad):
    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "value", number(self.type_name, "value", self.value))

    @property
    def _value(self) -> float:
        return self.value


class _BorderPad(_Pad):
    """Reflection, replication and circular padding: input ``(N, C, *dims)`` or one
    example ``(C, *dims)``, as torch accepts."""

    @property
    def example_ndim(self) -> int:  # type: ignore[override]
        return self._n + 1


@dataclass(frozen=True)
class ZeroPad1d(_ConstantPad):
    """Pad the last dim with zeros, as :class:`torch.nn.ZeroPad1d`.

    Arguments:
        padding: an int, or ``(left, right)``; negative entries crop.

    Shapes: input ``(*, W)``, output ``(*, W + left + right)``; ``*`` may be empty.
    """

    _n: ClassVar[int] = 1

    padding: int | tuple[int, int]


@dataclass(frozen=True)
class ZeroPad2d(_ConstantPad):
    """Pad the last two dims with zeros, as :class:`torch.nn.ZeroPad2d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom)``; negative entries crop.

    Shapes: input ``(*, H, W)``, output ``(*, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 2

    padding: int | tuple[int, int, int, int]


@dataclass(frozen=True)
class ZeroPad3d(_ConstantPad):
    """Pad the last three dims with zeros, as :class:`torch.nn.ZeroPad3d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom, front, back)``; negative entries
            crop.

    Shapes: input ``(*, D, H, W)``, output ``(*, D + front + back, H + top + bottom,
    W + left + right)``.
    """

    _n: ClassVar[int] = 3

    padding: int | tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class ConstantPad1d(_ValuePad):
    """Pad the last dim with a constant, as :class:`torch.nn.ConstantPad1d`.

    Arguments:
        padding: an int, or ``(left, right)``; negative entries crop.
        value: the fill value, a finite number (stored as a float: specs are saved as
            JSON, so torch's ``-inf`` fill cannot be stored).

    Shapes: input ``(*, W)``, output ``(*, W + left + right)``; ``*`` may be empty.
    """

    _n: ClassVar[int] = 1

    padding: int | tuple[int, int]
    value: float


@dataclass(frozen=True)
class ConstantPad2d(_ValuePad):
    """Pad the last two dims with a constant, as :class:`torch.nn.ConstantPad2d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom)``; negative entries crop.
        value: the fill value, a finite number (stored as a float).

    Shapes: input ``(*, H, W)``, output ``(*, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 2

    padding: int | tuple[int, int, int, int]
    value: float


@dataclass(frozen=True)
class ConstantPad3d(_ValuePad):
    """Pad the last three dims with a constant, as :class:`torch.nn.ConstantPad3d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom, front, back)``; negative entries
            crop.
        value: the fill value, a finite number (stored as a float).

    Shapes: input ``(*, D, H, W)``, output ``(*, D + front + back, H + top + bottom,
    W + left + right)``.
    """

    _n: ClassVar[int] = 3

    padding: int | tuple[int, int, int, int, int, int]
    value: float


@dataclass(frozen=True)
class ReflectionPad1d(_BorderPad):
    """Pad the last dim with the reflection of the input (the edge not repeated), as
    :class:`torch.nn.ReflectionPad1d`.

    Arguments:
        padding: an int, or ``(left, right)``; each side smaller than the input size,
            negative entries crop.

    Shapes: input ``(N, C, W)`` or ``(C, W)``, output ``(N, C, W + left + right)``.
    """

    _n: ClassVar[int] = 1
    _mode: ClassVar[str] = "reflect"

    padding: int | tuple[int, int]


@dataclass(frozen=True)
class ReflectionPad2d(_BorderPad):
    """Pad the last two dims with the reflection of the input, as
    :class:`torch.nn.ReflectionPad2d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom)``; each side smaller than the
            input size, negative entries crop.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``, output
    ``(N, C, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 2
    _mode: ClassVar[str] = "reflect"

    padding: int | tuple[int, int, int, int]


@dataclass(frozen=True)
class ReflectionPad3d(_BorderPad):
    """Pad the last three dims with the reflection of the input, as
    :class:`torch.nn.ReflectionPad3d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom, front, back)``; each side smaller
            than the input size, negative entries crop.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``, output
    ``(N, C, D + front + back, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 3
    _mode: ClassVar[str] = "reflect"

    padding: int | tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class ReplicationPad1d(_BorderPad):
    """Pad the last dim by repeating the edge values, as :class:`torch.nn.ReplicationPad1d`.

    Arguments:
        padding: an int, or ``(left, right)``; negative entries crop.

    Shapes: input ``(N, C, W)`` or ``(C, W)``, output ``(N, C, W + left + right)``.
    """

    _n: ClassVar[int] = 1
    _mode: ClassVar[str] = "replicate"

    padding: int | tuple[int, int]


@dataclass(frozen=True)
class ReplicationPad2d(_BorderPad):
    """Pad the last two dims by repeating the edge values, as
    :class:`torch.nn.ReplicationPad2d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom)``; negative entries crop.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``, output
    ``(N, C, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 2
    _mode: ClassVar[str] = "replicate"

    padding: int | tuple[int, int, int, int]


@dataclass(frozen=True)
class ReplicationPad3d(_BorderPad):
    """Pad the last three dims by repeating the edge values, as
    :class:`torch.nn.ReplicationPad3d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom, front, back)``; negative entries
            crop.

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``, output
    ``(N, C, D + front + back, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 3
    _mode: ClassVar[str] = "replicate"

    padding: int | tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class CircularPad1d(_BorderPad):
    """Pad the last dim with the input wrapped around, as :class:`torch.nn.CircularPad1d`.

    Arguments:
        padding: an int, or ``(left, right)``; negative entries crop first, and each
            positive entry is at most the size left after the crop (the padding wraps
            around once). torch checks against the uncropped size and, past the size
            left, returns uninitialised values; such paddings are refused here.

    Shapes: input ``(N, C, W)`` or ``(C, W)``, output ``(N, C, W + left + right)``.
    """

    _n: ClassVar[int] = 1
    _mode: ClassVar[str] = "circular"

    padding: int | tuple[int, int]


@dataclass(frozen=True)
class CircularPad2d(_BorderPad):
    """Pad the last two dims with the input wrapped around, as
    :class:`torch.nn.CircularPad2d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom)``; per dim, negative entries
            crop first, and each positive entry is at most the size left (see
            :class:`CircularPad1d`).

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``, output
    ``(N, C, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 2
    _mode: ClassVar[str] = "circular"

    padding: int | tuple[int, int, int, int]


@dataclass(frozen=True)
class CircularPad3d(_BorderPad):
    """Pad the last three dims with the input wrapped around, as
    :class:`torch.nn.CircularPad3d`.

    Arguments:
        padding: an int, or ``(left, right, top, bottom, front, back)``; per dim,
            negative entries crop first, and each positive entry is at most the size left
            (see :class:`CircularPad1d`).

    Shapes: input ``(N, C, D, H, W)`` or ``(C, D, H, W)``, output
    ``(N, C, D + front + back, H + top + bottom, W + left + right)``.
    """

    _n: ClassVar[int] = 3
    _mode: ClassVar[str] = "circular"

    padding: int | tuple[int, int, int, int, int, int]
