"""Layer specs mirroring :mod:`torch.nn`: same arguments, same parameter names and shapes."""

from . import _aliases  # noqa: F401  (registers the config names of the layers below)
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

__all__ = [
    "GELU",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "ReLU",
    "Rearrange",
    "Reduce",
    "ResidualBlock",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Stack",
    "Tanh",
]
