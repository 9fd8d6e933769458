"""Sparse weights: masked-sparse layers, their kernels, pruning and compression.

* :class:`SparseLinear` (``y = x @ (W * M).T + b``, the mask ``M`` kept as state) and its
  inference form :class:`CompressedLinear` (the kept weights in CSR order), in
  ``_layers.py``;
* the kernels both run (a masked dense autograd Function, a CSR kernel with cached index
  patterns), in ``_kernels.py``;
* :func:`sparsify` (magnitude pruning of a model's ``Linear`` layers, gradual with
  :func:`polynomial_sparsity`), :func:`compress` and :func:`decompress` on ``(params,
  state)``, in ``_prune.py``.

Their ``torch.nn`` forms are in :mod:`transforms.bridge`.
"""

from ._layers import (
    CROSSOVER,
    INIT_MASKS,
    KERNELS,
    PATTERNS,
    CompressedLinear,
    SparseLinear,
    kept_count,
    magnitude_mask,
)
from ._prune import compress, decompress, polynomial_sparsity, sparsify

__all__ = [
    "CROSSOVER",
    "INIT_MASKS",
    "KERNELS",
    "PATTERNS",
    "CompressedLinear",
    "SparseLinear",
    "compress",
    "decompress",
    "kept_count",
    "magnitude_mask",
    "polynomial_sparsity",
    "sparsify",
]
