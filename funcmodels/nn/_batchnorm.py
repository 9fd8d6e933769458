"""Batch and instance normalisation, matching :class:`torch.nn.BatchNorm1d`/``2d``/``3d``
and :class:`torch.nn.InstanceNorm1d`/``2d``/``3d``.

BatchNorm (and InstanceNorm with ``track_running_stats``) keeps its running statistics in
:class:`~funcmodels.State` under torch's buffer names (``running_mean``, ``running_var``,
``num_batches_tracked``). In train mode the updated statistics are returned through the
context, never written into the given state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, check_size, fill, fit_rank, product, rank_known, show
from .._spec import Context, Spec
from ._check import affine_init, boolean, number, positive_int, sizes_known, under_vmap, vmap_active


@dataclass(frozen=True)
class _ChannelNorm(Spec):
    """Per-channel ``weight``/``bias`` and optional running statistics over ``(N, C, *)``:
    shared by BatchNorm and InstanceNorm. ``_ranks`` are the accepted batched ranks."""

    preserves_rank: ClassVar[bool] = True

    num_features: int | None = None
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("num_features",)
    _ranks: ClassVar[tuple[int, ...]]
    _dims: ClassVar[str]
    _example: ClassVar[str]

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
        return affine_init(self.param_shapes(), dtype, device)

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

    def _affine(self, ctx: Context) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.affine:
            return None, None
        return ctx.param("weight"), ctx.param("bias")


@dataclass(frozen=True)
class _BatchNorm(_ChannelNorm):
    """Shared by BatchNorm1d, BatchNorm2d and BatchNorm3d."""

    def _check_batch(self, x: torch.Tensor) -> None:
        """Batch statistics need a real batch: not one sample under vmap, not one value.

        A batch of one under vmap is a per-sample call; a larger one (vmap over an ensemble
        of models, say) has well-defined statistics and is allowed. Dynamo cannot trace
        functorch's wrapper queries, so under torch.compile the vmap check is skipped
        rather than breaking the graph. An empty batch passes, as in torch.
        """
        if x.shape[0] == 1 and not torch.compiler.is_compiling() and under_vmap(x):
            raise ValueError(
                "computes statistics over the batch in train mode, but under torch.func.vmap "
                "each sample is a batch of one, so per-sample statistics are ill-defined and "
                "per-sample gradients would be wrong; replace BatchNorm with GroupNorm (or "
                "LayerNorm), or run it in eval mode (train=False) with running statistics"
            )
        if x.numel() == self.num_features:
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
        weight, bias = self._affine(ctx)
        track = self.track_running_stats
        if track and not ctx.train:
            mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        self._check_batch(x)
        if track and x.numel() and self._one_pass(ctx, x):
            return self._train_one_pass(ctx, x, weight, bias)
        # No running tensors go in, so nothing is mutated; the update is computed below.
        out = F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if track:
            self._update_stats(ctx, x.detach())
        return out

    def _one_pass(self, ctx: Context, x: torch.Tensor) -> bool:
        """Whether ``F.batch_norm`` can update copies of the running statistics itself.

        Not under vmap (functorch's batch-norm rule refuses running statistics that are
        not batched like the input), asked of functorch's interpreter stack, which dynamo
        reads at trace time, so the answer holds under torch.compile too. Compiled, the
        kernel's momentum must be a constant: ``momentum=None`` (a factor read from the
        count) keeps the two-pass rule there. The dtypes must agree, since the kernel keeps
        the statistics in their own dtype where the two-pass rule converts the batch's.
        """
        if self.momentum is None and torch.compiler.is_compiling():
            return False
        mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
        return mean.dtype == var.dtype == x.dtype and not vmap_active()

    def _train_one_pass(self, ctx: Context, x, weight, bias) -> torch.Tensor:
        """Train mode in one pass over ``x``, as torch.nn: the kernel that normalises also
        moves the running statistics, here copies of the given ones (never mutated)."""
        count = ctx.buffer("num_batches_tracked") + 1
        # momentum None: the cumulative average, with torch.nn's factor read on the host.
        m = 1.0 / float(count) if self.momentum is None else self.momentum
        mean = ctx.buffer("running_mean").clone()
        var = ctx.buffer("running_var").clone()
        out = F.batch_norm(x, mean, var, weight, bias, True, m, self.eps)
        ctx.set_buffer("num_batches_tracked", count)
        ctx.set_buffer("running_mean", mean)
        ctx.set_buffer("running_var", var)
        return out

    def _update_stats(self, ctx: Context, x: torch.Tensor) -> None:
        """torch's rule: ``r = m * batch + (1 - m) * r``, unbiased variance, count + 1.

        An empty batch leaves the statistics as they are and still counts, as in torch.
        """
        count = ctx.buffer("num_batches_tracked") + 1
        ctx.set_buffer("num_batches_tracked", count)
        if x.numel() == 0:
            return
        mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
        dims = (0, *range(2, x.dim()))
        batch_var, batch_mean = torch.var_mean(x, dim=dims, correction=1)
        if self.momentum is None:
            # Cumulative moving average, as torch: the factor is 1 / batches seen.
            m = 1.0 / count.to(mean.dtype)
        else:
            m = self.momentum
        ctx.set_buffer("running_mean", m * batch_mean.to(mean.dtype) + (1 - m) * mean)
        ctx.set_buffer("running_var", m * batch_var.to(var.dtype) + (1 - m) * var)


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
    ill-defined: use :class:`GroupNorm` or eval mode for per-sample gradients). An empty
    batch (``N = 0``) gives an empty output, leaves the running statistics unchanged and
    counts in ``num_batches_tracked``, as in torch; one value per channel is an error.
    """

    _ranks: ClassVar[tuple[int, ...]] = (2, 3)
    _dims: ClassVar[str] = "(N, C) or (N, C, L)"
    _example: ClassVar[str] = "(C,) or (C, L)"


