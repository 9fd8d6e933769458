"""Linear layers, matching :class:`torch.nn.Linear` and :class:`torch.nn.Bilinear`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._context import TRANSFORM
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
from ._stack_mlp import batched_product, members_3d


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

    def _stacks_directly(self) -> bool:
        return type(self).forward is Linear.forward  # a subclass may compute otherwise

    def stacked(self, ctx: Context, params, x, in_axis):
        if not self._stacks_directly():
            return NotImplemented
        w, b = params["weight"], params.get("bias")
        if (
            not isinstance(x, torch.Tensor)
            or x.dim() < (1 if in_axis is None else 2)
            or x.shape[-1] != self.in_features
            or x.dtype != w.dtype
        ):
            return NotImplemented  # the lifted vmap gives the error, naming the layer
        n = w.shape[0]
        x3, lead = members_3d(x, n, in_axis)
        return batched_product(x3, w, b).reshape(n, *lead, w.shape[1])


@dataclass(frozen=True)
class Bilinear(Spec):
    """``y = x1 @ weight @ x2 + bias`` per output feature, as :class:`torch.nn.Bilinear`:
    ``y[..., o] = sum_ij x1[..., i] * weight[o, i, j] * x2[..., j] + bias[o]``.

    Arguments:
        in1_features: size of the last dim of the first input.
        in2_features: size of the last dim of the second input.
        out_features: size of the last output dim.
        bias: whether to add a learned bias.

    Shapes: the input is a pair ``(x1, x2)`` (a tuple or list) of shapes
    ``(*, in1_features)`` and ``(*, in2_features)`` with the same leading dims ``*``,
    which may be empty (a single example); output ``(*, out_features)``. For shape
    inference the input shape is the pair of example shapes (``fm.shapes`` and
    ``fm.init(..., input_shape=)`` take one shape, so they cannot describe this layer's
    input; give every size). Params: ``weight (out_features,
    in1_features, in2_features)``, ``bias (out_features,)``, both
    ``U(-1/sqrt(in1_features), 1/sqrt(in1_features))`` as in torch.

    In eager mode and under torch.compile the layer calls torch's kernel
    (:func:`torch.nn.functional.bilinear`); inside torch.func transforms (``vmap``, where
    that kernel has no batching rule) it computes the same sum with :func:`torch.einsum`,
    equal up to float rounding.
    """

    in1_features: int
    in2_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        for field in ("in1_features", "in2_features", "out_features"):
            positive_int("Bilinear", field, getattr(self, field))
        boolean("Bilinear", "bias", self.bias)

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in1_features, self.in2_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, key, *, dtype, device):
        bound = fan_in_bound(self.in1_features)
        return {
            name: uniform_param(key, name, shape, bound, dtype, device)
            for name, shape in self.param_shapes().items()
        }

    def out_shape(self, in_shape: Any, path: str = "", record: dict | None = None) -> Shape:
        if tuple(in_shape) == (...,):  # nothing known (a config checked without a shape)
            return (..., self.out_features)
        pair = in_shape if isinstance(in_shape, (tuple, list)) and len(in_shape) == 2 else None
        if pair is None or not all(isinstance(s, (tuple, list)) for s in pair):
            raise self._error(
                path,
                f"expected a pair of example shapes ((*, {self.in1_features}), "
                f"(*, {self.in2_features})), got {in_shape!r}",
            )
        s1, s2 = (tuple(s) for s in pair)
        for shape, n in ((s1, self.in1_features), (s2, self.in2_features)):
            if not shape or (shape[-1] not in (None, ...) and shape[-1] != n):
                raise self._error(
                    path,
                    f"expected a pair of example shapes ((*, {self.in1_features}), "
                    f"(*, {self.in2_features})), got ({show(s1) if s1 else '()'}, "
                    f"{show(s2) if s2 else '()'})",
                )
        if not (rank_known(s1) and rank_known(s2)):
            # The leading dims of the input whose rank is known, else unknown ones.
            known = s1 if rank_known(s1) else s2
            lead = known[:-1] if rank_known(known) else (...,)
            return (*lead, self.out_features)
        pairs = zip(s1[:-1], s2[:-1], strict=False)
        mismatch = len(s1) != len(s2) or any(None not in (a, b) and a != b for a, b in pairs)
        if mismatch:
            raise self._error(
                path,
                f"expected the same leading dims in both inputs, got {show(s1)} and {show(s2)}",
            )
        lead = tuple(a if a is not None else b for a, b in zip(s1[:-1], s2[:-1], strict=True))
        return (*lead, self.out_features)

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError(f"expected a pair of tensors (x1, x2), got {type(x).__name__}")
        x1, x2 = x
        if not (isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor)):
            raise TypeError(
                f"expected a pair of tensors (x1, x2), got ({type(x1).__name__}, "
                f"{type(x2).__name__})"
            )
        n1, n2 = self.in1_features, self.in2_features
        if (
            x1.dim() == 0
            or x1.shape[-1] != n1
            or x2.dim() == 0
            or x2.shape[-1] != n2
            or x1.shape[:-1] != x2.shape[:-1]
        ):
            raise ValueError(
                f"expected inputs (*, {n1}) and (*, {n2}) with the same leading dims, got "
                f"shapes {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        weight = ctx.param("weight")
        bias = ctx.param("bias") if self.bias else None
        if ctx.mode != TRANSFORM:
            return F.bilinear(x1, x2, weight, bias)
        out = torch.einsum("...i,oij,...j->...o", x1, weight, x2)
        return out if bias is None else out + bias
