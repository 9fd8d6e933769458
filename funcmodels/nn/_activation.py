"""Parameter-free elementwise layers.

torch's ``inplace`` flag is accepted in configs and has no effect: nothing here ever
modifies its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, rank_known, show
from .._spec import Context, Spec


class _Elementwise(Spec):
    """A layer that maps each batch to a batch of the same shape, without parameters."""

    preserves_rank: ClassVar[bool] = True
    config_ignores: ClassVar[tuple[str, ...]] = ("inplace",)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return in_shape


@dataclass(frozen=True)
class Identity(_Elementwise):
    """Returns its input."""

    def forward(self, ctx: Context, x):
        return x


@dataclass(frozen=True)
class ReLU(_Elementwise):
    """``max(x, 0)``. Never in place: inputs are not mutated."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@dataclass(frozen=True)
class GELU(_Elementwise):
    """Gaussian error linear unit; ``approximate`` is ``'none'`` or ``'tanh'``, as in torch."""

    approximate: str = "none"

    def __post_init__(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(
                f"GELU: approximate must be 'none' or 'tanh', got {self.approximate!r}"
            )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@dataclass(frozen=True)
class SiLU(_Elementwise):
    """``x * sigmoid(x)``."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@dataclass(frozen=True)
class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


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
    """Softmax over ``dim`` (default the last, which is the same batched or not)."""

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
    """Log-softmax over ``dim`` (default the last)."""

    dim: int = -1

    def __post_init__(self):
        _check_dim("LogSoftmax", self.dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _check_dim_for_example(self, path, in_shape, self.dim)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        _check_dim_in_range(x, self.dim)
        return F.log_softmax(x, dim=self.dim)
