"""Dropout driven by explicit PRNG keys, as :mod:`torch.nn`'s dropout layers in
distribution: :class:`Dropout`, the channel-wise :class:`Dropout1d`, :class:`Dropout2d`
and :class:`Dropout3d`, and the self-normalising :class:`AlphaDropout` and
:class:`FeatureAlphaDropout`.

In train mode a layer's mask is a pure function of the layer's key (the key given to
:func:`funcmodels.apply` with the layer path folded in): the same key gives the same mask
and torch's global generator is untouched. ``p = 0`` and ``p = 1`` are deterministic and
need no key; eval mode is the identity. Under :func:`torch.func.vmap` every sample gets
the mask of its own key, so for per-sample masks vmap over ``fm.split(key, n)`` along with
the inputs; a single shared key gives every sample the same mask.

Each mask entry draws 16 random bits, so the keep probability ``1 - p`` is resolved to a
multiple of ``2**-16``: off by at most ``7.6e-6`` (exact for ``p`` = 0.5, 0.25, ...),
while kept entries are scaled by ``1 / (1 - p)`` exactly as in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._shapes import Shape, fit_rank, rank_known, show
from .._spec import Context, Spec
from ..random._samplers import keep_mask, scaled_keep_mask
from ._check import number

#: SELU's negative saturation, ``scale * alpha``, as torch's alpha dropout takes it
_SELU_SATURATION = 1.7580993408473766


class _DropoutBase(Spec):
    """``p`` (a float in ``[0, 1]``), torch's ignored ``inplace``, the shape rule."""

    preserves_rank: ClassVar[bool] = True
    config_ignores: ClassVar[tuple[str, ...]] = ("inplace",)

    def __post_init__(self):
        object.__setattr__(self, "p", number(self.type_name, "p", self.p, 0.0, 1.0))

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return in_shape

    def _keep(self, ctx: Context, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The mask of kept entries, of ``shape`` (broadcast over ``x``), in ``x``'s dtype."""
        return keep_mask(ctx.key(), 1.0 - self.p, tuple(shape), device=x.device).to(x.dtype)

    def _drop(self, ctx: Context, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """torch's dropout on ``x`` with a mask of ``shape``: ``x * (mask / (1 - p))``."""
        if not ctx.train or self.p == 0.0:
            return x
        if self.p == 1.0:
            # A product rather than new zeros, as torch, so NaN and inf still propagate.
            return x * 0.0
        # torch's formula, x * (mask / (1 - p)): a product is about twice as fast as
        # torch.where here, and dropped NaN/inf entries stay NaN, as in torch.
        return x * scaled_keep_mask(ctx.key(), self.p, tuple(shape), x.dtype, device=x.device)

    def _alpha_drop(self, ctx: Context, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """torch's alpha dropout on ``x`` with a mask of ``shape``: kept entries become
        ``a * x + a * alpha * p``, dropped ones ``a * alpha * (p - 1)``, with
        ``a = 1 / sqrt((alpha**2 * p + 1) * (1 - p))``, so that a zero-mean, unit-variance
        input keeps its mean and variance."""
        p = self.p
        if not ctx.train or p == 0.0 or x.numel() == 0:
            return x
        if p == 1.0:
            return x * 0.0
        alpha = _SELU_SATURATION
        a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
        keep = self._keep(ctx, x, shape)
        # The operations of torch's kernel, in its order, so kept values agree to the bit.
        b = (keep - 1).mul(alpha * a).add(alpha * a * p)
        return x * keep.mul(a) + b


@dataclass(frozen=True)
class Dropout(_DropoutBase):
    """Zero each element with probability ``p`` in train mode and scale the rest by
    ``1 / (1 - p)``, so the expected output equals the input; identity in eval mode.

    Arguments:
        p: drop probability in ``[0, 1]`` (stored as a float).

    Shapes: any input, output the same shape. Masks: see the module docstring.
    """

    p: float = 0.5

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return self._drop(ctx, x, x.shape)


def _feature_mask(x: torch.Tensor) -> tuple[int, ...]:
    """One mask entry per ``(sample, channel)``: ``(N, C, 1, ...)``, torch's feature noise."""
    return (x.shape[0], x.shape[1], *[1] * (x.dim() - 2))


class _ChannelDropout(_DropoutBase):
    """Dropout of whole channels of ``(N, C, *spatial)``, or of one example ``(C, *spatial)``
    (torch unsqueezes it); ``_n`` is the number of spatial dims."""

    _n: ClassVar[int]

    @property
    def example_ndim(self) -> int:  # type: ignore[override]
        return self._n + 1

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        dims = "C, " + ", ".join(("L",) if self._n == 1 else ("D", "H", "W"))
        return fit_rank(self, path, in_shape, self._n + 1, dims)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        n = self._n
        if x.dim() not in (n + 1, n + 2):
            spatial = "L" if n == 1 else "D, H, W"
            raise ValueError(
                f"expected input (N, C, {spatial}) or (C, {spatial}), got shape {tuple(x.shape)}"
            )
        batched = x.dim() == n + 2
        xb = x if batched else x.unsqueeze(0)
        out = self._drop(ctx, xb, _feature_mask(xb))
        return out if batched else out.squeeze(0)


@dataclass(frozen=True)
class Dropout1d(_ChannelDropout):
    """Zero whole channels with probability ``p`` in train mode (scaling the rest by
    ``1 / (1 - p)``), as :class:`torch.nn.Dropout1d`; identity in eval mode.

    Arguments:
        p: drop probability of a channel, in ``[0, 1]``.

    Shapes: input ``(N, C, L)`` or one example ``(C, L)``, output the same; each sample
    draws its own mask of ``C`` channels. Masks: see the module docstring.
    """

    _n: ClassVar[int] = 1

    p: float = 0.5


@dataclass(frozen=True)
class Dropout3d(_ChannelDropout):
    """Zero whole channels with probability ``p`` in train mode (scaling the rest by
    ``1 / (1 - p)``), as :class:`torch.nn.Dropout3d`; identity in eval mode.

    Arguments:
        p: drop probability of a channel, in ``[0, 1]``.

    Shapes: input ``(N, C, D, H, W)`` or one example ``(C, D, H, W)``, output the same.
    (torch also takes other ranks, with a deprecation warning; they are refused here.)
    """

    _n: ClassVar[int] = 3

    p: float = 0.5


@dataclass(frozen=True)
class Dropout2d(_DropoutBase):
    """Zero whole channels with probability ``p`` in train mode (scaling the rest by
    ``1 / (1 - p)``), as :class:`torch.nn.Dropout2d`; identity in eval mode.

    Arguments:
        p: drop probability of a channel, in ``[0, 1]``.

    Shapes: input ``(N, C, H, W)``, output the same. torch's rule for other ranks is kept:
    a 3-d input is read as ``(N, C, L)`` (torch does not treat it as one unbatched example,
    and warns), and any input of 2+ dims has one mask entry per element of its first two
    dims. So the layer has no example rank of its own; in front of a layer that has one (a
    convolution), :func:`funcmodels.apply` batches a single example first and the channels
    are dropped, which is what a per-sample function under vmap needs.
    """

    p: float = 0.5

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if rank_known(in_shape) and len(in_shape) < 1:
            raise self._error(path, f"expected one example with 1+ dims, got {show(in_shape)}")
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"expected input (N, C, *) with 2+ dims, got shape {tuple(x.shape)}")
        return self._drop(ctx, x, _feature_mask(x))


@dataclass(frozen=True)
class AlphaDropout(_DropoutBase):
    """Alpha dropout for self-normalising networks (after :class:`SELU`), as
    :class:`torch.nn.AlphaDropout`: in train mode each element is dropped with
    probability ``p`` to SELU's negative saturation, and the result is scaled and shifted
    so that a zero-mean, unit-variance input keeps its mean and variance; identity in eval
    mode.

    Arguments:
        p: drop probability in ``[0, 1]``.

    Shapes: any input, output the same shape. Kept entries are ``a * x + a * alpha * p``
    and dropped ones ``a * alpha * (p - 1)``, with ``alpha = 1.7580993408473766`` and
    ``a = 1 / sqrt((alpha**2 * p + 1) * (1 - p))``, computed as torch computes them.
    Masks: see the module docstring.
    """

    p: float = 0.5

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return self._alpha_drop(ctx, x, x.shape)


@dataclass(frozen=True)
class FeatureAlphaDropout(_DropoutBase):
    """Alpha dropout of whole channels, as :class:`torch.nn.FeatureAlphaDropout`: the rule
    of :class:`AlphaDropout` with one mask entry per ``(sample, channel)``.

    Arguments:
        p: drop probability of a channel, in ``[0, 1]``.

    Shapes: input ``(N, C, *)`` with 2+ dims, output the same. Like torch, the layer has
    no unbatched form: the first two dims of what it sees are the sample and the channel
    (in front of a layer that knows its example rank, :func:`funcmodels.apply` batches a
    single example first).
    """

    p: float = 0.5

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if rank_known(in_shape) and len(in_shape) < 1:
            raise self._error(path, f"expected one example with 1+ dims, got {show(in_shape)}")
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"expected input (N, C, *) with 2+ dims, got shape {tuple(x.shape)}")
        return self._alpha_drop(ctx, x, _feature_mask(x))
