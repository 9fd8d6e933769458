"""Elementwise layers, as in :mod:`torch.nn` (the softmax family: :mod:`._softmax`).

torch's ``inplace`` flag is accepted in configs and has no effect: nothing here ever
modifies its input. Only :class:`PReLU` has a parameter; only :class:`RReLU` is random (in
train mode, from the layer's key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import random as _random
from .._shapes import Shape, rank_known, show
from .._spec import Context, Spec
from ._check import number, positive_int


class _Elementwise(Spec):
    """A layer that maps each batch to a batch of the same shape, without parameters."""

    preserves_rank: ClassVar[bool] = True
    config_ignores: ClassVar[tuple[str, ...]] = ("inplace",)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return in_shape

    def _stacks_directly(self) -> bool:
        return type(self) in _POINTWISE

    def stacked(self, ctx: Context, params, x, in_axis):
        # Pointwise: the members' outputs are the layer on the stacked batch.
        if not self._stacks_directly() or in_axis != 0 or not isinstance(x, torch.Tensor):
            return NotImplemented
        return self.forward(ctx, x)


@dataclass(frozen=True, init=False)
class Identity(_Elementwise):
    """Returns its input, as :class:`torch.nn.Identity`.

    Like torch's, the constructor takes any arguments and ignores them, so
    ``Identity(54, unused_argument=0.1)`` stands in for a layer it replaces; they are not
    kept, so every ``Identity`` is the same spec. Any input, a tuple of tensors included.

    Arguments:
        *args: ignored, as torch ignores them.
        **kwargs: ignored, as torch ignores them.

    Shapes: the output is the input itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def forward(self, ctx: Context, x):
        return x


@dataclass(frozen=True)
class ReLU(_Elementwise):
    """``max(x, 0)``, never in place; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@dataclass(frozen=True)
class GELU(_Elementwise):
    """Gaussian error linear unit, ``x * Phi(x)``, as :class:`torch.nn.GELU`.

    Arguments:
        approximate: ``'none'`` for the exact ``Phi`` (the normal CDF), ``'tanh'`` for
            torch's tanh approximation.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    approximate: str = "none"

    def __post_init__(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(
                f"GELU: approximate must be 'none' or 'tanh', got {self.approximate!r}"
            )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@dataclass(frozen=True)
class SiLU(_Elementwise):
    """``x * sigmoid(x)``; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


@dataclass(frozen=True)
class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Elementwise):
    """Hyperbolic tangent; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


def _set_number(spec: Spec, field: str, **bounds: Any) -> None:
    """Check a number field (finite; within ``bounds``) and store it as a float."""
    value = number(spec.type_name, field, getattr(spec, field), **bounds)
    object.__setattr__(spec, field, value)


@dataclass(frozen=True)
class LeakyReLU(_Elementwise):
    """``max(x, 0) + negative_slope * min(x, 0)``, as :class:`torch.nn.LeakyReLU`.

    Arguments:
        negative_slope: the slope for negative inputs.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    negative_slope: float = 0.01

    def __post_init__(self):
        _set_number(self, "negative_slope")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)


@dataclass(frozen=True)
class ELU(_Elementwise):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``, as :class:`torch.nn.ELU`.

    Arguments:
        alpha: the scale of the negative part.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    alpha: float = 1.0

    def __post_init__(self):
        _set_number(self, "alpha")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


@dataclass(frozen=True)
class CELU(_Elementwise):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``, as :class:`torch.nn.CELU`.

    Arguments:
        alpha: the scale of the negative part; must not be 0 (torch refuses it when
            called).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    alpha: float = 1.0

    def __post_init__(self):
        _set_number(self, "alpha")
        if self.alpha == 0.0:
            raise ValueError("CELU: alpha must not be 0 (x / alpha), got 0.0")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.celu(x, self.alpha)


@dataclass(frozen=True)
class SELU(_Elementwise):
    """Scaled ELU with torch's fixed ``alpha`` and ``scale``, as :class:`torch.nn.SELU`; any
    shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.selu(x)


@dataclass(frozen=True)
class Mish(_Elementwise):
    """``x * tanh(softplus(x))``, as :class:`torch.nn.Mish`; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


@dataclass(frozen=True)
class Hardswish(_Elementwise):
    """``x * relu6(x + 3) / 6``, as :class:`torch.nn.Hardswish`; any shape in, the same out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)


