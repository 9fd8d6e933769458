"""Normalisation layers, matching :class:`torch.nn.BatchNorm1d`, :class:`torch.nn.BatchNorm2d`,
:class:`torch.nn.LayerNorm` and :class:`torch.nn.GroupNorm`.

BatchNorm keeps its running statistics in :class:`~funcmodels.State` under torch's buffer
names (``running_mean``, ``running_var``, ``num_batches_tracked``). In train mode the
updated statistics are returned through the context, never written into the given state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch._C import _functorch

from .._shapes import Shape, check_size, fill, fit_rank, product, rank_known, show
from .._spec import Context, Spec
from ._check import boolean, number, positive_int, sizes_known


def under_vmap(t: torch.Tensor) -> bool:
    """True when ``t`` is batched by :func:`torch.func.vmap` at some level.

    Walks the functorch wrapper chain (grad wrappers around batched tensors, and the
    reverse), so a ``vmap(grad(...))`` input is recognised too.
    """
    while _functorch.is_functorch_wrapped_tensor(t):
        if _functorch.is_batchedtensor(t):
            return True
        t = _functorch.get_unwrapped(t)
    return False


def _affine_init(shapes: dict[str, tuple[int, ...]], dtype, device) -> dict[str, torch.Tensor]:
    """torch's norm-layer init: ``weight`` ones, ``bias`` zeros (no randomness)."""
    fill = {"weight": torch.ones, "bias": torch.zeros}
    return {n: fill[n](shape, dtype=dtype, device=device) for n, shape in shapes.items()}


@dataclass(frozen=True)
class _BatchNorm(Spec):
    """Shared by BatchNorm1d and BatchNorm2d; ``_ranks`` are the accepted input ranks."""

    preserves_rank: ClassVar[bool] = True

    num_features: int | None = None
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("num_features",)
    _ranks: ClassVar[tuple[int, ...]]
    _dims: ClassVar[str]

    def __post_init__(self):
        layer = self.type_name
        if self.num_features is not None:
            positive_int(layer, "num_features", self.num_features)
        object.__setattr__(self, "eps", number(layer, "eps", self.eps, 0.0))
        if self.momentum is not None:
            object.__setattr__(self, "momentum", number(layer, "momentum", self.momentum, 0.0, 1.0))
        boolean(layer, "affine", self.affine)
        boolean(layer, "track_running_stats", self.track_running_stats)

    def param_shapes(self):
        sizes_known(self)
        if not self.affine:
            return {}
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def init_params(self, key, *, dtype, device):
        return _affine_init(self.param_shapes(), dtype, device)

    def state_shapes(self):
        sizes_known(self)
        if not self.track_running_stats:
            return {}
        c = self.num_features
        return {
            "running_mean": ((c,), None),
            "running_var": ((c,), None),
            "num_batches_tracked": ((), torch.int64),
        }

    def init_state(self, key, *, dtype, device):
        sizes_known(self)
        if not self.track_running_stats:
            return {}
        c = self.num_features
        return {
            "running_mean": torch.zeros(c, dtype=dtype, device=device),
            "running_var": torch.ones(c, dtype=dtype, device=device),
            "num_batches_tracked": torch.zeros((), dtype=torch.int64, device=device),
        }

    def _fit(self, path: str, in_shape: Shape) -> Shape:
        """One example as ``(C, *)`` of an accepted rank; an unknown rank where several
        are accepted stays as it is (the channel dim cannot be told)."""
        if rank_known(in_shape):
            if len(in_shape) + 1 not in self._ranks:
                raise self._error(
                    path, f"expected one example of shape {self._example}, got {show(in_shape)}"
                )
            return in_shape
        if len(self._ranks) > 1:
            return in_shape
        return fit_rank(self, path, in_shape, self._ranks[0] - 1, self._example[1:-1])

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        shape = self._fit(path, in_shape)
        if self.num_features is not None or not rank_known(shape) or shape[0] is None:
            return self
        return fill(self, path, num_features=shape[0])

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = self._fit(path, in_shape)
        if not rank_known(shape):
            return shape
        check_size(self, path, "num_features", self.num_features, shape[0], in_shape)
        return (shape[0] if self.num_features is None else self.num_features, *shape[1:])

    def _check_batch(self, x: torch.Tensor) -> None:
        """Batch statistics need a real batch: not one sample under vmap, not one value.

        A batch of one under vmap is a per-sample call; a larger one (vmap over an ensemble
        of models, say) has well-defined statistics and is allowed. Dynamo cannot trace
        functorch's wrapper queries, so under torch.compile the vmap check is skipped
        rather than breaking the graph.
        """
        if x.shape[0] == 1 and not torch.compiler.is_compiling() and under_vmap(x):
            raise ValueError(
                "computes statistics over the batch in train mode, but under torch.func.vmap "
                "each sample is a batch of one, so per-sample statistics are ill-defined and "
                "per-sample gradients would be wrong; replace BatchNorm with GroupNorm (or "
                "LayerNorm), or run it in eval mode (train=False) with running statistics"
            )
        if x.numel() // self.num_features <= 1:
            raise ValueError(
                f"expected more than 1 value per channel in train mode, got input shape "
                f"{tuple(x.shape)}"
            )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in self._ranks or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input {self._dims} with C={self.num_features}, "
                f"got shape {tuple(x.shape)}"
            )
        affine = self.affine
        weight = ctx.param("weight") if affine else None
        bias = ctx.param("bias") if affine else None
        track = self.track_running_stats
        if track and not ctx.train:
            mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        self._check_batch(x)
        # No running tensors go in, so nothing is mutated; the update is computed below.
        out = F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if track:
            self._update_stats(ctx, x.detach())
        return out

    def _update_stats(self, ctx: Context, x: torch.Tensor) -> None:
        """torch's rule: ``r = m * batch + (1 - m) * r``, unbiased variance, count + 1."""
        mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
        count = ctx.buffer("num_batches_tracked") + 1
        dims = (0, *range(2, x.dim()))
        batch_var, batch_mean = torch.var_mean(x, dim=dims, correction=1)
        if self.momentum is None:
            # Cumulative moving average, as torch: the factor is 1 / batches seen.
            m = 1.0 / count.to(mean.dtype)
        else:
            m = self.momentum
        ctx.set_buffer("running_mean", m * batch_mean.to(mean.dtype) + (1 - m) * mean)
        ctx.set_buffer("running_var", m * batch_var.to(var.dtype) + (1 - m) * var)
        ctx.set_buffer("num_batches_tracked", count)


