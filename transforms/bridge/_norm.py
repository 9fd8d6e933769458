"""Converters of the normalisation layers: BatchNorm1d/2d/3d, LayerNorm, GroupNorm,
InstanceNorm1d/2d/3d, RMSNorm, LocalResponseNorm, and the :class:`FoldedBatchNorm1d`
that :func:`~transforms.fold_batchnorm` leaves after a Linear.

Each takes the same constructor arguments in both libraries. Settings a spec cannot
express are refused, naming the module: a norm built with torch's ``bias=False`` (a
weight without a bias).

Importing this module registers the converters.
"""

from __future__ import annotations

from torch import nn

import funcmodels as fm

from ._fuse import FoldedBatchNorm1d, FoldedBatchNorm1dModule
from ._module import register_converter
from ._twins import register_twins

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.BatchNorm1d: nn.BatchNorm1d,
    fnn.BatchNorm2d: nn.BatchNorm2d,
    fnn.BatchNorm3d: nn.BatchNorm3d,
    fnn.LayerNorm: nn.LayerNorm,
    fnn.GroupNorm: nn.GroupNorm,
    fnn.InstanceNorm1d: nn.InstanceNorm1d,
    fnn.InstanceNorm2d: nn.InstanceNorm2d,
    fnn.InstanceNorm3d: nn.InstanceNorm3d,
    fnn.RMSNorm: nn.RMSNorm,
    fnn.LocalResponseNorm: nn.LocalResponseNorm,
}
register_twins(TWINS)

register_converter(
    FoldedBatchNorm1d,
    FoldedBatchNorm1dModule,
    build=lambda spec, child: FoldedBatchNorm1dModule(),
    infer=lambda module, child: FoldedBatchNorm1d(),
)
