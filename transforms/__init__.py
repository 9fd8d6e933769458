"""transforms: model-to-model transformations built on :mod:`funcmodels`.

Models out of models: :class:`MoE` (a vectorised mixture of experts over any expert spec),
:class:`EarlyExit` (per-sample early exit over a stack of blocks) and
:class:`SparseLinear` (masked-sparse linear layers, with :func:`sparsify` to prune a model
by magnitude and :func:`compress` for the sparse inference kernel); :mod:`transforms.dp`
makes DP-SGD's clipped gradient a function transform, and :mod:`transforms.distributed`
takes models beyond one process on :mod:`torch.distributed`. The bridge to
deployment: :func:`to_module` and :func:`from_module` convert between funcmodels'
``(params, state)`` and real :mod:`torch.nn` modules, :func:`fuse` folds BatchNorm into
the preceding convolution or linear layer of such a module (and :func:`fold_batchnorm`
does the same to ``(params, state)``), and :mod:`transforms.qat` prepares a module for
quantization-aware training. The core package never imports this one; layers defined
here plug into it through its registries (spec type names, config aliases, and
:func:`register_converter` for the torch bridge).
"""

# The converter modules register themselves with the bridge when imported.
from . import (  # noqa: F401
    _torch_layers,
    _torch_misc,
    _torch_recurrent,
    _torch_sequence,
    _torch_sparse,
    _torch_spatial,
    distributed,
    dp,
    qat,
)
from ._fuse import FoldedBatchNorm1d, fold_batchnorm, fuse
from ._module import FunctionalModule, from_module, register_converter, to_module
from ._prune import compress, decompress, polynomial_sparsity, sparsify
from .early_exit import Calibration, EarlyExit, calibrate_threshold, deep_supervision_loss
from .moe import MoE, moe_aux_loss
from .sparse import CompressedLinear, SparseLinear

# isort: split
# Registers Repeat's converter through the public names above, so it comes after them.
from . import _torch_repeat  # noqa: F401

__all__ = [
    "Calibration",
    "CompressedLinear",
    "EarlyExit",
    "FoldedBatchNorm1d",
    "FunctionalModule",
    "MoE",
    "SparseLinear",
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
    "sparsify",
    "to_module",
]
