"""Lookup tables, matching :class:`torch.nn.Embedding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import random as _random
from .._shapes import Shape
from .._spec import Context, Spec, name_hash
from ._check import boolean, number, positive_int

#: torch's ``embedding_renorm_`` adds this to the norm before dividing by it
_RENORM_EPS = 1e-7


@dataclass(frozen=True)
class Embedding(Spec):
    """Rows of a learned table looked up by integer index, as :class:`torch.nn.Embedding`.

    Arguments:
        num_embeddings: the number of rows (the vocabulary size).
        embedding_dim: the size of each row.
        padding_idx: a row that is zero at initialisation and gets no gradient (the
            padding token); negative values count from the end and are stored as
            ``num_embeddings + padding_idx``, as torch stores them.
        max_norm: rows looked up whose ``norm_type``-norm exceeds ``max_norm`` are scaled
            to ``max_norm`` (by ``max_norm / (norm + 1e-7)``, torch's factor).
        norm_type: the ``p`` of that norm.
        scale_grad_by_freq: scale each row's gradient by the inverse of its count in the
            input (under :func:`torch.func.vmap`, in each example's input).
        sparse: accepted so that specs and ``nn.Embedding(sparse=True)`` modules convert
            both ways; gradients here are always dense (:mod:`torch.func` computes dense
            gradients), and :func:`transforms.to_module` builds a module that gives sparse
            ones as torch does.

    ``max_norm`` differs from torch in one way: torch renormalises the rows of the
    *stored* weight in place during the forward pass, while here the rows are renormalised
    after the lookup and the stored weight is never changed. Outputs and gradients equal
    torch's (the gradient flows to the weight as if the renormalised rows were stored,
    which is what torch computes); the weight itself stays as it was, so after an optimiser
    step it differs from torch's by the renormalisation torch wrote into it, and
    ``fm.to_state_dict`` gives the weight before renormalisation.

    Shapes: input an integer tensor (int64 or int32) of any shape ``(*)``, batched or not;
    output ``(*, embedding_dim)``.
    Params: ``weight (num_embeddings, embedding_dim)`` from ``N(0, 1)``, the
    ``padding_idx`` row zero, as in torch.
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    sparse: bool = False

    def __post_init__(self):
        layer = "Embedding"
        positive_int(layer, "num_embeddings", self.num_embeddings)
        positive_int(layer, "embedding_dim", self.embedding_dim)
        idx = self.padding_idx
        if idx is not None:
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise TypeError(
                    f"{layer}: padding_idx must be an int or None, got {type(idx).__name__} {idx!r}"
                )
            n = self.num_embeddings
            if not -n <= idx < n:
                raise ValueError(
                    f"{layer}: padding_idx must be within num_embeddings (in [{-n}, {n})), "
                    f"got {idx}"
                )
            object.__setattr__(self, "padding_idx", idx % n)
        if self.max_norm is not None:
            object.__setattr__(self, "max_norm", number(layer, "max_norm", self.max_norm, 0.0))
        object.__setattr__(
            self, "norm_type", number(layer, "norm_type", self.norm_type, 0.0, lo_open=True)
        )
        boolean(layer, "scale_grad_by_freq", self.scale_grad_by_freq)
        boolean(layer, "sparse", self.sparse)

    def param_shapes(self):
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def init_params(self, key, *, dtype, device):
        k = _random.fold_in(key, name_hash("weight"))
        weight = _random.normal(k, (self.num_embeddings, self.embedding_dim), dtype, device)
        if self.padding_idx is not None:
            rows = torch.arange(self.num_embeddings, device=device).unsqueeze(1)
            weight = weight.masked_fill(rows == self.padding_idx, 0.0)
        return {"weight": weight}

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return (*in_shape, self.embedding_dim)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of indices, got {type(x).__name__}")
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"expected integer indices (int64 or int32), got dtype {x.dtype}; token ids "
                "are looked up, not multiplied (convert with x.long())"
            )
        n = self.num_embeddings
        # A data-dependent check, so only where the values can be read (torch's own
        # message, "index out of range in self", names neither the bound nor the values).
        if ctx.mode == "eager" and x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= n:
                raise ValueError(
                    f"expected indices in [0, {n}) (num_embeddings={n}), got values in [{lo}, {hi}]"
                )
        weight = ctx.param("weight")
        rows = F.embedding(x, weight, self.padding_idx, scale_grad_by_freq=self.scale_grad_by_freq)
        if self.max_norm is None:
            return rows
        looked_up = rows.detach()
        norm = torch.linalg.vector_norm(looked_up, ord=self.norm_type, dim=-1, keepdim=True)
        scale = torch.where(norm > self.max_norm, self.max_norm / (norm + _RENORM_EPS), 1.0)
        # The value of the renormalised rows, the gradient of the rows as looked up: what
        # torch computes by renormalising the stored weight in place before the lookup.
        return looked_up * scale + (rows - looked_up)
