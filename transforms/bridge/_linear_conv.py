"""Converters of the linear and convolution layers: Linear, Bilinear, Conv1d/2d/3d and
ConvTranspose1d/2d/3d.

Each takes the same constructor arguments in both libraries, ``bias`` the flag of a
tensor or ``None`` on the module. :func:`~transforms.from_module` also reads an
``nn.Linear`` pruned with ``torch.nn.utils.prune`` (``weight_orig`` and ``weight_mask``)
as a :class:`~transforms.SparseLinear`. ``nn.Bilinear`` takes two arguments where the
spec takes a pair, so a spec becomes a :class:`BilinearModule`, an ``nn.Bilinear`` that
takes the pair as well (and so works inside ``nn.Sequential``); ``from_module`` reads both.

Importing this module registers the converters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

import funcmodels as fm

from ..sparse import SparseLinear
from ._module import register_converter
from ._twins import build_twin, infer_twin, register_twins, register_with_subclass

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.Conv1d: nn.Conv1d,
    fnn.Conv2d: nn.Conv2d,
    fnn.Conv3d: nn.Conv3d,
    fnn.ConvTranspose1d: nn.ConvTranspose1d,
    fnn.ConvTranspose2d: nn.ConvTranspose2d,
    fnn.ConvTranspose3d: nn.ConvTranspose3d,
}
register_twins(TWINS)

_infer_dense_linear = infer_twin(fnn.Linear)


def _infer_linear(module: nn.Module, child: Callable) -> fm.Spec:
    """``nn.Linear``, or a ``torch.nn.utils.prune``-pruned one as a ``SparseLinear``."""
    mask = module._buffers.get("weight_mask")
    if "weight_orig" not in module._parameters or mask is None:
        return _infer_dense_linear(module, child)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            "its weight_mask is not binary (0 and 1 only), so it is not a pruning mask"
        )
    kept = int(mask.count_nonzero())
    sparsity = min(1.0 - kept / max(mask.numel(), 1), 1.0 - 1e-9)
    return SparseLinear(
        module.in_features, module.out_features, module.bias is not None, sparsity=sparsity
    )


register_converter(fnn.Linear, nn.Linear, build=build_twin(nn.Linear), infer=_infer_linear)


class BilinearModule(nn.Bilinear):
    """:class:`torch.nn.Bilinear` that also takes its two inputs as one pair.

    :func:`~transforms.to_module` makes one for a :class:`funcmodels.nn.Bilinear`, whose
    input is a pair ``(x1, x2)``: ``module((x1, x2))`` is ``module(x1, x2)``, so the layer
    works inside ``nn.Sequential`` as the spec does inside ``fm.nn.Sequential``. Same
    arguments, parameters and ``state_dict`` as torch's; ``torch.fx`` traces it inside a
    container (the pair is indexed, not unpacked).

    Arguments:
        in1_features (int): size of the last dim of the first input.
        in2_features (int): size of the last dim of the second input.
        out_features (int): size of the last dim of the output.
        bias (bool): whether to add a learned bias.
        device (torch.device | str | None): where the parameters are made.
        dtype (torch.dtype | None): the parameters' dtype.

    Shapes: inputs ``(*, in1_features)`` and ``(*, in2_features)``, output
    ``(*, out_features)``.
    """

    def forward(
        self, input1: torch.Tensor | Sequence[torch.Tensor], input2: torch.Tensor | None = None
    ) -> torch.Tensor:
        if input2 is None:
            input1, input2 = input1[0], input1[1]
        return super().forward(input1, input2)


register_with_subclass(
    fnn.Bilinear,
    (nn.Bilinear, BilinearModule),
    build=build_twin(BilinearModule),
    infer=infer_twin(fnn.Bilinear),
)
