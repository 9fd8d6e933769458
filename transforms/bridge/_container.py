"""Converters of the containers: Sequential (``nn.Sequential``) and ResidualBlock, which
has no torch twin and becomes :class:`ResidualBlockModule`.

Importing this module registers the converters.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import nn

import funcmodels as fm

from ._module import register_converter


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
