"""A 3x3-3x3 residual block with optional squeeze-and-excitation and projection shortcut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._shapes import Shape, check_size, child_shape, fill, fit_rank
from .._spec import Context, Spec
from ._activation import Identity, ReLU, Sigmoid
from ._adaptive_pool import AdaptiveAvgPool2d
from ._batchnorm import BatchNorm2d
from ._check import boolean, number, positive_int, torch_signature
from ._container import Sequential
from ._conv import Conv2d
from ._norm import GroupNorm

_NORMS = ("batch", "group", "none")


@torch_signature
@dataclass(frozen=True, init=False)
class ResidualBlock(Spec):
    """``activation(main_branch(x) [* se(.)] + shortcut(x))``, a basic ResNet block.

    Arguments:
        in_channels: the input's channel count; ``None`` (or left out:
            ``ResidualBlock(out_channels=32)``) to infer it from the input shape given to
            :func:`funcmodels.init`.
        out_channels: the output's channel count.
        stride: stride of the first 3x3 conv and of the projection.
        groups: groups of both 3x3 convs; must divide both channel counts.
        dilation: dilation (and padding) of both 3x3 convs, so the size is kept at stride 1.
        use_se: add a squeeze-and-excitation gate on the main branch.
        se_ratio: the SE bottleneck has ``max(1, int(out_channels * se_ratio))`` channels.
        activation: the nonlinearity (a spec, default ``ReLU()``), used after the first
            conv, inside SE and after the sum.
        norm: ``'batch'`` (BatchNorm2d), ``'group'`` (GroupNorm with ``norm_groups``
            groups, safe for per-sample gradients) or ``'none'`` (Identity, keeping the
            layer positions and so the parameter paths).
        norm_groups: number of GroupNorm groups; required with ``norm='group'`` (it must
            divide ``out_channels``) and not allowed otherwise.
        conv_bias: give the block's convolutions (``main_branch.0``, ``main_branch.3``
            and ``projection.0``) a bias. Off by default, the article's layout (BatchNorm
            right after a conv cancels its bias). With ``norm='none'`` it holds the shift
            of a BatchNorm folded into the conv before it, the form that
            ``transforms.fold_batchnorm`` gives a block.

    Children, with the parameter paths of the equivalent ``torch.nn.Module``:

    * ``main_branch``: ``Sequential(Conv2d(in, out, 3, stride, padding=dilation,
      bias=conv_bias), norm, activation, Conv2d(out, out, 3, padding=dilation,
      bias=conv_bias), norm)``;
    * ``se`` (with ``use_se``): ``Sequential(AdaptiveAvgPool2d(1), Conv2d(out, r, 1),
      activation, Conv2d(r, out, 1), Sigmoid())``;
    * ``projection`` (when ``in != out`` or ``stride != 1``):
      ``Sequential(Conv2d(in, out, 1, stride, bias=conv_bias), norm)``;
    * ``activation``.

    Shapes: input ``(N, in, H, W)`` or one example ``(in, H, W)``; output
    ``(N, out, H', W')`` with ``H' = (H - 1) // stride + 1`` (likewise ``W'``).
    """

    example_ndim: ClassVar[int] = 3
    preserves_rank: ClassVar[bool] = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("in_channels",)

    in_channels: int | None = None
    out_channels: int
    stride: int = 1
    groups: int = 1
    dilation: int = 1
    use_se: bool = False
    se_ratio: float = 0.25
    activation: Spec = ReLU()
    norm: str = "batch"
    norm_groups: int | None = None
    conv_bias: bool = False

    def __post_init__(self):
        layer = "ResidualBlock"
        for field in ("in_channels", "out_channels", "stride", "groups", "dilation"):
            if getattr(self, field) is not None or field != "in_channels":
                positive_int(layer, field, getattr(self, field))
        for field in ("in_channels", "out_channels"):
            if getattr(self, field) is not None and getattr(self, field) % self.groups:
                raise ValueError(
                    f"{layer}: groups={self.groups} must divide {field}={getattr(self, field)}"
                )
        boolean(layer, "use_se", self.use_se)
        boolean(layer, "conv_bias", self.conv_bias)
        object.__setattr__(
            self, "se_ratio", number(layer, "se_ratio", self.se_ratio, 0.0, lo_open=True)
        )
        if not isinstance(self.activation, Spec):
            raise TypeError(
                f"{layer}: activation must be a layer spec such as fm.nn.ReLU(), got "
                f"{type(self.activation).__name__}"
            )
        if self.norm not in _NORMS:
            raise ValueError(f"{layer}: norm must be one of {list(_NORMS)}, got {self.norm!r}")
        if self.norm == "group":
            if self.norm_groups is None:
                raise ValueError(
                    f"{layer}: norm='group' needs norm_groups, a divisor of "
                    f"out_channels={self.out_channels}"
                )
            positive_int(layer, "norm_groups", self.norm_groups)
            if self.out_channels % self.norm_groups:
                raise ValueError(
                    f"{layer}: norm_groups={self.norm_groups} must divide "
                    f"out_channels={self.out_channels}"
                )
        elif self.norm_groups is not None:
            raise ValueError(
                f"{layer}: norm_groups is only used with norm='group', got "
                f"norm={self.norm!r} and norm_groups={self.norm_groups!r}"
            )
        # Children are derived from the fields once; they are not fields themselves, so
        # equality, hashing and the spec's serialised form stay those of the arguments.
        object.__setattr__(self, "_children", self._build())
        object.__setattr__(self, "_projected", any(n == "projection" for n, _ in self._children))

    def _norm_layer(self) -> Spec:
        if self.norm == "batch":
            return BatchNorm2d(self.out_channels)
        if self.norm == "group":
            return GroupNorm(self.norm_groups, self.out_channels)
        return Identity()

    def _build(self) -> tuple[tuple[str, Spec], ...]:
        cin, cout, act, d = self.in_channels, self.out_channels, self.activation, self.dilation
        conv = dict(kernel_size=3, padding=d, dilation=d, groups=self.groups, bias=self.conv_bias)
        main = Sequential(
            Conv2d(cin, cout, stride=self.stride, **conv),
            self._norm_layer(),
            act,
            Conv2d(cout, cout, **conv),
            self._norm_layer(),
        )
        children: list[tuple[str, Spec]] = [("main_branch", main)]
        if self.use_se:
            reduced = max(1, int(cout * self.se_ratio))
            se = Sequential(
                AdaptiveAvgPool2d(1),
                Conv2d(cout, reduced, 1),
                act,
                Conv2d(reduced, cout, 1),
                Sigmoid(),
            )
            children.append(("se", se))
        if cin != cout or self.stride != 1:
            projection = Sequential(
                Conv2d(cin, cout, 1, stride=self.stride, bias=self.conv_bias),
                self._norm_layer(),
            )
            children.append(("projection", projection))
        children.append(("activation", act))
        return tuple(children)

    def children(self):
        return self._children

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        c = fit_rank(self, path, in_shape, 3, "C, H, W")[0]
        if self.in_channels is not None or c is None:
            return self
        return fill(self, path, in_channels=c)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = fit_rank(self, path, in_shape, 3, "C, H, W")
        check_size(self, path, "in_channels", self.in_channels, shape[0], in_shape)
        parts = dict(self._children)
        out = child_shape(parts["main_branch"], shape, f"{path}main_branch.", record)
        if "se" in parts:
            child_shape(parts["se"], out, f"{path}se.", record)
        if "projection" in parts:
            child_shape(parts["projection"], shape, f"{path}projection.", record)
        return child_shape(parts["activation"], out, f"{path}activation.", record)

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (N, C, H, W) or (C, H, W) with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        out = ctx.apply("main_branch", x)
        if self.use_se:
            out = out * ctx.apply("se", out)
        shortcut = x
        if self._projected:
            shortcut = ctx.apply("projection", x)
        return ctx.apply("activation", out + shortcut)
