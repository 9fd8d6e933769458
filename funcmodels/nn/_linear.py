from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape, fill, product, rank_known, show
from .._spec import Context, Spec
from ._check import (
    boolean,
    fan_in_bound,
    positive_int,
    sizes_known,
    torch_signature,
    uniform_param,
)


@torch_signature
@dataclass(frozen=True, init=False)
class Linear(Spec):
    """``y = x @ weight.T + bias``, as :class:`torch.nn.Linear`.

    Arguments:
        in_features: size of the last input dimension; ``None`` (or left out, as in
            ``Linear(out_features=10)``) to infer it from the input shape given to
            :func:`funcmodels.init`.
        out_features: size of the last output dimension.
        bias: whether to add a learned bias.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``; ``*`` may be empty.
    Params: ``weight (out_features, in_features)``, ``bias (out_features,)``, both
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as in torch.
    """

    inferred_fields: ClassVar[tuple[str, ...]] = ("in_features",)

    in_features: int | None = None
    out_features: int
    bias: bool = True

    def __post_init__(self):
        if self.in_features is not None:
            positive_int("Linear", "in_features", self.in_features)
        positive_int("Linear", "out_features", self.out_features)
        boolean("Linear", "bias", self.bias)

    def param_shapes(self):
        sizes_known(self)
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, key, *, dtype, device):
        sizes_known(self)
        bound = fan_in_bound(self.in_features)
        return {
            name: uniform_param(key, name, shape, bound, dtype, device)
            for name, shape in self.param_shapes().items()
        }

    def _split(self, path: str, in_shape: Shape) -> tuple[Shape, Any]:
        """``(leading dims, feature size)`` of an input; the size is ``None`` if unknown."""
        if not in_shape:
            raise self._error(
                path, "expected one example of shape (*, in_features), got a scalar shape ()"
            )
        if in_shape[-1] is ...:
            return in_shape, None
        return in_shape[:-1], in_shape[-1]

    def resolve(self, in_shape: Shape, path: str = "") -> Linear:
        _, last = self._split(path, in_shape)
        if self.in_features is not None or last is None:
            return self
        return fill(self, path, in_features=last)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        lead, last = self._split(path, in_shape)
        n = self.in_features
        if last is None and rank_known(in_shape) and len(in_shape) >= 2:
            # Only a size-dependent dim (conv or pool output) is unknown here: applying a
            # Linear over it is almost always a forgotten flatten.
            raise self._error(
                path,
                f"expected {n if n is not None else 'in_features'} input features in the last "
                f"dim, got input of shape {show(in_shape)}, whose last dim depends on the "
                "input size; a 'flatten' is probably missing before this layer (give the "
                "input shape to check the real sizes)",
            )
        if n is not None and last is not None and last != n:
            hint = ""
            flat = product(in_shape) if rank_known(in_shape) and len(in_shape) >= 2 else None
            if flat is not None:
                hint = (
                    "; a 'flatten' before it would give exactly that"
                    if flat == n
                    else f"; flattened, this input would have {flat} features"
                )
            raise self._error(
                path,
                f"expected {n} input features (input (*, {n})), got input shape "
                f"{show(in_shape)} with {last} features in its last dim{hint}",
            )
        return (*lead, self.out_features)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (*, {self.in_features}), got shape {tuple(x.shape)}")
        return F.linear(x, ctx.param("weight"), ctx.param("bias") if self.bias else None)