@dataclass(frozen=True)
class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, C, H, W)``, as :class:`torch.nn.BatchNorm2d`.

    Arguments:
        num_features: the channel count ``C``; ``None`` (or left out) to infer it from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the variance for stability.
        momentum: weight of the batch statistics in the running estimates; ``None`` gives
            the cumulative average over all batches seen, as in torch.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep running statistics (used in eval mode); without them
            the batch statistics are used in both modes.

    Shapes: input ``(N, C, H, W)`` (or one example ``(C, H, W)`` given to
    :func:`funcmodels.apply`, which batches it), output the same. Params and state as
    :class:`BatchNorm1d`.
    """

    example_ndim: ClassVar[int] = 3
    _ranks: ClassVar[tuple[int, ...]] = (4,)
    _dims: ClassVar[str] = "(N, C, H, W)"
    _example: ClassVar[str] = "(C, H, W)"


@dataclass(frozen=True)
class BatchNorm3d(_BatchNorm):
    """Batch normalisation over ``(N, C, D, H, W)``, as :class:`torch.nn.BatchNorm3d`.

    Arguments:
        num_features: the channel count ``C``; ``None`` (or left out) to infer it from the
            input shape given to :func:`funcmodels.init`.
        eps: added to the variance for stability.
        momentum: weight of the batch statistics in the running estimates; ``None`` gives
            the cumulative average over all batches seen, as in torch.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep running statistics (used in eval mode); without them
            the batch statistics are used in both modes.

    Shapes: input ``(N, C, D, H, W)`` (or one example ``(C, D, H, W)`` given to
    :func:`funcmodels.apply`, which batches it), output the same. Params and state as
    :class:`BatchNorm1d`, and the same rules in train mode.
    """

    example_ndim: ClassVar[int] = 4
    _ranks: ClassVar[tuple[int, ...]] = (5,)
    _dims: ClassVar[str] = "(N, C, D, H, W)"
    _example: ClassVar[str] = "(C, D, H, W)"


@dataclass(frozen=True)
class _InstanceNorm(_ChannelNorm):
    """Shared by InstanceNorm1d, 2d and 3d: torch's defaults (no affine, no running stats)
    and its unbatched form ``(C, *)``."""

    affine: bool = False
    track_running_stats: bool = False

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        out = super().out_shape(in_shape, path, record)
        spatial = product(out[1:]) if rank_known(out) else None
        if not self.track_running_stats and spatial == 1:
            # Without running statistics every call normalises with the instance's own.
            raise self._error(
                path,
                f"expected more than 1 spatial element per channel, got one example of "
                f"shape {show(in_shape)}",
            )
        return out

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        nd, c = self.example_ndim, self.num_features
        batched = x.dim() == nd + 1
        if x.dim() not in (nd, nd + 1) or x.shape[1 if batched else 0] != c:
            raise ValueError(
                f"expected input {self._dims} or {self._example} with C={c}, "
                f"got shape {tuple(x.shape)}"
            )
        xb = x if batched else x.unsqueeze(0)
        weight, bias = self._affine(ctx)
        if xb.numel() == 0:
            # torch fails on an empty batch with affine params (and writes NaN statistics);
            # an empty input gives an empty output and leaves the statistics as they are.
            out = xb.clone()
        elif self.track_running_stats and not ctx.train:
            mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
            out = F.instance_norm(xb, mean, var, weight, bias, False, 0.0, self.eps)
        else:
            if math.prod(xb.shape[2:]) == 1:
                raise ValueError(
                    f"expected more than 1 spatial element per channel (instance statistics), "
                    f"got input shape {tuple(x.shape)}"
                )
            # No running tensors go in, so nothing is mutated; the update is computed below.
            out = F.instance_norm(xb, None, None, weight, bias, True, 0.0, self.eps)
            if self.track_running_stats:
                self._update_stats(ctx, xb.detach())
        return out if batched else out.squeeze(0)

    def _update_stats(self, ctx: Context, x: torch.Tensor) -> None:
        """torch's rule: each instance updates a copy of the running statistics
        (``m * stat + (1 - m) * r``, unbiased variance), and the copies are averaged over the
        batch; ``momentum=None`` means 0 (no change). ``num_batches_tracked`` stays as it is."""
        mean, var = ctx.buffer("running_mean"), ctx.buffer("running_var")
        inst_var, inst_mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=1)
        m = 0.0 if self.momentum is None else self.momentum
        new_mean = (m * inst_mean.to(mean.dtype) + (1 - m) * mean).mean(0)
        new_var = (m * inst_var.to(var.dtype) + (1 - m) * var).mean(0)
        ctx.set_buffer("running_mean", new_mean)
        ctx.set_buffer("running_var", new_var)


_INSTANCE_DOC = """Instance normalisation over {dims} or one example {example}, as
    :class:`torch.nn.{name}`: each channel of each sample is normalised with its own mean
    and (biased) variance over the {what}.

    Arguments:
        num_features: the channel count ``C``; ``None`` (or left out) to infer it from the
            input shape given to :func:`funcmodels.init` (torch's
            :class:`torch.nn.Lazy{name}`, whose other defaults differ: give them).
        eps: added to the variance for stability.
        momentum: weight of the instance statistics in the running estimates; ``None``
            means 0, as in torch (the running statistics never change).
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros); default off.
        track_running_stats: keep running statistics, used in eval mode; default off, so
            both modes normalise with the instance statistics.

    Shapes: input {dims} or {example}, output the same. The channel count must equal
    ``num_features`` (torch only warns when the layer has no params to disagree with).
    Params: ``weight (C,)``, ``bias (C,)`` with ``affine``. State with
    ``track_running_stats``: ``running_mean (C,)``, ``running_var (C,)``,
    ``num_batches_tracked ()`` int64 (kept for torch's ``state_dict``; torch never
    increments it here).

    In train mode with running statistics each sample updates a copy of them and the copies
    are averaged over the batch (torch's rule). The statistics are per sample, so the layer
    is safe for per-sample gradients under :func:`torch.func.vmap`. An empty batch gives an
    empty output and leaves the statistics unchanged.
    """


@dataclass(frozen=True)
class InstanceNorm1d(_InstanceNorm):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm1d", dims="``(N, C, L)``", example="``(C, L)``", what="length"
    )

    example_ndim: ClassVar[int] = 2
    _ranks: ClassVar[tuple[int, ...]] = (3,)
    _dims: ClassVar[str] = "(N, C, L)"
    _example: ClassVar[str] = "(C, L)"


@dataclass(frozen=True)
class InstanceNorm2d(_InstanceNorm):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm2d",
        dims="``(N, C, H, W)``",
        example="``(C, H, W)``",
        what="spatial dims",
    )

    example_ndim: ClassVar[int] = 3
    _ranks: ClassVar[tuple[int, ...]] = (4,)
    _dims: ClassVar[str] = "(N, C, H, W)"
    _example: ClassVar[str] = "(C, H, W)"


@dataclass(frozen=True)
class InstanceNorm3d(_InstanceNorm):
    __doc__ = _INSTANCE_DOC.format(
        name="InstanceNorm3d",
        dims="``(N, C, D, H, W)``",
        example="``(C, D, H, W)``",
        what="spatial dims",
    )

    example_ndim: ClassVar[int] = 4
    _ranks: ClassVar[tuple[int, ...]] = (5,)
    _dims: ClassVar[str] = "(N, C, D, H, W)"
    _example: ClassVar[str] = "(C, D, H, W)"
