"""Config names of the built-in layers (see :func:`funcmodels.register_layer`).

Every exported layer is named by its class name in lower case (``conv2d``,
``layernorm``); the irregular names are listed below. Every layer is also found by its
type name in any case, with or without ``_``/``-`` (``Conv2d``, ``residual_block``); the
short names of the seed article come after the long ones, so configs written by
``to_config`` use the long ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._registry import add_alias
from ._adaptive_pool import AdaptiveAvgPool2d
from ._batchnorm import BatchNorm2d
from ._conv import Conv2d
from ._pool import MaxPool2d
from ._residual import ResidualBlock

#: a class whose config name is not its lower-case class name
_LONG = {ResidualBlock: "residual_block"}

#: the seed article's short names, registered after the long ones
_SHORT = (
    ("conv", Conv2d),
    ("bn", BatchNorm2d),
    ("pool", MaxPool2d),
    ("adaptive_pool", AdaptiveAvgPool2d),
)


def register(classes: Iterable[type]) -> None:
    """Register the config names of the exported layer classes: each one's long name
    (its class name in lower case, or its entry in ``_LONG``), then the short names."""
    for cls in classes:
        add_alias(_LONG.get(cls, cls.__name__.lower()), cls)
    for name, cls in _SHORT:
        add_alias(name, cls)
