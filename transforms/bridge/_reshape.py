"""Converters of the layers that move, pad or resample values: Flatten, Unflatten, the
padding layers, the upsampling layers, PixelShuffle, PixelUnshuffle, and einops'
Rearrange and Reduce.

Each takes the same constructor arguments in both libraries and keeps them as module
attributes of the same names. The exceptions: a ``ZeroPad`` module whose ``value`` was
changed is refused, since the spec has none; settings a spec cannot store (an
``Unflatten`` over a named dim) are refused by the spec itself, naming the module.
``Rearrange`` and ``Reduce`` become einops' layers (:mod:`einops.layers.torch`), as
subclasses that ``torch.fx`` can trace; ``from_module`` reads einops' plain layers too.

Importing this module registers the converters.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
from einops.layers import torch as einops_torch
from torch import nn

import funcmodels as fm

from ._module import Infer
from ._twins import infer_twin, register_twins, register_with_subclass

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.Flatten: nn.Flatten,
    fnn.Unflatten: nn.Unflatten,
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
}

_ZERO_PADS = (fnn.ZeroPad1d, fnn.ZeroPad2d, fnn.ZeroPad3d)


def _infer(spec_type: type[fm.Spec]) -> Infer:
    generic = infer_twin(spec_type)
    if spec_type not in _ZERO_PADS:
        return generic

    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        if module.value != 0:
            raise ValueError(
                f"its fill value is {module.value!r}, but fm.nn.{spec_type.__name__} pads "
                f"with zeros; use ConstantPad{spec_type.__name__[-2:]} for another value"
            )
        return generic(module, child)

    return infer


register_twins(TWINS, infer=_infer)


def _einops_call(
    x: torch.Tensor, pattern: str, reduction: str, axes: tuple[tuple[str, int], ...]
) -> torch.Tensor:
    """``einops.rearrange`` (``reduction='rearrange'``) or ``einops.reduce`` of ``x``."""
    if reduction == "rearrange":
        return einops.rearrange(x, pattern, **dict(axes))
    return einops.reduce(x, pattern, reduction, **dict(axes))


# torch.fx records each call as one node: einops reads the input's rank and sizes, which a
# symbolic tracer does not know. torch.export and torch.compile trace through it.
torch.fx.wrap("_einops_call")


class RearrangeModule(einops_torch.Rearrange):
    """:class:`einops.layers.torch.Rearrange`, traceable by ``torch.fx.symbolic_trace``.

    :func:`~transforms.to_module` makes one for a :class:`funcmodels.nn.Rearrange`; it is an
    einops layer (same arguments, attributes, output and pickling) whose ``forward`` fx
    records as a single call (einops' own layer looks its recipe up by the input's rank,
    which fx cannot trace). :func:`~transforms.from_module` reads einops' plain layer too.

    Arguments:
        pattern: the einops pattern, as ``"b c h w -> b (h w) c"``.
        axes_lengths: sizes of the axes the input does not determine (``h=4``).

    Shapes: input with the pattern's input axes, output with its output axes.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _einops_call(input, self.pattern, "rearrange", self._axes_lengths)


class ReduceModule(einops_torch.Reduce):
    """:class:`einops.layers.torch.Reduce`, traceable by ``torch.fx.symbolic_trace``.

    The twin of :class:`RearrangeModule` for :class:`funcmodels.nn.Reduce`.

    Arguments:
        pattern: the einops pattern, as ``"b c h w -> b c"``.
        reduction: ``'min'``, ``'max'``, ``'sum'``, ``'mean'`` or ``'prod'``.
        axes_lengths: sizes of the axes the input does not determine.

    Shapes: input with the pattern's input axes, output with its output axes.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _einops_call(input, self.pattern, self.reduction, self._axes_lengths)


def _build_rearrange(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return RearrangeModule(spec.pattern, **dict(spec.axes_lengths))


def _build_reduce(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return ReduceModule(spec.pattern, spec.reduction, **dict(spec.axes_lengths))


def _infer_rearrange(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    return fnn.Rearrange(module.pattern, axes_lengths=dict(module.axes_lengths))


def _infer_reduce(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    return fnn.Reduce(module.pattern, module.reduction, axes_lengths=dict(module.axes_lengths))


# einops' own layers convert to specs; specs become the traceable subclasses.
register_with_subclass(
    fnn.Rearrange,
    (einops_torch.Rearrange, RearrangeModule),
    build=_build_rearrange,
    infer=_infer_rearrange,
)
register_with_subclass(
    fnn.Reduce, (einops_torch.Reduce, ReduceModule), build=_build_reduce, infer=_infer_reduce
)
