"""Config names of the built-in layers (see :func:`funcmodels.register_layer`).

Every layer is also found by its type name in any case, with or without ``_``/``-``
(``conv2d``, ``LayerNorm``, ``residual_block``); the short names of the seed article come
after the long ones, so configs written by ``to_config`` use the long ones.
"""

from __future__ import annotations

from .._registry import add_alias
from ._activation import GELU, Identity, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from ._container import Flatten, Sequential
from ._conv import Conv1d, Conv2d
from ._dropout import Dropout
from ._einops import Rearrange, Reduce
from ._linear import Linear
from ._norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from ._pool import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from ._residual import ResidualBlock
from ._stack import Stack

for _name, _cls in (
    ("linear", Linear),
    ("conv1d", Conv1d),
    ("conv2d", Conv2d),
    ("batchnorm1d", BatchNorm1d),
    ("batchnorm2d", BatchNorm2d),
    ("layernorm", LayerNorm),
    ("groupnorm", GroupNorm),
    ("identity", Identity),
    ("relu", ReLU),
    ("gelu", GELU),
    ("silu", SiLU),
    ("sigmoid", Sigmoid),
    ("tanh", Tanh),
    ("softmax", Softmax),
    ("logsoftmax", LogSoftmax),
    ("dropout", Dropout),
    ("maxpool2d", MaxPool2d),
    ("avgpool2d", AvgPool2d),
    ("adaptiveavgpool1d", AdaptiveAvgPool1d),
    ("adaptiveavgpool2d", AdaptiveAvgPool2d),
    ("flatten", Flatten),
    ("rearrange", Rearrange),
    ("reduce", Reduce),
    ("sequential", Sequential),
    ("residual_block", ResidualBlock),
    ("stack", Stack),
    # The seed article's short names.
    ("conv", Conv2d),
    ("bn", BatchNorm2d),
    ("pool", MaxPool2d),
    ("adaptive_pool", AdaptiveAvgPool2d),
):
    add_alias(_name, _cls)
