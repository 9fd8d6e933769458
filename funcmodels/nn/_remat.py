"""Activation checkpointing as a layer: a child whose activations are recomputed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._context import Context
from .._shapes import Shape
from .._spec import Spec, expected_entries, init_tree


@dataclass(frozen=True)
class Remat(Spec):
    """``spec``, its activations recomputed in the backward pass (Flax's ``nn.remat``,
    ``torch.utils.checkpoint``): only its input is kept for the backward pass, which runs
    ``spec``'s forward again. Values and gradients are those of ``spec`` itself, bit for
    bit; memory falls, time rises by about one forward of ``spec``.

    Remat adds no name level and no key level: its tensors are ``spec``'s entries under
    their own names, initialised from the Remat's key as ``spec`` would be from it, and
    in train mode ``spec`` draws from the Remat's key. So ``Sequential(Remat(a), b)``
    has exactly the params, the state and (dropout included) the outputs of
    ``Sequential(a, b)``. New buffers (BatchNorm) and sown values are those of the
    forward pass; the recomputation's are dropped. Like :class:`Stack`, Remat is a leaf of
    the spec tree: ``fm.summary`` shows one row for it.

    How: with plain autograd (eager, or ``torch.autograd.grad`` of a compiled function)
    ``torch.utils.checkpoint`` without reentry; inside ``torch.func`` transforms (``grad``,
    ``vmap(grad)``) an ``autograd.Function`` that recomputes in its backward. Under
    ``torch.compile`` of a ``torch.func`` transform torch 2.13 can do neither, and the
    call is refused with a ``ValueError``; without gradients nothing is recomputed.

    Arguments:
        spec: the layer whose activations are recomputed.

    Input and output: those of ``spec``.
    """

    spec: Spec

    def __post_init__(self):
        if not isinstance(self.spec, Spec):
            raise TypeError(
                f"Remat: spec must be a layer spec such as fm.nn.Linear(4, 4), got "
                f"{type(self.spec).__name__}"
            )

    @property
    def example_ndim(self) -> int | None:  # type: ignore[override]
        return self.spec.example_ndim

    @property
    def preserves_rank(self) -> bool:  # type: ignore[override]
        return self.spec.preserves_rank

    # -- tensors ------------------------------------------------------------------------
    def param_shapes(self):
        return {k: shape for k, (shape, _) in expected_entries(self.spec, "params").items()}

    def state_shapes(self):
        return dict(expected_entries(self.spec, "state"))

    def init_params(self, key, *, dtype, device):
        return init_tree(self.spec, key, dtype=dtype, device=device, state=False)[0]

    def init_state(self, key, *, dtype, device):
        if not self.state_shapes():
            return {}
        return init_tree(self.spec, key, dtype=dtype, device=device, state=True)[1]

    def omitted(self) -> tuple[str, ...]:
        return tuple(f"spec.{p}{name}" for p, s in self.spec.walk() for name in s.omitted())

    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        for p, s in self.spec.walk():
            s.adapt_state_dict(entries, prefix + p)

    # -- computation --------------------------------------------------------------------
    def forward(self, ctx: Context, x: Any) -> Any:
        return ctx.remat(self.spec, x)

    # -- shapes -------------------------------------------------------------------------
    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        child = self.spec.resolve(in_shape, path)
        return self if child is self.spec else dataclasses.replace(self, spec=child)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return self.spec.out_shape(in_shape, path, None)
