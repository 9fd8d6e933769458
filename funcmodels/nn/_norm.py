"""Normalisation over features, matching :class:`torch.nn.LayerNorm`,
:class:`torch.nn.RMSNorm`, :class:`torch.nn.GroupNorm` and
:class:`torch.nn.LocalResponseNorm` (batch and instance norms: :mod:`._batchnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, check_size, fill, product, rank_known, show
from .._spec import Context, Spec
from ._check import affine_init, boolean, number, positive_int, sizes_known


class _TrailingNorm(Spec):
    """Normalisation over the trailing ``normalized_shape`` dims (LayerNorm, RMSNorm): the
    field's checks and the shape rules."""

    preserves_rank: ClassVar[bool] = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("normalized_shape",)

    def _set_shape(self) -> None:
        """``normalized_shape`` as a tuple of positive ints (an int is one dim)."""
        layer = self.type_name
        shape = self.normalized_shape
        if shape is None:
            return
        shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
        if not shape:
            raise ValueError(f"{layer}: normalized_shape must have at least one dim, got ()")
        for s in shape:
            positive_int(layer, "normalized_shape", s)
        object.__setattr__(self, "normalized_shape", shape)

    def _check_rank(self, path: str, in_shape: Shape) -> None:
        norm = self.normalized_shape or (None,)
        if rank_known(in_shape) and len(in_shape) < len(norm):
            dims = ", ".join("D" if d is None else str(d) for d in norm)
            raise self._error(
                path, f"expected one example of shape (*, {dims}), got {show(in_shape)}"
            )

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        self._check_rank(path, in_shape)
        last = in_shape[-1]
        if self.normalized_shape is not None or last is None or last is ...:
            return self
        return fill(self, path, normalized_shape=last)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        self._check_rank(path, in_shape)
        norm = self.normalized_shape or ()
        tail = in_shape if rank_known(in_shape) else in_shape[1:]
        for want, got in zip(reversed(norm), reversed(tail), strict=False):
            if got is not None and got != want:
                raise self._error(
                    path,
                    f"expected the trailing dims {norm} (normalized_shape), got input shape "
                    f"{show(in_shape)}",
                )
        if not norm:
            return in_shape
        if rank_known(in_shape):
            return (*in_shape[: len(in_shape) - len(norm)], *norm)
        return (..., *norm) if len(tail) <= len(norm) else (..., *tail[: -len(norm)], *norm)

    def _check_input(self, x: torch.Tensor) -> None:
        shape = self.normalized_shape
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"expected input (*, {', '.join(map(str, shape))}), got shape {tuple(x.shape)}"
            )


@dataclass(frozen=True)
class LayerNorm(_TrailingNorm):
    """Normalise over the trailing ``normalized_shape`` dims, as :class:`torch.nn.LayerNorm`.

    Arguments:
        normalized_shape: an int or a tuple of ints, the trailing dims (stored as a tuple);
            ``None`` (or left out) to normalise the last dim, its size inferred from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the variance for stability.
        elementwise_affine: learn ``weight`` (and ``bias``) of ``normalized_shape``.
        bias: learn ``bias`` too (only with ``elementwise_affine``).

    Shapes: input ``(*, *normalized_shape)``, output the same; ``*`` may be empty, so a
    single example needs no batch dim. Params: ``weight`` ones, ``bias`` zeros.
    """

    normalized_shape: int | tuple[int, ...] | None = None
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self):
        object.__setattr__(self, "eps", number("LayerNorm", "eps", self.eps, 0.0))
        boolean("LayerNorm", "elementwise_affine", self.elementwise_affine)
        boolean("LayerNorm", "bias", self.bias)
        if not self.elementwise_affine:
            # No params either way: one canonical spec, as torch's module has no bias flag
            # to read back when it is not affine.
            object.__setattr__(self, "bias", False)
        self._set_shape()

    def param_shapes(self):
        sizes_known(self)
        shapes = {}
        if self.elementwise_affine:
            shapes["weight"] = self.normalized_shape
            if self.bias:
                shapes["bias"] = self.normalized_shape
        return shapes

    def init_params(self, key, *, dtype, device):
        return affine_init(self.param_shapes(), dtype, device)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        weight = ctx.param("weight") if self.elementwise_affine else None
        bias = ctx.param("bias") if self.bias else None
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


@dataclass(frozen=True)
class RMSNorm(_TrailingNorm):
    """Root-mean-square normalisation over the trailing ``normalized_shape`` dims, as
    :class:`torch.nn.RMSNorm`: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Arguments:
        normalized_shape: an int or a tuple of ints, the trailing dims (stored as a tuple);
            ``None`` (or left out) to normalise the last dim, its size inferred from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the mean square; ``None`` (torch's default) uses the machine epsilon
            of the computation type, ``torch.finfo(torch.float32).eps`` for float32, float16
            and bfloat16 inputs and ``torch.finfo(torch.float64).eps`` for float64.
        elementwise_affine: learn ``weight`` (ones) of ``normalized_shape``; no bias.

    Shapes: input ``(*, *normalized_shape)``, output the same; ``*`` may be empty, so a
    single example needs no batch dim. Params: ``weight`` ones.
    """

    normalized_shape: int | tuple[int, ...] | None = None
    eps: float | None = None
    elementwise_affine: bool = True

    def __post_init__(self):
        if self.eps is not None:
            object.__setattr__(self, "eps", number("RMSNorm", "eps", self.eps, 0.0))
        boolean("RMSNorm", "elementwise_affine", self.elementwise_affine)
        self._set_shape()

    def param_shapes(self):
        sizes_known(self)
        return {"weight": self.normalized_shape} if self.elementwise_affine else {}

    def init_params(self, key, *, dtype, device):
        return affine_init(self.param_shapes(), dtype, device)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        weight = ctx.param("weight") if self.elementwise_affine else None
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


