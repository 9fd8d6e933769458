"""Converters of the activations (Identity, ReLU, GELU, the softmaxes, PReLU, ...) and of
the dropout layers.

Each takes the same constructor arguments in both libraries and keeps them as module
attributes of the same names. Settings a spec cannot express are refused by the spec,
naming the module: ``nn.Softmin()`` with torch's deprecated implicit ``dim=None``, say.

Importing this module registers the converters.
"""

from __future__ import annotations

from torch import nn

import funcmodels as fm

from ._twins import register_twins

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
ACTIVATIONS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.Identity: nn.Identity,
    fnn.ReLU: nn.ReLU,
    fnn.GELU: nn.GELU,
    fnn.SiLU: nn.SiLU,
    fnn.Sigmoid: nn.Sigmoid,
    fnn.Tanh: nn.Tanh,
    fnn.Softmax: nn.Softmax,
    fnn.LogSoftmax: nn.LogSoftmax,
    fnn.LeakyReLU: nn.LeakyReLU,
    fnn.ELU: nn.ELU,
    fnn.CELU: nn.CELU,
    fnn.SELU: nn.SELU,
    fnn.GLU: nn.GLU,
    fnn.Mish: nn.Mish,
    fnn.Hardswish: nn.Hardswish,
    fnn.Hardsigmoid: nn.Hardsigmoid,
    fnn.Hardtanh: nn.Hardtanh,
    fnn.ReLU6: nn.ReLU6,
    fnn.Softplus: nn.Softplus,
    fnn.Softsign: nn.Softsign,
    fnn.Softshrink: nn.Softshrink,
    fnn.Hardshrink: nn.Hardshrink,
    fnn.Tanhshrink: nn.Tanhshrink,
    fnn.Threshold: nn.Threshold,
    fnn.LogSigmoid: nn.LogSigmoid,
    fnn.Softmin: nn.Softmin,
    fnn.Softmax2d: nn.Softmax2d,
    fnn.PReLU: nn.PReLU,
    fnn.RReLU: nn.RReLU,
}
DROPOUTS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.Dropout: nn.Dropout,
    fnn.Dropout1d: nn.Dropout1d,
    fnn.Dropout2d: nn.Dropout2d,
    fnn.Dropout3d: nn.Dropout3d,
    fnn.AlphaDropout: nn.AlphaDropout,
    fnn.FeatureAlphaDropout: nn.FeatureAlphaDropout,
}
register_twins(ACTIVATIONS)
register_twins(DROPOUTS)
