"""Stacked children: ``n`` copies of a spec, their tensors stacked on a leading axis."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from .. import random as _random
from .._context import Context, cached
from .._shapes import MemberFirst, Shape, rank_known, show
from .._spec import Spec, expected_entries, init_tree
from ._check import positive_int


@dataclass(frozen=True)
class Stack(Spec):
    """``n`` members of one spec, run at once by the lifted vmap (``ctx.vmap``).

    The members' tensors are stacked on dim 0 under the member's own names: Stack adds no
    name level (torch's ``stack_module_state`` convention), so ``Stack(Linear(3, 4), 8)``
    has ``weight (8, 4, 3)`` and ``bias (8, 4)``. Member ``i``'s params are exactly
    ``fm.init(fm.fold_in(key, i), spec)``, ``key`` being the Stack's own key; state is
    stacked the same way, and in train mode member ``i`` draws from the Stack's key with
    ``i`` folded in. BatchNorm and Dropout work inside.

    Arguments:
        spec: the member spec.
        n: the number of members.
        in_axis: ``None``: every member sees the same input, outputs stacked on dim 0
            (an ensemble: a batch ``(B, *S)`` gives ``(n, B, *M)``); ``0``: member ``i``
            sees ``x[i]`` (an input ``(n, B, *S)`` gives ``(n, B, *M)``), or, given a list
            of ``n`` inputs of different batch sizes, member ``i`` runs on the ``i``-th in a
            Python loop and the outputs come back as a list (eager code: a mixture of
            experts' token groups).

    Shapes: a single example (rank ``spec.example_ndim``, or that plus one with
    ``in_axis=0``) is accepted where the member accepts one, and gives ``(n, *M)``. Shape
    inference reports one example's output as ``(n, *M)``: the member axis comes first and
    the batch dim, which these shapes leave out, second.

    Sown values of the members come back in ``fm.run(...).aux`` under their paths below
    the Stack's, with the leading member axis. A state_dict in the unstacked layout,
    ``'{i}.<name>'`` (an ``nn.ModuleList`` of the members), loads with
    :func:`funcmodels.from_state_dict`.
    """

    spec: Spec
    n: int
    in_axis: int | None = None

    def __post_init__(self):
        if not isinstance(self.spec, Spec):
            raise TypeError(
                f"Stack: spec must be a layer spec such as fm.nn.Linear(3, 4), got "
                f"{type(self.spec).__name__}"
            )
        positive_int("Stack", "n", self.n)
        if self.in_axis is not None and (
            isinstance(self.in_axis, bool) or not isinstance(self.in_axis, int) or self.in_axis
        ):
            raise ValueError(
                f"Stack: in_axis must be None (every member sees the same input) or 0 "
                f"(member i sees x[i]), got {self.in_axis!r}"
            )

    # -- tensors ------------------------------------------------------------------------
    def param_shapes(self):
        n = self.n
        return {k: (n, *shape) for k, (shape, _) in expected_entries(self.spec, "params").items()}

    def state_shapes(self):
        n = self.n
        return {
            k: ((n, *shape), dtype)
            for k, (shape, dtype) in expected_entries(self.spec, "state").items()
        }

    def stack_size(self) -> int:
        return self.n

    def _members(self, key, dtype, device, which):
        members = [
            init_tree(self.spec, _random.fold_in(key, i), dtype=dtype, device=device, state=which)
            for i in range(self.n)
        ]
        index = 1 if which else 0
        names = members[0][index]
        return {k: torch.stack([m[index][k] for m in members]) for k in names}

    def init_params(self, key, *, dtype, device):
        return self._members(key, dtype, device, False)

    def init_state(self, key, *, dtype, device):
        if not self.state_shapes():
            return {}
        return self._members(key, dtype, device, True)

    def omitted(self) -> tuple[str, ...]:
        return tuple(f"spec.{p}{name}" for p, s in self.spec.walk() for name in s.omitted())

    # -- computation --------------------------------------------------------------------
    def forward(self, ctx: Context, x: Any) -> Any:
        if self.in_axis == 0 and isinstance(x, (list, tuple)):
            if len(x) != self.n:
                raise ValueError(f"in_axis=0: expected {self.n} member inputs, got {len(x)}")
            return ctx.map(self.spec, x)
        nd = self.spec.example_ndim
        axis = self.in_axis
        single = False
        if isinstance(x, torch.Tensor):
            if axis == 0 and (x.dim() == 0 or x.shape[0] != self.n):
                raise ValueError(
                    f"in_axis=0: expected an input with the {self.n} members on dim 0, got "
                    f"shape {tuple(x.shape)}"
                )
            if nd is not None and x.dim() == nd + (axis == 0):
                x, single = x.unsqueeze(0 if axis is None else 1), True
        out = NotImplemented
        direct = cached(
            self, "_fm_direct", lambda: not self.state_shapes() and self.spec._stacks_directly()
        )
        if direct and ctx.mode != "compile":
            # A direct batched form where the member has one (Linear's baddbmm: vmap's
            # rule for linear is a bmm and a separate bias add); the same values.
            own = {n: ctx.param(n) for n in self.param_shapes()}
            out = self.spec.stacked(ctx, own, x, axis)
        if out is NotImplemented:
            out = ctx.vmap(self.spec, x, size=self.n, in_axis=axis)
        if single:
            out = pytree.tree_map(lambda t: t.squeeze(1), out)
        return out

    # -- shapes -------------------------------------------------------------------------
    def _member_shape(self, in_shape: Shape, path: str) -> Shape:
        if self.in_axis is None:
            return in_shape
        if not rank_known(in_shape):
            return in_shape
        if not in_shape or in_shape[0] not in (None, self.n):
            raise self._error(
                path,
                f"in_axis=0: expected one example of shape ({self.n}, ...) with the members "
                f"first, got {show(in_shape)}",
            )
        return in_shape[1:]

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        member = self.spec.resolve(self._member_shape(in_shape, path), path)
        return self if member is self.spec else dataclasses.replace(self, spec=member)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        out = self.spec.out_shape(self._member_shape(in_shape, path), path, None)
        return MemberFirst((self.n, *out))

    # -- checkpoints --------------------------------------------------------------------
    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        names = cached(
            self,
            "_fm_member_names",
            lambda: (*expected_entries(self.spec, "params"), *expected_entries(self.spec, "state")),
        )
        if not names or any(prefix + k in entries for k in names):
            return
        # Cheap checks first: n comes from the file, and a hostile n must not make us
        # build n names before finding that the entries are not there.
        if f"{prefix}0.{names[0]}" not in entries or len(entries) < self.n * len(names):
            return
        unstacked = [[f"{prefix}{i}.{k}" for i in range(self.n)] for k in names]
        if not all(k in entries for keys in unstacked for k in keys):
            return
        for name, keys in zip(names, unstacked, strict=True):
            values = [entries.pop(k) for k in keys]
            if isinstance(values[0], torch.Tensor) and all(
                isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values
            ):
                entries[prefix + name] = torch.stack(values)
            else:
                entries[prefix + name] = values  # reported by the entry check
