"""Converters between the spatial layers of :mod:`funcmodels.nn` and their :mod:`torch.nn`
twins: Conv3d and the transposed convolutions, the 1-d and 3-d pools, the adaptive max
pools, the LP pools, the padding layers, the upsampling layers, PixelShuffle,
PixelUnshuffle and Unflatten.

Each takes the same constructor arguments in both libraries and keeps them as module
attributes of the same names, so the generic inference of :mod:`transforms._torch_layers`
reads them back. The exceptions: ``nn.LPPool1d`` only runs with an int ``kernel_size``
(it scales by it), so the spec's 1-tuples become ints; the max pools' ``return_indices``
has no spec field and is refused; a ``ZeroPad`` module whose ``value`` was changed is
refused, since the spec has none. Settings a spec cannot store (an ``LPPool`` with
``norm_type=inf``, an ``Unflatten`` over a named dim) are refused by the spec itself,
naming the module.

Importing this module registers the converters.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._module import register_converter
from ._twins import _infer_twin

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.Conv3d: nn.Conv3d,
    fnn.ConvTranspose1d: nn.ConvTranspose1d,
    fnn.ConvTranspose2d: nn.ConvTranspose2d,
    fnn.ConvTranspose3d: nn.ConvTranspose3d,
    fnn.MaxPool1d: nn.MaxPool1d,
    fnn.MaxPool3d: nn.MaxPool3d,
    fnn.AvgPool1d: nn.AvgPool1d,
    fnn.AvgPool3d: nn.AvgPool3d,
    fnn.AdaptiveMaxPool1d: nn.AdaptiveMaxPool1d,
    fnn.AdaptiveMaxPool2d: nn.AdaptiveMaxPool2d,
    fnn.AdaptiveMaxPool3d: nn.AdaptiveMaxPool3d,
    fnn.AdaptiveAvgPool3d: nn.AdaptiveAvgPool3d,
    fnn.LPPool1d: nn.LPPool1d,
    fnn.LPPool2d: nn.LPPool2d,
    fnn.LPPool3d: nn.LPPool3d,
    fnn.ZeroPad1d: nn.ZeroPad1d,
    fnn.ZeroPad2d: nn.ZeroPad2d,
    fnn.ZeroPad3d: nn.ZeroPad3d,
    fnn.ConstantPad1d: nn.ConstantPad1d,
    fnn.ConstantPad2d: nn.ConstantPad2d,
    fnn.ConstantPad3d: nn.ConstantPad3d,
    fnn.ReflectionPad1d: nn.ReflectionPad1d,
    fnn.ReflectionPad2d: nn.ReflectionPad2d,
    fnn.ReflectionPad3d: nn.ReflectionPad3d,
    fnn.ReplicationPad1d: nn.ReplicationPad1d,
    fnn.ReplicationPad2d: nn.ReplicationPad2d,
    fnn.ReplicationPad3d: nn.ReplicationPad3d,
    fnn.CircularPad1d: nn.CircularPad1d,
    fnn.CircularPad2d: nn.CircularPad2d,
    fnn.CircularPad3d: nn.CircularPad3d,
    fnn.Upsample: nn.Upsample,
    fnn.UpsamplingNearest2d: nn.UpsamplingNearest2d,
    fnn.UpsamplingBilinear2d: nn.UpsamplingBilinear2d,
    fnn.PixelShuffle: nn.PixelShuffle,
    fnn.PixelUnshuffle: nn.PixelUnshuffle,
    fnn.Unflatten: nn.Unflatten,
}

_ZERO_PADS = (fnn.ZeroPad1d, fnn.ZeroPad2d, fnn.ZeroPad3d)


def _build(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    values = field_values(spec)
    if type(spec) is fnn.LPPool1d:
        # torch's lp_pool1d multiplies by kernel_size, which must be an int there
        values["kernel_size"] = spec.kernel_size[0]
        values["stride"] = spec.stride[0]
    return TWINS[type(spec)](**values)


def _infer(spec_type: type[fm.Spec]) -> Callable[[nn.Module, Callable], fm.Spec]:
    generic = _infer_twin(spec_type)

    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        if getattr(module, "return_indices", False):
            raise ValueError(
                f"return_indices=True is not supported (fm.nn.{spec_type.__name__} returns "
                "the pooled values only)"
            )
        if spec_type in _ZERO_PADS and module.value != 0:
            raise ValueError(
                f"its fill value is {module.value!r}, but fm.nn.{spec_type.__name__} pads "
                f"with zeros; use ConstantPad{spec_type.__name__[-2:]} for another value"
            )
        return generic(module, child)

    return infer


for _spec_type, _module_type in TWINS.items():
    register_converter(_spec_type, _module_type, build=_build, infer=_infer(_spec_type))
