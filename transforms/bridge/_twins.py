"""Converters between the layers of :mod:`funcmodels.nn` and their :mod:`torch.nn` twins.

Most layers take the same constructor arguments in both libraries and keep them as module
attributes of the same names, so one generic pair of functions converts them. The
exceptions: ``bias`` is a flag in the spec but a tensor (or ``None``) on the module;
``nn.MaxPool2d`` can return indices, which the spec cannot; ``ResidualBlock`` has no
torch twin and becomes :class:`ResidualBlockModule`. ``Rearrange`` and ``Reduce`` become
einops' layers (:mod:`einops.layers.torch`), as subclasses that ``torch.fx`` can trace.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping

import einops
import torch
from einops.layers import torch as einops_torch
from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._fuse import FoldedBatchNorm1d, FoldedBatchNorm1dModule
from ._module import register_converter

# Spec type -> module type for the layers whose constructor arguments match field by field.
_TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fm.nn.Linear: nn.Linear,
    fm.nn.Conv1d: nn.Conv1d,
    fm.nn.Conv2d: nn.Conv2d,
    fm.nn.BatchNorm1d: nn.BatchNorm1d,
    fm.nn.BatchNorm2d: nn.BatchNorm2d,
    fm.nn.LayerNorm: nn.LayerNorm,
    fm.nn.GroupNorm: nn.GroupNorm,
    fm.nn.Identity: nn.Identity,
    fm.nn.ReLU: nn.ReLU,
    fm.nn.GELU: nn.GELU,
    fm.nn.SiLU: nn.SiLU,
    fm.nn.Sigmoid: nn.Sigmoid,
    fm.nn.Tanh: nn.Tanh,
    fm.nn.Softmax: nn.Softmax,
    fm.nn.LogSoftmax: nn.LogSoftmax,
    fm.nn.Dropout: nn.Dropout,
    fm.nn.Flatten: nn.Flatten,
    fm.nn.MaxPool2d: nn.MaxPool2d,
    fm.nn.AvgPool2d: nn.AvgPool2d,
    fm.nn.AdaptiveAvgPool1d: nn.AdaptiveAvgPool1d,
    fm.nn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
}


def _build_twin(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return _TWINS[type(spec)](**field_values(spec))


def _bias_flag(module: nn.Module) -> bool:
    if isinstance(module, nn.LayerNorm) and not module.elementwise_affine:
        # torch keeps no trace of `bias` without elementwise_affine; the spec's default
        # stands in (it computes the same).
        return True
    return module.bias is not None


def _check_tensors(module: nn.Module, spec: fm.Spec) -> None:
    """The module's own tensors must be the spec's: torch may have options the spec lacks
    (``nn.BatchNorm2d(bias=False)`` keeps a weight but no bias, say)."""
    params = [n for n, t in module._parameters.items() if t is not None]
    buffers = [
        n
        for n, t in module._buffers.items()
        if t is not None and n not in module._non_persistent_buffers_set
    ]
    if sorted(params) != sorted(spec.param_shapes()) or sorted(buffers) != sorted(
        spec.state_shapes()
    ):
        raise ValueError(
            f"its parameters {params} and buffers {buffers} differ from those of "
            f"{spec!r}: parameters {list(spec.param_shapes())}, buffers "
            f"{list(spec.state_shapes())}"
        )


def _infer_twin(spec_type: type[fm.Spec]) -> Callable[[nn.Module, Callable], fm.Spec]:
    names = [f.name for f in dataclasses.fields(spec_type)]

    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        if getattr(module, "return_indices", False):
            raise ValueError(
                "return_indices=True is not supported (fm.nn.MaxPool2d returns the pooled "
                "values only)"
            )
        values = {n: _bias_flag(module) if n == "bias" else getattr(module, n) for n in names}
        spec = spec_type(**values)
        _check_tensors(module, spec)
        return spec

    return infer


for _spec_type, _module_type in _TWINS.items():
    register_converter(_spec_type, _module_type, build=_build_twin, infer=_infer_twin(_spec_type))


def _build_sequential(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return nn.Sequential(OrderedDict((name, child(name)) for name, _ in spec.children()))


def _infer_sequential(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    # _modules rather than named_children(): a layer object used twice must appear twice.
    return fm.nn.Sequential(
        {name: child(name) for name, m in module._modules.items() if m is not None}
    )


register_converter(
    fm.nn.Sequential, nn.Sequential, build=_build_sequential, infer=_infer_sequential
)


class ResidualBlockModule(nn.Module):
    """The :mod:`torch.nn` form of :class:`funcmodels.nn.ResidualBlock`.

    ``activation(main_branch(x) [* se(main_branch(x))] + shortcut(x))``, where the
    shortcut is ``projection(x)`` when the block has one and ``x`` otherwise. The children
    have the spec's names, so ``state_dict`` keys match ``fm.to_state_dict``; ``forward``
    branches only on which children exist, so ``torch.fx.symbolic_trace`` traces it.
    :func:`~transforms.from_module` reads ``conv_bias`` from the convolutions themselves
    (``main_branch.0`` has a bias or not) and the rest of the spec from ``self.spec``.

    Arguments:
        spec: the block's spec, kept as ``self.spec`` (``from_module`` reads it back).
        children: the modules for the spec's children (``main_branch``, ``se`` when
            ``use_se``, ``projection`` when the shape changes, ``activation``).

    Shapes: input ``(N, in_channels, H, W)``, output ``(N, out_channels, H', W')``.
    """

    def __init__(self, spec: fm.nn.ResidualBlock, children: Mapping[str, nn.Module]):
        super().__init__()
        want = [name for name, _ in spec.children()]
        if list(children) != want:
            raise ValueError(
                f"ResidualBlockModule: expected the children {want} of {spec!r}, got "
                f"{list(children)}"
            )
        self.spec = spec
        self.se: nn.Module | None = None
        self.projection: nn.Module | None = None
        for name, module in children.items():
            setattr(self, name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main_branch(x)
        if self.se is not None:
            out = out * self.se(out)
        shortcut = x if self.projection is None else self.projection(x)
        return self.activation(out + shortcut)


def _build_residual(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return ResidualBlockModule(spec, {name: child(name) for name, _ in spec.children()})


def _infer_residual(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    # Whether the convolutions have a bias is read from the module rather than from the
    # spec it was built with, so a block whose convs were given biases afterwards (with
    # BatchNorm folded into them, say) is inferred with conv_bias=True. The children are
    # then checked against that spec: all three convs must agree.
    main = module._modules.get("main_branch")
    first = None if main is None else main._modules.get("0")
    conv_bias = first.bias is not None if isinstance(first, nn.Conv2d) else module.spec.conv_bias
    spec = dataclasses.replace(module.spec, conv_bias=conv_bias)
    want = dict(spec.children())
    extra = [name for name in module._modules if name not in want]
    if extra:
        raise ValueError(f"unexpected children {extra}; {spec!r} has {list(want)}")
    for name, child_spec in want.items():
        got = child(name)
        if got != child_spec:
            raise ValueError(f"child '{name}' is {got!r}, but {spec!r} needs {child_spec!r}")
    return spec


register_converter(
    fm.nn.ResidualBlock, ResidualBlockModule, build=_build_residual, infer=_infer_residual
)


def _build_folded(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return FoldedBatchNorm1dModule()


register_converter(
    FoldedBatchNorm1d,
    FoldedBatchNorm1dModule,
    build=_build_folded,
    infer=lambda module, child: FoldedBatchNorm1d(),
)


# -- einops ------------------------------------------------------------------------------


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
    return fm.nn.Rearrange(module.pattern, axes_lengths=dict(module.axes_lengths))


def _infer_reduce(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    return fm.nn.Reduce(module.pattern, module.reduction, axes_lengths=dict(module.axes_lengths))


# einops' own layers convert to specs; specs become the traceable subclasses (registered
# last, so to_module builds those).
for _module_type in (einops_torch.Rearrange, RearrangeModule):
    register_converter(
        fm.nn.Rearrange, _module_type, build=_build_rearrange, infer=_infer_rearrange
    )
for _module_type in (einops_torch.Reduce, ReduceModule):
    register_converter(fm.nn.Reduce, _module_type, build=_build_reduce, infer=_infer_reduce)