@dataclass(frozen=True)
class GroupNorm(Spec):
    """Normalise each sample over groups of channels, as :class:`torch.nn.GroupNorm`.

    Arguments:
        num_groups: number of groups; must divide ``num_channels``.
        num_channels: the channel count ``C``; ``None`` (or left out) to infer it from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the variance for stability.
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros).

    Shapes: input ``(N, C, *)`` as in torch, or one example ``(C, *)`` (what per-sample
    gradients under :func:`torch.func.vmap` pass), output the same shape. An input whose
    dim 1 has size ``C`` is read as a batch, as torch does; otherwise one whose dim 0 has
    size ``C`` is read as one example. Statistics are per sample, so the layer is safe for
    per-sample gradients.
    """

    preserves_rank: ClassVar[bool] = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("num_channels",)

    num_groups: int
    num_channels: int | None = None
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self):
        positive_int("GroupNorm", "num_groups", self.num_groups)
        if self.num_channels is not None:
            positive_int("GroupNorm", "num_channels", self.num_channels)
        if self.num_channels is not None and self.num_channels % self.num_groups:
            raise ValueError(
                f"GroupNorm: num_groups={self.num_groups} must divide "
                f"num_channels={self.num_channels}"
            )
        object.__setattr__(self, "eps", number("GroupNorm", "eps", self.eps, 0.0))
        boolean("GroupNorm", "affine", self.affine)

    def param_shapes(self):
        sizes_known(self)
        if not self.affine:
            return {}
        return {"weight": (self.num_channels,), "bias": (self.num_channels,)}

    def init_params(self, key, *, dtype, device):
        return affine_init(self.param_shapes(), dtype, device)

    def _channels(self, path: str, in_shape: Shape):
        """The channel size of one example ``(C, *)``; ``None`` when unknown."""
        if not in_shape:
            raise self._error(path, "expected one example of shape (C, *), got ()")
        return in_shape[0] if rank_known(in_shape) else None

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        c = self._channels(path, in_shape)
        if self.num_channels is not None or c is None:
            return self
        return fill(self, path, num_channels=c)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        c = self._channels(path, in_shape)
        check_size(self, path, "num_channels", self.num_channels, c, in_shape)
        per_group = product(in_shape)
        if per_group is not None and per_group // self.num_groups <= 1:
            raise self._error(
                path,
                f"expected more than 1 value per group ({self.num_groups} groups), got one "
                f"example of shape {show(in_shape)}",
            )
        if rank_known(in_shape) and self.num_channels is not None:
            return (self.num_channels, *in_shape[1:])
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        c = self.num_channels
        batched = x.dim() >= 2 and x.shape[1] == c
        if not batched and not (x.dim() >= 1 and x.shape[0] == c):
            raise ValueError(f"expected input (N, {c}, *) or ({c}, *), got shape {tuple(x.shape)}")
        xb = x if batched else x.unsqueeze(0)
        if xb[0].numel() // self.num_groups <= 1:
            raise ValueError(
                f"expected more than 1 value per group ({self.num_groups} groups), got "
                f"input shape {tuple(x.shape)}"
            )
        weight = ctx.param("weight") if self.affine else None
        bias = ctx.param("bias") if self.affine else None
        out = F.group_norm(xb, self.num_groups, weight, bias, self.eps)
        return out if batched else out.squeeze(0)


@dataclass(frozen=True)
class LocalResponseNorm(Spec):
    """Normalisation across neighbouring channels, as :class:`torch.nn.LocalResponseNorm`:
    ``y_c = x_c / (k + alpha / size * sum(x_c'**2))**beta``, the sum over the ``size``
    channels around ``c`` (zero beyond the edges).

    Arguments:
        size: the number of neighbouring channels in each sum.
        alpha: the multiplicative factor.
        beta: the exponent.
        k: the additive constant.

    Shapes: input ``(N, C, *)`` with at least one dim after ``C``, output the same. torch
    needs the batch dim (it refuses ``(C, L)``); in front of a layer that knows its example
    rank (a convolution), :func:`funcmodels.apply` batches a single example first. No
    params.
    """

    preserves_rank: ClassVar[bool] = True

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def __post_init__(self):
        positive_int("LocalResponseNorm", "size", self.size)
        for field in ("alpha", "beta", "k"):
            value = number("LocalResponseNorm", field, getattr(self, field))
            object.__setattr__(self, field, value)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if rank_known(in_shape) and len(in_shape) < 2:
            raise self._error(
                path, f"expected one example of shape (C, *) with 2+ dims, got {show(in_shape)}"
            )
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"expected input (N, C, *) with 3+ dims, got shape {tuple(x.shape)}")
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
