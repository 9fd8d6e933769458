"""Depth as a loop: ``n`` copies of a spec applied in sequence, tensors stacked on dim 0."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .._context import Context, Run, cached
from .._region import region_handle
from .._shapes import Shape, rank_known, show
from .._spec import Spec
from ._check import boolean, positive_int, within_layer_budget
from ._stack import Stack


@dataclass(frozen=True)
class Repeat(Spec):
    """``n`` members of one spec applied in sequence: member ``i`` on member ``i - 1``'s
    output (Flax's ``nn.scan`` over layers, Haiku's ``layer_stack``).

    The tensors are laid out as :class:`Stack` lays them out: member ``i``'s params are
    exactly ``fm.init(fm.fold_in(key, i), spec)``, stacked on dim 0 under the member's own
    names (no name level is added), so ``Repeat(block, 24)`` has ``0.weight (24, ...)``
    for a Sequential block, and ``Stack(spec, n)`` params become ``Repeat(spec, n)``
    params by changing the spec. State (BatchNorm statistics) is stacked and updated per
    member; in train mode member ``i`` draws from the Repeat's key with ``i`` folded in;
    values the members sow come back in ``fm.run(...).aux`` with a leading axis of ``n``.
    A state_dict with the members unstacked, ``'{i}.<name>'`` (an ``nn.Sequential`` of
    the members), loads with :func:`funcmodels.from_state_dict`.

    Under ``torch.compile`` (with plain autograd, no ``torch.func`` transform inside the
    compiled function) the members run as one ``torch.compiler.nested_compile_region``,
    traced once and stamped out (member 0 is also traced inline once, for the structure
    of its outputs), so two members are traced and one is compiled whatever ``n`` (a
    member whose input is not one tensor runs as torch's
    ``scan`` op); in eager mode and under ``torch.func`` transforms (``vmap(grad)``:
    per-sample gradients, ``fm.jit`` of a step taking ``fm.value_and_grad``) they run as a
    Python loop. See :meth:`funcmodels.Context.scan`.

    Arguments:
        spec: the member spec; its output must have the structure, shapes and dtypes of
            its input.
        n: the number of members (at least 1).
        remat: recompute each member's activations in the backward pass (as
            :class:`Remat`): the same values and gradients for the memory of the members'
            inputs only. Under ``torch.compile`` the members then run as an unrolled loop
            (torch's ``scan`` op cannot hold a checkpoint).

    Input and output: what the member takes and gives (the same shapes). A single example
    is accepted where the member accepts one.

    Raises:
        TypeError: ``spec`` is not a layer spec; ``n`` not an int; ``remat`` not a bool.
        ValueError: ``n < 1``; a member whose output shape differs from its input shape
            (when shapes are inferred, and on the first call).
    """

    preserves_rank: ClassVar[bool] = True

    spec: Spec
    n: int
    remat: bool = False

    def __post_init__(self):
        if not isinstance(self.spec, Spec):
            raise TypeError(
                f"Repeat: spec must be a layer spec such as fm.nn.Linear(4, 4), got "
                f"{type(self.spec).__name__}"
            )
        positive_int("Repeat", "n", self.n)
        boolean("Repeat", "remat", self.remat)
        within_layer_budget(self, "n")
        # the constant by which a compiled call reaches the member (see funcmodels._region)
        object.__setattr__(self, "_fm_region", region_handle(self.spec, Context, Run))

    def layer_count(self) -> int:
        """Itself and ``n`` members."""
        return 1 + self.n * self.spec.layer_count()

    @property
    def example_ndim(self) -> int | None:  # type: ignore[override]
        return self.spec.example_ndim

    def _layout(self) -> Stack:
        """The Stack of the same members: Repeat's tensors are laid out as its."""
        return cached(self, "_fm_layout", lambda: Stack(self.spec, self.n))

    # -- tensors ------------------------------------------------------------------------
    def param_shapes(self):
        return self._layout().param_shapes()

    def state_shapes(self):
        return self._layout().state_shapes()

    def init_params(self, key, *, dtype, device):
        return self._layout().init_params(key, dtype=dtype, device=device)

    def init_state(self, key, *, dtype, device):
        return self._layout().init_state(key, dtype=dtype, device=device)

    def omitted(self) -> tuple[str, ...]:
        return self._layout().omitted()

    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        self._layout().adapt_state_dict(entries, prefix)

    # -- computation --------------------------------------------------------------------
    def forward(self, ctx: Context, x: Any) -> Any:
        return ctx._scan(self.spec, x, self.n, self.remat, self._fm_region)

    # -- shapes -------------------------------------------------------------------------
    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        member = self.spec.resolve(in_shape, path)
        return self if member is self.spec else dataclasses.replace(self, spec=member)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        out = self.spec.out_shape(in_shape, path, None)
        if not _fits(in_shape, out):
            raise self._error(
                path,
                f"its members run in sequence, so a member's output must have its input's "
                f"shape, but member 0 ({self.spec.type_name}) maps one example of shape "
                f"{_text(in_shape)} to {_text(out)}",
            )
        return out


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple) and all(d is None or d is ... or isinstance(d, int) for d in s)


def _fits(a: Any, b: Any) -> bool:
    """Whether shapes (or nested tuples of shapes) ``a`` and ``b`` can be equal, unknown
    sizes (``None``) and unknown leading dims (``...``) matching anything."""
    if _is_shape(a) and _is_shape(b):
        if not (rank_known(a) and rank_known(b)):
            a, b = (tuple(d for d in s if d is not ...) for s in (a, b))
            n = min(len(a), len(b))
            a, b = a[len(a) - n :], b[len(b) - n :]
        return len(a) == len(b) and all(
            x is None or y is None or x == y for x, y in zip(a, b, strict=False)
        )
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_fits(x, y) for x, y in zip(a, b, strict=True))
    return False


def _text(s: Any) -> str:
    return show(s) if _is_shape(s) else f"({', '.join(_text(p) for p in s)})"
