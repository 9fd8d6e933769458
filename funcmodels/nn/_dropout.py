"""Dropout driven by an explicit PRNG key, as :class:`torch.nn.Dropout` in distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import random as _random
from .._shapes import Shape
from .._spec import Context, Spec
from ._check import number


@dataclass(frozen=True)
class Dropout(Spec):
    """Zero each element with probability ``p`` in train mode and scale the rest by
    ``1 / (1 - p)``, so the expected output equals the input; identity in eval mode.

    Arguments:
        p: drop probability in ``[0, 1]`` (stored as a float).

    Shapes: any input, output the same shape.

    In train mode the mask is a pure function of the layer's key (the key given to
    :func:`funcmodels.apply` with the layer path folded in): the same key gives the same
    mask and torch's global generator is untouched. ``p = 0`` and ``p = 1`` are
    deterministic and need no key. Under :func:`torch.func.vmap` every sample gets the mask
    of its own key, so for per-sample masks vmap over ``fm.split(key, n)`` along with the
    inputs; a single shared key gives every sample the same mask.
    """

    preserves_rank: ClassVar[bool] = True
    config_ignores: ClassVar[tuple[str, ...]] = ("inplace",)

    p: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "p", number("Dropout", "p", self.p, 0.0, 1.0))

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not ctx.train or self.p == 0.0:
            return x
        if self.p == 1.0:
            # A product rather than new zeros, as torch, so NaN and inf still propagate.
            return x * 0.0
        keep = _random.bernoulli(ctx.key(), 1.0 - self.p, x.shape, device=x.device)
        # torch's formula, x * (mask / (1 - p)): a product is about twice as fast as
        # torch.where here, and dropped NaN/inf entries stay NaN, as in torch.
        return x * (keep.to(x.dtype) / (1.0 - self.p))
