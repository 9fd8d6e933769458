"""The generic converter of a layer and its :mod:`torch.nn` twin, and the one loop that
registers a table of them.

Most layers take the same constructor arguments in both libraries and keep them as module
attributes of the same names, so one pair of functions converts them: the module is built
from the spec's fields, the spec read back from the module's attributes. The exceptions
handled here: ``bias`` is a flag in the spec but a tensor (or ``None``) on most modules
(the recurrent ones keep the flag itself); a pool's ``return_indices`` has no spec field
and is refused; torch may give a module tensors the spec cannot have (``bias=False`` on a
norm), which :func:`check_tensors` refuses. Each layer family's file holds its table of
twins and registers it with :func:`register_twins`; what a family needs beyond that (a
module subclass, a field read another way) stays in its file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._module import Build, Infer, register_converter

Values = Callable[[fm.Spec], dict[str, Any]]


def build_twin(module_type: type[nn.Module], values: Values = field_values) -> Build:
    """A converter's ``build``: ``module_type(**values(spec))``."""

    def build(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
        return module_type(**values(spec))

    return build


def _bias_flag(module: nn.Module) -> bool:
    if isinstance(module, nn.LayerNorm) and not module.elementwise_affine:
        # torch keeps no trace of `bias` without elementwise_affine; the spec's default
        # stands in (it computes the same).
        return True
    bias = module.bias
    return bias if isinstance(bias, bool) else bias is not None


def check_tensors(module: nn.Module, spec: fm.Spec) -> None:
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


def infer_twin(spec_type: type[fm.Spec]) -> Infer:
    """A converter's ``infer`` for ``spec_type``: every field read from the module
    attribute of the same name (``bias`` as a flag), the tensors then checked."""
    names = [f.name for f in dataclasses.fields(spec_type)]

    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        if getattr(module, "return_indices", False):
            raise ValueError(
                f"return_indices=True is not supported (fm.nn.{spec_type.__name__} returns "
                "the pooled values only)"
            )
        values = {n: _bias_flag(module) if n == "bias" else getattr(module, n) for n in names}
        spec = spec_type(**values)
        check_tensors(module, spec)
        return spec

    return infer


def register_twins(
    table: Mapping[type[fm.Spec], type[nn.Module]],
    *,
    values: Values = field_values,
    infer: Callable[[type[fm.Spec]], Infer] = infer_twin,
) -> None:
    """Register every ``spec type -> module type`` pair of ``table``.

    Arguments:
        table: the pairs; each module is built as ``module_type(**values(spec))``.
        values: the constructor arguments of a spec (by default its fields).
        infer: ``infer(spec_type)`` gives the pair's ``infer`` (by default
            :func:`infer_twin`).
    """
    for spec_type, module_type in table.items():
        register_converter(
            spec_type, module_type, build=build_twin(module_type, values), infer=infer(spec_type)
        )


def register_with_subclass(
    spec_type: type[fm.Spec],
    module_types: tuple[type[nn.Module], type[nn.Module]],
    *,
    build: Build,
    infer: Infer,
) -> None:
    """Register a layer whose torch twin needs a subclass (to take the spec's input, or to
    be traced by fx): ``module_types`` is torch's class and the subclass. Both convert to
    the spec; the spec becomes the subclass (registered last, so :func:`to_module` builds
    it)."""
    for module_type in module_types:
        register_converter(spec_type, module_type, build=build, infer=infer)