@dataclass(frozen=True)
class Hardsigmoid(_Elementwise):
    """``relu6(x + 3) / 6``, as :class:`torch.nn.Hardsigmoid`; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


@dataclass(frozen=True)
class Hardtanh(_Elementwise):
    """``x`` clamped to ``[min_val, max_val]``, as :class:`torch.nn.Hardtanh`.

    ``min_val`` must be below ``max_val``, as torch's module asserts. torch's deprecated
    aliases ``min_value`` / ``max_value`` are not accepted: give ``min_val`` / ``max_val``.

    Arguments:
        min_val: the lower bound.
        max_val: the upper bound.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    min_val: float = -1.0
    max_val: float = 1.0

    def __post_init__(self):
        _set_number(self, "min_val")
        _set_number(self, "max_val")
        if not self.min_val < self.max_val:
            raise ValueError(
                f"Hardtanh: min_val must be below max_val, got min_val={self.min_val}, "
                f"max_val={self.max_val}"
            )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)


@dataclass(frozen=True)
class ReLU6(_Elementwise):
    """``min(max(x, 0), 6)``, as :class:`torch.nn.ReLU6` (a Hardtanh from 0 to 6); any shape
    in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, 0.0, 6.0)


@dataclass(frozen=True)
class Softplus(_Elementwise):
    """``log(1 + exp(beta * x)) / beta``, linear where ``beta * x > threshold``, as
    :class:`torch.nn.Softplus`.

    Arguments:
        beta: the sharpness; must not be 0.
        threshold: where ``beta * x > threshold`` the output is ``x`` (for numerical
            stability).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    beta: float = 1.0
    threshold: float = 20.0

    def __post_init__(self):
        _set_number(self, "beta")
        _set_number(self, "threshold")
        if self.beta == 0.0:
            raise ValueError("Softplus: beta must not be 0 (the output would be inf), got 0.0")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, self.beta, self.threshold)


@dataclass(frozen=True)
class Softsign(_Elementwise):
    """``x / (1 + |x|)``, as :class:`torch.nn.Softsign`; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.softsign(x)


@dataclass(frozen=True)
class Softshrink(_Elementwise):
    """``x - lambd`` above ``lambd``, ``x + lambd`` below ``-lambd``, else 0, as
    :class:`torch.nn.Softshrink`.

    Arguments:
        lambd: the half-width of the zero band; ``lambd >= 0`` as torch requires.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    lambd: float = 0.5

    def __post_init__(self):
        _set_number(self, "lambd", lo=0.0)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.softshrink(x, self.lambd)


@dataclass(frozen=True)
class Hardshrink(_Elementwise):
    """``x`` where ``|x| > lambd``, else 0, as :class:`torch.nn.Hardshrink`.

    Arguments:
        lambd: the half-width of the zero band.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    lambd: float = 0.5

    def __post_init__(self):
        _set_number(self, "lambd")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.hardshrink(x, self.lambd)


@dataclass(frozen=True)
class Tanhshrink(_Elementwise):
    """``x - tanh(x)``, as :class:`torch.nn.Tanhshrink`; any shape in, the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.tanhshrink(x)


