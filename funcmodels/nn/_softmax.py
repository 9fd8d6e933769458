"""The softmax family and GLU, as in :mod:`torch.nn`: layers that work along one ``dim``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fit_rank, rank_known, show
from .._spec import Context, Spec
from ._activation import _Elementwise


def _check_dim(layer: str, dim: object) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{layer}: dim must be an int, got {type(dim).__name__} {dim!r}")


def _check_dim_in_range(x: torch.Tensor, dim: int) -> None:
    rank = max(x.dim(), 1)
    if not -rank <= dim < rank:
        raise ValueError(f"dim={dim} is out of range for an input of shape {tuple(x.shape)}")


def _check_dim_for_example(spec: Spec, path: str, in_shape: Shape, dim: int) -> Shape:
    """``dim`` indexes a batch, so it must fit one more dim than the example has."""
    rank = len(in_shape) + 1
    if rank_known(in_shape) and not -rank <= dim < rank:
        raise spec._error(
            path,
            f"dim={dim} is out of range for a batch of examples of shape {show(in_shape)} "
            f"(batch rank {rank})",
        )
    return in_shape


@dataclass(frozen=True)
class Softmax(_Elementwise):
    """Softmax over ``dim`` (default the last, which is the same batched or not).

    Arguments:
        dim: the dim to normalise over, of the batch (negative dims count from the end).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    dim: int = -1

    def __post_init__(self):
        _check_dim("Softmax", self.dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _check_dim_for_example(self, path, in_shape, self.dim)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        _check_dim_in_range(x, self.dim)
        return F.softmax(x, dim=self.dim)


@dataclass(frozen=True)
class LogSoftmax(_Elementwise):
    """Log-softmax over ``dim`` (default the last).

    Arguments:
        dim: the dim to normalise over, of the batch (negative dims count from the end).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    dim: int = -1

    def __post_init__(self):
        _check_dim("LogSoftmax", self.dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _check_dim_for_example(self, path, in_shape, self.dim)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        _check_dim_in_range(x, self.dim)
        return F.log_softmax(x, dim=self.dim)


@dataclass(frozen=True)
class Softmin(_Elementwise):
    """``softmax(-x)`` over ``dim``, as :class:`torch.nn.Softmin`.

    The default ``dim`` is the last (as :class:`Softmax` here); torch's default ``None``,
    its deprecated implicit choice of dim, is not accepted.

    Arguments:
        dim: the dim to normalise over, of the batch (negative dims count from the end).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    dim: int = -1

    def __post_init__(self):
        _check_dim("Softmin", self.dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _check_dim_for_example(self, path, in_shape, self.dim)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        _check_dim_in_range(x, self.dim)
        return F.softmin(x, dim=self.dim)


@dataclass(frozen=True)
class Softmax2d(_Elementwise):
    """Softmax over the channels of ``(N, C, H, W)`` or one example ``(C, H, W)``, as
    :class:`torch.nn.Softmax2d`.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output of the same shape.
    """

    example_ndim: ClassVar[int] = 3

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return fit_rank(self, path, in_shape, 3, "C, H, W")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"expected input (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}"
            )
        return F.softmax(x, dim=-3)


@dataclass(frozen=True)
class GLU(_Elementwise):
    """Gated linear unit, as :class:`torch.nn.GLU`: ``a * sigmoid(b)``, where ``a`` and ``b``
    are the two halves of the input along ``dim``.

    Arguments:
        dim: the dim to split, of even size; it indexes the batch as in torch (default
            the last, which is the same batched or not).

    Shapes: input ``(*, 2M, *)``, output ``(*, M, *)``.
    """

    dim: int = -1

    def __post_init__(self):
        _check_dim("GLU", self.dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        _check_dim_for_example(self, path, in_shape, self.dim)
        tail = in_shape if rank_known(in_shape) else in_shape[1:]
        if self.dim >= 0:
            if self.dim == 0:
                raise self._error(path, "dim=0 splits the batch, which one example cannot show")
            if not rank_known(in_shape):
                return (..., *[None] * len(tail))
            i = self.dim - 1
        else:
            if -self.dim > len(tail):
                if rank_known(in_shape):
                    raise self._error(
                        path, f"dim={self.dim} splits the batch, which one example cannot show"
                    )
                return in_shape
            i = len(tail) + self.dim
        size = tail[i]
        if size is not None and size % 2:
            raise self._error(
                path,
                f"expected an even size along dim={self.dim} (it is halved), got one example "
                f"of shape {show(in_shape)}",
            )
        half = None if size is None else size // 2
        out = (*tail[:i], half, *tail[i + 1 :])
        return out if rank_known(in_shape) else (..., *out)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ValueError("expected an input with at least one dim (it is halved), got a scalar")
        _check_dim_in_range(x, self.dim)
        if x.shape[self.dim] % 2:
            raise ValueError(
                f"expected an even size along dim={self.dim} (it is halved), got shape "
                f"{tuple(x.shape)}"
            )
        return F.glu(x, self.dim)
