"""Layer specs mirroring :mod:`torch.nn`: same arguments, same parameter names and shapes."""

from ._activation import GELU, Identity, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from ._container import Flatten, Sequential
from ._conv import Conv1d, Conv2d
from ._linear import Linear

__all__ = [
    "GELU",
    "Conv1d",
    "Conv2d",
    "Flatten",
    "Identity",
    "Linear",
    "LogSoftmax",
    "ReLU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]
