"""The bridge between funcmodels and :mod:`torch.nn`: ``to_module``/``from_module``, the
converters, and BatchNorm folding (``fuse``, ``fold_batchnorm``)."""

# The converter modules register themselves when imported.
from . import _activation, _recurrent, _reshape, _sequence, _sparse, _twins  # noqa: F401
from ._activation import BilinearModule
from ._fuse import FoldedBatchNorm1d, FoldedBatchNorm1dModule, fold_batchnorm, fuse
from ._module import FunctionalModule, from_module, register_converter, to_module
from ._sequence import MultiheadAttentionModule
from ._sparse import CompressedLinearModule, SparseLinearModule
from ._twins import RearrangeModule, ReduceModule, ResidualBlockModule

__all__ = [
    "BilinearModule",
    "CompressedLinearModule",
    "FoldedBatchNorm1d",
    "FoldedBatchNorm1dModule",
    "FunctionalModule",
    "MultiheadAttentionModule",
    "RearrangeModule",
    "ReduceModule",
    "ResidualBlockModule",
    "SparseLinearModule",
    "fold_batchnorm",
    "from_module",
    "fuse",
    "register_converter",
    "to_module",
]
