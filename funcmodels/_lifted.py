"""The lifted transforms of the context: stacked members in a loop, in sequence, recomputed.

:class:`LiftedMethods` (a base class of :class:`funcmodels.Context`) gives ``ctx.map``,
``ctx.scan`` and ``ctx.remat``: each builds a *member* function, ``member(params, state,
key, x) -> (out, new_state, aux)``, that runs a spec on one member's tensors in a context
and run of its own (the new buffers and sown values come back as outputs, never written
into a shared object), and the functions below decide how torch runs the members. The
module sits below ``_context.py``: it makes contexts and runs with the types of the
context it serves.

* **In sequence** (:func:`in_sequence`): under ``torch.compile`` with no ``torch.func``
  transform active, a nested compile region (:mod:`funcmodels._region`: a registered
  member, one tensor in and out), else torch's ``scan`` op, so dynamo traces one or two
  members however many; elsewhere a Python loop (in torch 2.13 both fail under a compiled
  ``torch.func.grad``, "Expected FakeTensor", and ``scan`` compiles itself eagerly).
* **Recomputed** (:func:`rematerialized`): with plain autograd (eager or compiled),
  ``torch.utils.checkpoint`` without reentry; inside ``torch.func`` transforms, whose
  ``grad`` refuses saved-tensor hooks, an ``autograd.Function`` that saves only its inputs
  and recomputes the member in its backward (``torch.func.vjp``), with a generated vmap
  rule. Under ``torch.compile`` of a ``torch.func`` transform neither works (the hooks
  fail, and a compiled ``grad`` ignores a custom backward), so that case is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._higher_order_ops.scan import scan as _scan_op
from torch.utils.checkpoint import checkpoint

from . import _region
from . import random as _random

#: ``member(params, state, key, x) -> (out, new_state, aux)``
Member = Callable[[dict, "dict | None", "torch.Tensor | None", Any], tuple[Any, dict, dict]]

REMAT_UNDER_COMPILED_FUNC = (
    "cannot recompute activations under torch.compile of a torch.func transform (grad, "
    "vjp, vmap): in torch 2.13 torch.func.grad refuses the saved-tensor hooks of "
    "torch.utils.checkpoint and a compiled torch.func.grad ignores a custom backward. "
    "Compile a step that takes gradients with torch.autograd.grad (fm.value_and_grad "
    "outside torch.func transforms does), run the torch.func transform eagerly, or drop "
    "Remat / remat=True there"
)


def _functorch_active() -> bool:
    # Traced by dynamo as a constant, unlike peek_interpreter_stack.
    return torch._C._are_functorch_transforms_active()


def compiled_members(remat: bool) -> bool:
    """Whether :func:`in_sequence` runs the members as a subgraph (a nested compile region
    or torch's ``scan`` op), where a member must not touch objects outside it."""
    return not remat and torch.compiler.is_compiling() and not _functorch_active()


def remat_refused() -> bool:
    """Whether :func:`rematerialized` cannot run here (compile of a torch.func transform)."""
    return torch.compiler.is_compiling() and _functorch_active() and torch.is_grad_enabled()


def device_of(x: Any, params: dict[str, torch.Tensor]) -> torch.device:
    """Where the members' index tensor goes: the input's device, else the params'."""
    for t in pytree.tree_leaves(x):
        if isinstance(t, torch.Tensor):
            return t.device
    for t in params.values():
        return t.device
    return torch.device("cpu")


# -- stacking the members' side outputs ---------------------------------------------------


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The members' new buffers, each stacked on a new dim 0."""
    return {n: torch.stack([s[n] for s in states]) for n in (states[0] if states else {})}


def stack_aux(auxes: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The members' sown values, each stacked on a new dim 0, by layer path."""
    return {
        path: {n: torch.stack([a[path][n] for a in auxes]) for n in values}
        for path, values in (auxes[0] if auxes else {}).items()
    }


def each(
    member: Member,
    xs: Sequence[Any],
    params: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor] | None,
    key: torch.Tensor | None,
) -> tuple[list[Any], dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Member ``i`` on ``xs[i]``, in a Python loop (``Context.map``).

    Returns:
        the members' outputs, and their new buffers and sown values stacked on dim 0.
    """
    outs, states, auxes = [], [], []
    for i, xi in enumerate(xs):
        p = {n: t[i] for n, t in params.items()}
        s = None if state is None else {n: t[i] for n, t in state.items()}
        out, new_state, aux = member(p, s, None if key is None else _random.fold_in(key, i), xi)
        outs.append(out)
        states.append(new_state)
        auxes.append(aux)
    return outs, stack_states(states), stack_aux(auxes)


# -- in sequence --------------------------------------------------------------------------


def mismatch(x: Any, out: Any) -> str | None:
    """Why ``out`` cannot be the next member's input ``x`` (``None`` when it can)."""
    xs, x_def = pytree.tree_flatten(x)
    outs, out_def = pytree.tree_flatten(out)
    if x_def != out_def:
        return f"the structure of its input ({x_def}) differs from that of its output ({out_def})"
    for a, b in zip(xs, outs, strict=True):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return (
                f"it maps an input of shape {tuple(a.shape)} ({a.dtype}) to an output of "
                f"shape {tuple(b.shape)} ({b.dtype})"
            )
    return None


def not_a_chain(spec: Any, why: str) -> str:
    """The message for a member whose output cannot be the next member's input."""
    return (
        f"its members run in sequence, so a member's output must fit its input, but "
        f"member 0 ({spec.type_name}): {why}"
    )


def in_sequence(
    member: Member,
    x: Any,
    params: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor] | None,
    key: torch.Tensor | None,
    size: int,
    *,
    remat: bool,
    fail: Callable[[str], Exception],
    region: tuple[int | None, str, bool, str],
) -> tuple[Any, dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Run ``size`` members in sequence: member ``i`` on member ``i - 1``'s output.

    Arguments:
        member: runs one member (see :data:`Member`).
        x: the first member's input (a pytree of tensors).
        params, state: the members' tensors, each with a leading axis of ``size``.
        key: the key to fold each member's index into (``None``: no key).
        size: the number of members.
        remat: recompute each member's activations in the backward pass.
        fail: makes the error raised when a member's output cannot be the next input.
        region: the region handle (or ``None``), the path prefix, train flag and mode.

    Returns:
        the last member's output, the new buffers and the sown values of every member
        (stacked on dim 0).
    """

    def check(x, out):
        problem = mismatch(x, out)
        if problem is not None:
            raise fail(problem)

    if compiled_members(remat):
        if not _region.applies(x, region[0]):
            return _with_scan_op(member, x, params, state, key, size)
        x, states, auxes = _region.in_region(member, x, params, state, key, size, region, check)
        return x, stack_states(states), stack_aux(auxes)
    step = (lambda *a: rematerialized(member, *a)) if remat else member
    per_p = {n: t.unbind(0) for n, t in params.items()}  # unbind: one backward for all
    per_s = None if state is None else {n: t.unbind(0) for n, t in state.items()}
    states, auxes = [], []
    for i in range(size):
        p = {n: ts[i] for n, ts in per_p.items()}
        s = None if per_s is None else {n: ts[i] for n, ts in per_s.items()}
        out, new_state, aux = step(p, s, None if key is None else _random.fold_in(key, i), x)
        if i == 0:
            check(x, out)
        x = out
        states.append(new_state)
        auxes.append(aux)
    return x, stack_states(states), stack_aux(auxes)


def _with_scan_op(member, x, params, state, key, size):
    """:func:`in_sequence` by torch's ``scan`` op: one member traced, whatever ``size``.

    Two failures of the op in torch 2.13 are avoided here: its autograd fails on integer
    per-step outputs ("outs_to_grad length != tangents length"), so an integer buffer or
    aux value (a BatchNorm's ``num_batches_tracked``) travels as float64 (exact below
    2**53) in a one-entry dict naming its dtype; and inductor fails on a scan without
    per-step outputs ("getitem is not an OpOverload"), so the member index is one.
    """

    def body(carry, xs):
        p, s, i = xs
        k = None if key is None else _random.fold_in(key, i)
        out, new_state, aux = member(p, s if state is not None else None, k, carry)
        # scan refuses an output that is its input: a member returning its input unchanged
        out = pytree.tree_map(lambda o, c: o.clone() if o is c else o, out, carry)
        aux = {path: _as_float(values) for path, values in aux.items()}
        return out, (_as_float(new_state), aux, i.double())

    members = torch.arange(size, device=device_of(x, params))
    out, (new_state, aux, _) = _scan_op(body, x, (params, state or {}, members))
    return out, _restored(new_state), {path: _restored(v) for path, v in aux.items()}


def _as_float(values: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        n: t if _differentiable(t) else {str(t.dtype).removeprefix("torch."): t.double()}
        for n, t in values.items()
    }


def _restored(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for n, v in values.items():
        if isinstance(v, dict):
            ((dtype, t),) = v.items()
            v = t.to(getattr(torch, dtype))
        out[n] = v
    return out


# -- recomputed ---------------------------------------------------------------------------


def rematerialized(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its activations recomputed in the backward pass: the same values and
    gradients, bit for bit, with only ``args`` kept for the backward pass.

    ``fn`` is run again in the backward pass, so it must be pure (it may return new
    buffers and aux values; the recomputed ones are dropped). Tensors ``fn`` reads must
    come in ``args`` (inside ``torch.func`` transforms only those are differentiated).

    Raises:
        RuntimeError: under ``torch.compile`` of a ``torch.func`` transform (see
            :data:`REMAT_UNDER_COMPILED_FUNC`); callers check :func:`remat_refused` first
            to name their layer.
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    if not _functorch_active():
        return checkpoint(fn, *args, use_reentrant=False)
    if torch.compiler.is_compiling():
        raise RuntimeError(REMAT_UNDER_COMPILED_FUNC)
    if _RECOMPUTING[0]:
        # Inside an outer recomputation (a Remat in a Remat): that backward pass keeps one
        # outer call's activations anyway, and torch.func fails on a Function nested there.
        return fn(*args)
    leaves, treedef = pytree.tree_flatten(args)
    box = _Box(fn, treedef, leaves)
    flat = _Recompute.apply(box, *(t for t in leaves if isinstance(t, torch.Tensor)))
    return box.unflatten(flat)


#: how many :class:`_Recompute` backward passes are running (they nest)
_RECOMPUTING = [0]


class _Box:
    """What :class:`_Recompute` needs besides tensors. Not a pytree node, so that
    torch.func hands it to the Function untouched."""

    __slots__ = ("fn", "treedef", "leaves", "out_def", "out_static")

    def __init__(self, fn, treedef, leaves):
        self.fn = fn
        self.treedef = treedef
        self.leaves = leaves  # non-tensor leaves are kept; tensors are replaced per call
        self.out_def = None
        self.out_static: list[Any] = []

    def call(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``fn`` on ``tensors`` (in the places of the tensor leaves); its tensor outputs."""
        it = iter(tensors)
        leaves = [next(it) if isinstance(t, torch.Tensor) else t for t in self.leaves]
        out, self.out_def = pytree.tree_flatten(
            self.fn(*pytree.tree_unflatten(leaves, self.treedef))
        )
        self.out_static = [None if isinstance(o, torch.Tensor) else o for o in out]
        return [o for o in out if isinstance(o, torch.Tensor)]

    def unflatten(self, tensors: Sequence[torch.Tensor]) -> Any:
        it = iter(tensors)
        out = [next(it) if s is None else s for s in self.out_static]
        return pytree.tree_unflatten(out, self.out_def)


def _differentiable(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point or t.dtype.is_complex


class _Recompute(torch.autograd.Function):
    """Saves its inputs only; the backward runs the function again under
    ``torch.func.vjp``. Works inside ``torch.func.grad`` and ``vmap``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(box: _Box, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(box.call(tensors))

    @staticmethod
    def setup_context(ctx, inputs, output):
        box, *tensors = inputs
        ctx.box = box
        ctx.differentiable = [_differentiable(o) for o in output]
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(*(o for o in output if not _differentiable(o)))

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        box = ctx.box
        wrt = [i for i, t in enumerate(tensors) if _differentiable(t)]

        def again(*primals):
            ts = list(tensors)
            for i, p in zip(wrt, primals, strict=True):
                ts[i] = p
            return tuple(o for o in box.call(ts) if _differentiable(o))

        cotangents = tuple(g for g, d in zip(grads, ctx.differentiable, strict=True) if d)
        _RECOMPUTING[0] += 1
        try:
            _, vjp = torch.func.vjp(again, *(tensors[i] for i in wrt))
            grads_in = vjp(cotangents)
        finally:
            _RECOMPUTING[0] -= 1
        out: list[torch.Tensor | None] = [None] * len(tensors)
        for i, g in zip(wrt, grads_in, strict=True):
            out[i] = g
        return (None, *out)


# -- the lifted transforms as methods of the context -------------------------------------


class LiftedMethods:
    """The lifted transforms of :class:`funcmodels.Context` (its base class): ``ctx.map``,
    ``ctx.scan``, ``ctx.remat``, and what ``ctx.vmap`` shares with them.

    They use the context's ``_run`` (the call's :class:`~funcmodels._context.Run`),
    ``_prefix``, ``spec``, ``buffer``, ``key`` and ``_own_names``; members run in contexts
    and runs of the context's own types, so this module needs neither.
    """

    __slots__ = ()

    def map(self, spec: Any, xs: Any) -> list[Any]:
        """Run ``spec`` once per member, in a Python loop: member ``i`` on ``xs[i]``.

        The eager form of :meth:`vmap` with ``in_axis=0`` for inputs of different sizes
        (a mixture of experts' token groups); tensors, keys, new buffers and sown values
        as for :meth:`vmap`.

        Returns:
            the list of the members' outputs.
        """

        def how(member, params, state, key):
            return each(member, xs, params, state, key)

        return self._lift(spec, how, remat=False)

    def scan(self, spec: Any, x: Any, *, size: int, remat: bool = False) -> Any:
        """The lifted scan: run ``spec`` ``size`` times in sequence at this layer's path,
        member ``i`` (this layer's own tensors indexed at ``i``, laid out as for
        :meth:`vmap`; in train mode this layer's key with ``i`` folded in) on member
        ``i - 1``'s output. Under ``torch.compile`` without a ``torch.func`` transform
        inside it, torch's ``scan`` op runs the members, so one member is traced whatever
        ``size``; elsewhere a Python loop does.

        Arguments:
            spec: the member spec; its output must have its input's structure, shapes
                and dtypes.
            x: the first member's input (any pytree of tensors).
            size: the number of members.
            remat: recompute each member's activations in the backward pass (as
                :meth:`remat`); under compile the members then run as an unrolled loop.

        Returns:
            the last member's output; the members' new buffers and sown values join the
                call's, stacked on dim 0. ``ValueError`` when a member's output does not fit
                its input, or for ``remat`` under compile of a ``torch.func`` transform.
        """

        return self._scan(spec, x, size, remat, None)

    def _scan(self, spec: Any, x: Any, size: int, remat: bool, handle: int | None) -> Any:
        """:meth:`scan`, under compile through the nested compile region registered as
        ``handle`` (see :mod:`funcmodels._region`; ``None``: torch's ``scan`` op)."""

        def fail(why: str) -> Exception:
            return self._error(not_a_chain(spec, why))

        run = self._run
        region = (handle, self._prefix, run.train, run.mode)

        def how(member, params, state, key):
            return in_sequence(
                member, x, params, state, key, size, remat=remat, fail=fail, region=region
            )

        return self._lift(spec, how, remat=remat)

    def remat(self, spec: Any, x: Any) -> Any:
        """Run ``spec`` at this layer's path, on this layer's own tensors and key, and
        recompute its activations in the backward pass: the same values and gradients,
        bit for bit, for less memory and one more forward of ``spec``. This layer's own
        entries must be ``spec``'s (as :class:`~funcmodels.nn.Remat` declares them).

        Returns:
            ``spec``'s output; its new buffers and sown values (of the forward pass, not
                the recomputation) join the call's.

        Raises:
            ValueError: under ``torch.compile`` of a ``torch.func`` transform, where
                torch 2.13 cannot recompute (see :mod:`funcmodels._lifted`).
        """

        def how(member, params, state, key):
            return rematerialized(member, params, state, key, x)

        return self._lift(spec, how, remat=True)

    def _lift(self, spec: Any, how, *, remat: bool) -> Any:
        """``how(member, params, state, key) -> (out, new_state, aux)`` over this layer's
        own tensors and key, ``member(params, state, key, x)`` running ``spec`` here.

        In eager mode the members report the running layer to this call's tracker during
        the forward pass, so that errors name it; a recomputation in the backward pass,
        or a member under compile (a subgraph of torch's ``scan`` or checkpoint op must
        not write outside it), has a tracker of its own.
        """
        if remat and remat_refused():
            raise self._error(REMAT_UNDER_COMPILED_FUNC)
        run = self._run
        pre = self._prefix
        track = [None if torch.compiler.is_compiling() else run.track]

        def member(p, s, k, xi):
            inner = type(run)(p, s, run.train, k, run.mode, track[0])
            out = spec.forward(type(self)(inner, spec, pre), xi)
            return out, inner.new_state, inner.aux

        try:
            out, new_state, aux = how(member, *self._own_inputs())
        finally:
            track[0] = None
        run.track.ctx = self
        self._merge(new_state, aux)
        return out

    def _error(self, message: str) -> ValueError:
        """A ``ValueError`` naming this layer (plain under compile: dynamo cannot mark it)."""
        if torch.compiler.is_compiling():
            where = self._prefix[:-1] or "<root>"
            return ValueError(f"layer '{where}' ({self.spec.type_name}): {message}")
        return self.spec._error(self._prefix, message)

    def _own_inputs(self) -> tuple[dict, dict | None, torch.Tensor | None]:
        """This layer's own params and state (``None`` without any) by their full paths,
        and its key (``None`` without one)."""
        run = self._run
        pre = self._prefix
        pnames, snames = self._own_names()
        params = {pre + n: run.params[pre + n] for n in pnames}
        state = None
        if snames and run.state is not None:
            state = {pre + n: self.buffer(n) for n in snames}
        return params, state, self.key() if run.key is not None else None

    def _merge(self, new_state: dict[str, Any], aux: dict[str, dict[str, Any]]) -> None:
        """Add the members' stacked new buffers and sown values to this call's."""
        run = self._run
        run.new_state.update(new_state)
        for path, values in aux.items():
            own = run.aux.setdefault(path, {})
            for name, value in values.items():
                if name in own:
                    where = path or "<root>"
                    raise ValueError(f"layer '{where}' sowed {name!r} twice in one call")
                own[name] = value
