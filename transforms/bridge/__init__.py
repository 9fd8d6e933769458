"""The bridge between funcmodels and :mod:`torch.nn`.

* :func:`to_module` and :func:`from_module` convert between ``(params, state)`` and real
  ``torch.nn`` modules; :class:`FunctionalModule` runs a spec without a converter, and
  :func:`register_converter` teaches both directions a new layer type (``_module.py``);
* one converter table per layer family: linear and convolution, norms, activations and
  dropout, pools, reshaping and resampling, containers, recurrent, sequence and
  attention, sparse, Repeat (``_linear_conv.py`` ... ``_sparse.py``, ``_repeat.py``),
  each registered by the one loop of ``_twins.py`` where the layers are field-by-field
  twins; the module classes some specs become (:class:`ResidualBlockModule`,
  :class:`BilinearModule`, ...);
* :class:`TorchModule`: any torch module as a layer, run by ``functional_call``
  (``opaque.py``; its skeleton in ``_skeleton.py``); :func:`register_module_class`
  lets files name a module class (``_recipes.py``, with the trust model); where
  ``from_module`` stops converting is ``_boundary.py``;
* :func:`fuse` folds eval-mode BatchNorm into the layer before it in a module (an fx
  graph), :func:`fold_batchnorm` does the same to ``(params, state)``, leaving a
  :class:`FoldedBatchNorm1d` after a Linear (``_fuse.py``).
"""

# The converter tables register themselves when imported.
from . import (  # noqa: F401
    _activation,
    _container,
    _linear_conv,
    _norm,
    _pool,
    _recurrent,
    _repeat,
    _reshape,
    _sequence,
    _sparse,
)
from ._container import ResidualBlockModule
from ._fuse import FoldedBatchNorm1d, FoldedBatchNorm1dModule, fold_batchnorm, fuse
from ._linear_conv import BilinearModule
from ._module import FunctionalModule, from_module, register_converter, to_module
from ._recipes import register_module_class, unregister_module_class
from ._repeat import RepeatModule
from ._reshape import RearrangeModule, ReduceModule
from ._sequence import MultiheadAttentionModule
from ._sparse import CompressedLinearModule, SparseLinearModule
from .opaque import TorchModule

__all__ = [
    "BilinearModule",
    "CompressedLinearModule",
    "FoldedBatchNorm1d",
    "FoldedBatchNorm1dModule",
    "FunctionalModule",
    "MultiheadAttentionModule",
    "RearrangeModule",
    "ReduceModule",
    "RepeatModule",
    "ResidualBlockModule",
    "SparseLinearModule",
    "TorchModule",
    "fold_batchnorm",
    "from_module",
    "fuse",
    "register_converter",
    "register_module_class",
    "to_module",
    "unregister_module_class",
]
