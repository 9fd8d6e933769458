"""Converters of the pooling layers: max, average, adaptive and LP pools in 1, 2 and 3
dims.

Each takes the same constructor arguments in both libraries. The exceptions:
``nn.LPPool1d`` only runs with an int ``kernel_size`` (it scales by it), so the spec's
1-tuples become ints; the max pools' ``return_indices`` has no spec field and is refused.
Settings a spec cannot store (an ``LPPool`` with ``norm_type=inf``) are refused by the
spec itself, naming the module.

Importing this module registers the converters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._twins import register_twins

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.MaxPool1d: nn.MaxPool1d,
    fnn.MaxPool2d: nn.MaxPool2d,
    fnn.MaxPool3d: nn.MaxPool3d,
    fnn.AvgPool1d: nn.AvgPool1d,
    fnn.AvgPool2d: nn.AvgPool2d,
    fnn.AvgPool3d: nn.AvgPool3d,
    fnn.AdaptiveAvgPool1d: nn.AdaptiveAvgPool1d,
    fnn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
    fnn.AdaptiveAvgPool3d: nn.AdaptiveAvgPool3d,
    fnn.AdaptiveMaxPool1d: nn.AdaptiveMaxPool1d,
    fnn.AdaptiveMaxPool2d: nn.AdaptiveMaxPool2d,
    fnn.AdaptiveMaxPool3d: nn.AdaptiveMaxPool3d,
    fnn.LPPool1d: nn.LPPool1d,
    fnn.LPPool2d: nn.LPPool2d,
    fnn.LPPool3d: nn.LPPool3d,
}


def _values(spec: fm.Spec) -> dict[str, Any]:
    values = field_values(spec)
    if type(spec) is fnn.LPPool1d:
        # torch's lp_pool1d multiplies by kernel_size, which must be an int there
        values["kernel_size"] = spec.kernel_size[0]
        values["stride"] = spec.stride[0]
    return values


register_twins(TWINS, values=_values)
