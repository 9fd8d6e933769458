"""Converters of the sparse layers.

:class:`~transforms.SparseLinear` becomes :class:`SparseLinearModule` (``weight``,
``bias``, a ``mask`` buffer; ``F.linear(x, weight * mask, bias)``, fx-traceable), and
:class:`~transforms.CompressedLinear` becomes :class:`CompressedLinearModule`, which runs
the CSR kernel. (An ``nn.Linear`` pruned with ``torch.nn.utils.prune`` is read as a
``SparseLinear`` by the Linear converter, in ``_linear_conv.py``.)

Importing this module registers the converters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import funcmodels as fm

from ..sparse import CompressedLinear, SparseLinear
from ..sparse._kernels import csr_matrix, dense_weight
from ._module import register_converter


class SparseLinearModule(nn.Module):
    """``y = x @ (weight * mask).T + bias``, the :mod:`torch.nn` form of
    :class:`~transforms.SparseLinear`; ``state_dict`` keys ``weight``, ``bias``, ``mask``.
    The spec's other fields (initial sparsity, kernel choice) are kept as ``self.spec``.

    Arguments:
        spec: the :class:`~transforms.SparseLinear` it stands for; the tensors (made
            empty, the mask all true) are filled by ``load_state_dict``.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``."""

    def __init__(self, spec: SparseLinear):
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.weight = nn.Parameter(torch.empty(spec.out_features, spec.in_features))
        self.bias = nn.Parameter(torch.empty(spec.out_features)) if spec.bias else None
        self.register_buffer(
            "mask", torch.ones(spec.out_features, spec.in_features, dtype=torch.bool)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class CompressedLinearModule(nn.Module):
    """The :mod:`torch.nn` form of :class:`~transforms.CompressedLinear`: the kept weights
    (``values``) and int32 CSR indices (``crow_indices``, ``col_indices``); without autograd
    the forward is a sparse-dense product, with it a dense product of the scattered
    weight (the same values).

    Arguments:
        spec: the :class:`~transforms.CompressedLinear` it stands for; the tensors are
            filled by ``load_state_dict``.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``."""

    def __init__(self, spec: CompressedLinear):
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        self.values = nn.Parameter(torch.empty(spec.nnz))
        self.bias = nn.Parameter(torch.empty(spec.out_features)) if spec.bias else None
        self.register_buffer("crow_indices", torch.zeros(spec.out_features + 1, dtype=torch.int32))
        self.register_buffer("col_indices", torch.zeros(spec.nnz, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        if torch.is_grad_enabled() and (self.values.requires_grad or x.requires_grad):
            weight = dense_weight(self.values, self.crow_indices, self.col_indices, shape)
            return F.linear(x, weight, self.bias)
        csr = csr_matrix(self.crow_indices, self.col_indices, self.values, shape)
        x2 = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(csr, x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def _infer_sparse(module: nn.Module, child: Callable) -> fm.Spec:
    spec = getattr(module, "spec", None)
    if not isinstance(spec, SparseLinear):
        raise TypeError("expected a SparseLinearModule made by transforms.to_module")
    return spec


def _infer_compressed(module: nn.Module, child: Callable) -> fm.Spec:
    spec = getattr(module, "spec", None)
    if not isinstance(spec, CompressedLinear):
        raise TypeError("expected a CompressedLinearModule made by transforms.to_module")
    return spec


register_converter(
    SparseLinear, SparseLinearModule, build=lambda s, c: SparseLinearModule(s), infer=_infer_sparse
)
register_converter(
    CompressedLinear,
    CompressedLinearModule,
    build=lambda s, c: CompressedLinearModule(s),
    infer=_infer_compressed,
)