@dataclass(frozen=True)
class Threshold(_Elementwise):
    """``x`` where ``x > threshold``, else ``value``, as :class:`torch.nn.Threshold`.

    Arguments:
        threshold: inputs at or below it are replaced (required, as in torch).
        value: what replaces them (required, as in torch).

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    threshold: float
    value: float

    def __post_init__(self):
        _set_number(self, "threshold")
        _set_number(self, "value")

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.threshold(x, self.threshold, self.value)


@dataclass(frozen=True)
class LogSigmoid(_Elementwise):
    """``log(sigmoid(x))``, computed stably, as :class:`torch.nn.LogSigmoid`; any shape in,
    the same shape out."""

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(x)


@dataclass(frozen=True)
class PReLU(_Elementwise):
    """Leaky ReLU with a learned slope, as :class:`torch.nn.PReLU`:
    ``max(x, 0) + weight * min(x, 0)``.

    Arguments:
        num_parameters: 1 (one slope shared by all channels) or the channel count ``C``.
        init: the initial slope.

    Shapes: any input for one slope. With ``C`` slopes, ``(N, C, *)`` as in torch (dim 1
    holds the channels), or one example ``(C, *)``: an input whose dim 1 has size ``C`` is
    read as a batch, as torch does; otherwise one whose dim 0 has size ``C`` is read as
    one example (torch refuses those, having no unbatched form), as per-sample code under
    :func:`torch.func.vmap` passes them. Params: ``weight (num_parameters,)``, filled with
    ``init``.
    """

    num_parameters: int = 1
    init: float = 0.25

    def __post_init__(self):
        positive_int("PReLU", "num_parameters", self.num_parameters)
        _set_number(self, "init")

    def param_shapes(self):
        return {"weight": (self.num_parameters,)}

    def init_params(self, key, *, dtype, device):
        return {"weight": torch.full((self.num_parameters,), self.init, dtype=dtype, device=device)}

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        n = self.num_parameters
        if n > 1:
            c = in_shape[0] if rank_known(in_shape) and in_shape else None
            if rank_known(in_shape) and not in_shape:
                raise self._error(
                    path, f"expected one example of shape ({n}, *) for {n} slopes, got ()"
                )
            if c is not None and c != n:
                raise self._error(
                    path,
                    f"expected {n} channels (num_parameters={n}), got input shape "
                    f"{show(in_shape)} with {c}",
                )
        return in_shape

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        n = self.num_parameters
        weight = ctx.param("weight")
        if n == 1 or (x.dim() >= 2 and x.shape[1] == n):
            return F.prelu(x, weight)
        if x.dim() == 0 or x.shape[0] != n:
            raise ValueError(
                f"expected input (N, {n}, *) or ({n}, *) (num_parameters={n}), got shape "
                f"{tuple(x.shape)}"
            )
        return F.prelu(x.unsqueeze(0), weight).squeeze(0)


@dataclass(frozen=True)
class RReLU(_Elementwise):
    """Randomised leaky ReLU, as :class:`torch.nn.RReLU`.

    In train mode each element ``x <= 0`` is multiplied by its own slope drawn uniformly
    from ``[lower, upper]`` (``lower + (upper - lower) * u``, ``u`` uniform in ``[0, 1)``:
    rounding may reach ``upper``, as in torch) from the layer's key (``fm.random``;
    torch's global generator is untouched); in eval mode every slope is
    ``(lower + upper) / 2``. With ``lower == upper`` the slope is fixed and train mode
    needs no key. Under :func:`torch.func.vmap` every sample draws from its own key, so
    vmap over ``fm.split(key, n)`` for per-sample slopes (a shared key gives every sample
    the same ones), as with :class:`Dropout`.

    Arguments:
        lower: the smallest slope.
        upper: the largest slope, at least ``lower``.

    Shapes: input ``(*)``, any shape; output of the same shape.
    """

    lower: float = 1.0 / 8
    upper: float = 1.0 / 3

    def __post_init__(self):
        _set_number(self, "lower")
        _set_number(self, "upper")
        if self.lower > self.upper:
            raise ValueError(
                f"RReLU: lower must be at most upper, got lower={self.lower}, upper={self.upper}"
            )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not ctx.train or self.lower == self.upper:
            # torch's eval rule: leaky_relu with the mean slope.
            return F.leaky_relu(x, (self.lower + self.upper) / 2)
        if not x.is_floating_point():
            raise TypeError(f"expected a floating input, got {x.dtype}")
        # u * (upper - lower) + lower from u in [0, 1), as torch's uniform sampler does it
        # (fm.random.uniform with bounds would also clamp below upper, outside a graph).
        u = _random.uniform(ctx.key(), x.shape, x.dtype, x.device)
        slope = u * (self.upper - self.lower) + self.lower
        return torch.where(x > 0, x, x * slope)


#: The layers above that act on each element alone, with no parameter and no randomness:
#: a Stack of them is the layer on the stacked batch (PReLU has a per-channel weight,
#: RReLU draws in train mode; the softmax family has a dim).
_POINTWISE = frozenset(
    {
        Identity,
        ReLU,
        GELU,
        SiLU,
        Sigmoid,
        Tanh,
        LeakyReLU,
        ELU,
        CELU,
        SELU,
        Mish,
        Hardswish,
        Hardsigmoid,
        Hardtanh,
        ReLU6,
        Softplus,
        Softsign,
        Softshrink,
        Hardshrink,
        Tanhshrink,
        Threshold,
        LogSigmoid,
    }
)
