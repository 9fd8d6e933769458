from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._spec import Context, Spec
from ._check import boolean, fan_in_bound, positive_int, uniform_param


@dataclass(frozen=True)
class Linear(Spec):
    """``y = x @ weight.T + bias``, as :class:`torch.nn.Linear`.

    Arguments:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        bias: whether to add a learned bias.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``; ``*`` may be empty.
    Params: ``weight (out_features, in_features)``, ``bias (out_features,)``, both
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as in torch.
    """

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        positive_int("Linear", "in_features", self.in_features)
        positive_int("Linear", "out_features", self.out_features)
        boolean("Linear", "bias", self.bias)

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, key, dtype):
        bound = fan_in_bound(self.in_features)
        return {
            name: uniform_param(key, name, shape, bound, dtype)
            for name, shape in self.param_shapes().items()
        }

    def forward(self, ctx: Context, path: str, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise self._error(path, f"expected a tensor, got {type(x).__name__}", TypeError)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise self._error(
                path,
                f"expected input (*, {self.in_features}), got shape {tuple(x.shape)}",
            )
        p = ctx.params
        return F.linear(x, p[path + "weight"], p.get(path + "bias"))
