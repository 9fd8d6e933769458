"""Converters between more layers of :mod:`funcmodels.nn` and their :mod:`torch.nn` twins:
the norms (BatchNorm3d, InstanceNorm, RMSNorm, LocalResponseNorm), the activations, the
dropout variants and Bilinear.

Every one of them takes the same constructor arguments in both libraries and keeps them as
module attributes of the same names, so the generic inference of
:mod:`transforms._torch_layers` reads them back (``bias`` of ``nn.Bilinear`` is a tensor
or ``None`` there, read as the flag). Settings a spec cannot express are refused, naming
the module: a norm built with torch's ``bias=False`` (a weight without a bias),
``nn.Softmin()`` with torch's deprecated implicit ``dim=None``.

``nn.Bilinear`` takes two arguments where the spec takes a pair, so a spec becomes a
:class:`BilinearModule`, an ``nn.Bilinear`` that takes the pair as well (and so works
inside ``nn.Sequential``); :func:`~transforms.from_module` reads both.

Importing this module registers the converters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._module import register_converter
from ._twins import _infer_twin

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.BatchNorm3d: nn.BatchNorm3d,
    fnn.InstanceNorm1d: nn.InstanceNorm1d,
    fnn.InstanceNorm2d: nn.InstanceNorm2d,
    fnn.InstanceNorm3d: nn.InstanceNorm3d,
    fnn.RMSNorm: nn.RMSNorm,
    fnn.LocalResponseNorm: nn.LocalResponseNorm,
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
    fnn.Dropout1d: nn.Dropout1d,
    fnn.Dropout2d: nn.Dropout2d,
    fnn.Dropout3d: nn.Dropout3d,
    fnn.AlphaDropout: nn.AlphaDropout,
    fnn.FeatureAlphaDropout: nn.FeatureAlphaDropout,
}


def _build(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return TWINS[type(spec)](**field_values(spec))


for _spec_type, _module_type in TWINS.items():
    register_converter(_spec_type, _module_type, build=_build, infer=_infer_twin(_spec_type))


class BilinearModule(nn.Bilinear):
    """:class:`torch.nn.Bilinear` that also takes its two inputs as one pair.

    :func:`~transforms.to_module` makes one for a :class:`funcmodels.nn.Bilinear`, whose
    input is a pair ``(x1, x2)``: ``module((x1, x2))`` is ``module(x1, x2)``, so the layer
    works inside ``nn.Sequential`` as the spec does inside ``fm.nn.Sequential``. Same
    arguments, parameters and ``state_dict`` as torch's; ``torch.fx`` traces it inside a
    container (the pair is indexed, not unpacked).

    Arguments: as :class:`torch.nn.Bilinear`.

    Shapes: inputs ``(*, in1_features)`` and ``(*, in2_features)``, output
    ``(*, out_features)``.
    """

    def forward(
        self, input1: torch.Tensor | Sequence[torch.Tensor], input2: torch.Tensor | None = None
    ) -> torch.Tensor:
        if input2 is None:
            input1, input2 = input1[0], input1[1]
        return super().forward(input1, input2)


def _build_bilinear(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return BilinearModule(**field_values(spec))


# torch's own layer converts to a spec; a spec becomes the subclass (registered last).
for _module_type in (nn.Bilinear, BilinearModule):
    register_converter(
        fnn.Bilinear, _module_type, build=_build_bilinear, infer=_infer_twin(fnn.Bilinear)
    )
