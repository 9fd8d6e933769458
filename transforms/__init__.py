"""transforms: model-to-model transformations built on :mod:`funcmodels`.

One concept per file or folder; this file only re-exports:

* :mod:`transforms.moe`: :class:`MoE`, a vectorised mixture of experts over any expert
  spec (its routing in ``_routing.py``, shared with expert parallelism);
* :mod:`transforms.early_exit`: :class:`EarlyExit`, per-sample early exit over a stack
  of blocks;
* :mod:`transforms.sparse`: :class:`SparseLinear` (masked-sparse linear layers) and its
  inference form :class:`CompressedLinear`, their kernels, :func:`sparsify` (pruning by
  magnitude) and :func:`compress`;
* :mod:`transforms.dp`: DP-SGD's clipped gradient as a function transform, the
  per-layer closed forms behind it, noise and accounting;
* :mod:`transforms.bridge`: :func:`to_module` and :func:`from_module` between
  funcmodels' ``(params, state)`` and real :mod:`torch.nn` modules (one converter table
  per layer family), :func:`fuse` (BatchNorm folded into the layer before it, in a
  module) and :func:`fold_batchnorm` (the same on ``(params, state)``), and
  :class:`TorchModule`, any torch module as a layer;
* :mod:`transforms.distributed`: models beyond one process on :mod:`torch.distributed`;
* :mod:`transforms.qat`: a module prepared for quantization-aware training.

The core package never imports this one, and this one uses only the public names of the
core (:mod:`funcmodels.extend` included); layers defined here plug into the core through
its registries (spec type names, config aliases, and :func:`register_converter` for the
torch bridge).
"""

from . import bridge, distributed, dp, qat, sparse
from .bridge import (
    FoldedBatchNorm1d,
    FunctionalModule,
    TorchModule,
    fold_batchnorm,
    from_module,
    fuse,
    register_converter,
    register_module_class,
    to_module,
)
from .early_exit import Calibration, EarlyExit, calibrate_threshold, deep_supervision_loss
from .moe import MoE, moe_aux_loss
from .sparse import (
    CompressedLinear,
    SparseLinear,
    compress,
    decompress,
    polynomial_sparsity,
    sparsify,
)

__all__ = [
    "Calibration",
    "CompressedLinear",
    "EarlyExit",
    "FoldedBatchNorm1d",
    "FunctionalModule",
    "MoE",
    "SparseLinear",
    "TorchModule",
    "bridge",
    "calibrate_threshold",
    "compress",
    "decompress",
    "deep_supervision_loss",
    "distributed",
    "dp",
    "fold_batchnorm",
    "from_module",
    "fuse",
    "moe_aux_loss",
    "polynomial_sparsity",
    "qat",
    "register_converter",
    "register_module_class",
    "sparse",
    "sparsify",
    "to_module",
]