@dataclass(frozen=True)
class BatchNorm1d(_BatchNorm):
    """Batch normalisation over ``(N, C)`` or ``(N, C, L)``, as :class:`torch.nn.BatchNorm1d`.

    Arguments:
        num_features: the channel count ``C``; ``None`` (or left out) to infer it from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the variance for stability.
        momentum: weight of the batch statistics in the running estimates; ``None`` gives
            the cumulative average over all batches seen, as in torch.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep running statistics (used in eval mode); without them
            the batch statistics are used in both modes.

    Shapes: input ``(N, C)`` or ``(N, C, L)``, output the same. A single example is
    ambiguous for this layer (``(C, L)`` or a batch ``(N, C)``), so it needs a batch.
    Params: ``weight (C,)`` ones, ``bias (C,)`` zeros. State: ``running_mean (C,)``,
    ``running_var (C,)``, ``num_batches_tracked ()`` int64.

    In train mode :func:`funcmodels.run` returns the updated state; under
    :func:`torch.func.vmap` with one sample per call it raises (per-sample statistics are
    ill-defined: use :class:`GroupNorm` or eval mode for per-sample gradients).
    """

    _ranks: ClassVar[tuple[int, ...]] = (2, 3)
    _dims: ClassVar[str] = "(N, C) or (N, C, L)"
    _example: ClassVar[str] = "(C,) or (C, L)"


@dataclass(frozen=True)
class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, C, H, W)``, as :class:`torch.nn.BatchNorm2d`.

    Arguments: as :class:`BatchNorm1d`.

    Shapes: input ``(N, C, H, W)`` (or one example ``(C, H, W)`` given to
    :func:`funcmodels.apply`, which batches it), output the same. Params and state as
    :class:`BatchNorm1d`.
    """

    example_ndim: ClassVar[int] = 3
    _ranks: ClassVar[tuple[int, ...]] = (4,)
    _dims: ClassVar[str] = "(N, C, H, W)"
    _example: ClassVar[str] = "(C, H, W)"


@dataclass(frozen=True)
class LayerNorm(Spec):
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

    preserves_rank: ClassVar[bool] = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("normalized_shape",)

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
        shape = self.normalized_shape
        if shape is None:
            return
        shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must have at least one dim, got ()")
        for s in shape:
            positive_int("LayerNorm", "normalized_shape", s)
        object.__setattr__(self, "normalized_shape", shape)

    def param_shapes(self):
        sizes_known(self)
        shapes = {}
        if self.elementwise_affine:
            shapes["weight"] = self.normalized_shape
            if self.bias:
                shapes["bias"] = self.normalized_shape
        return shapes

    def init_params(self, key, *, dtype, device):
        return _affine_init(self.param_shapes(), dtype, device)

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

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        shape = self.normalized_shape
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"expected input (*, {', '.join(map(str, shape))}), got shape {tuple(x.shape)}"
            )
        weight = ctx.param("weight") if self.elementwise_affine else None
        bias = ctx.param("bias") if self.bias else None
        return F.layer_norm(x, shape, weight, bias, self.eps)


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
        return _affine_init(self.param_shapes(), dtype, device)

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
