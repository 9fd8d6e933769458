"""The lifted scan under ``torch.compile`` as a nested compile region: one member traced,
stamped out for every member.

``torch.compiler.nested_compile_region`` (torch 2.13) reuses a traced member only when the
region is a function defined outside the compiled code, whose inputs are tensors and
constants (ints, strings, bools, ``None``) and whose output is a flat tuple of tensors.
The member, though, is a spec run in a context of the call. So a spec that wants its
members run as a region registers the member spec once, when it is built
(:func:`region_handle`), and the region, :func:`_member`, rebuilds the member's context
from constants (the handle, the path, the train flag, the mode, the tensor names, each a
separate argument: dynamo fingerprints flat arguments without pytree's walk) and takes
the member's tensors, its input and its key (folded outside) as arguments. What a member
returns besides its output (new buffers, sown values) comes back flattened; its structure
is read from member 0 traced inline once, whose operations are unused and dropped.

Every member, member 0 included, runs through the region, so the compiler generates each
member's kernels once. Member 0's input, which need not require grad where the others' do,
passes through an identity whose output requires grad (else dynamo would trace the region
a second time for it). The members' params are taken apart by a function whose backward
stacks their gradients with ``torch.stack`` as an opaque operator: inductor would
otherwise generate (and compile) one C++ kernel of copies for it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from . import random as _random

#: handle -> (member spec, context type, run type)
_REGIONS: list[tuple[Any, type, type]] = []
_HANDLES: dict[tuple[Any, type, type], int] = {}
_LOCK = threading.Lock()


def region_handle(spec: Any, context_type: type, run_type: type) -> int:
    """The constant that the region reaches ``spec`` by: equal specs share one.

    Arguments:
        spec: the member spec (hashable, as frozen specs are).
        context_type, run_type: the types the member's context is made of.

    Returns:
        an int, the same for equal specs in this process.
    """
    entry = (spec, context_type, run_type)
    with _LOCK:
        handle = _HANDLES.get(entry)
        if handle is None:
            handle = _HANDLES[entry] = len(_REGIONS)
            _REGIONS.append(entry)
    return handle


def applies(x: Any, handle: int | None) -> bool:
    """Whether :func:`in_region` can run members whose input is ``x``: a registered member
    spec and a single tensor in and out (the region's arguments are flat)."""
    return handle is not None and isinstance(x, torch.Tensor)


@torch.compiler.nested_compile_region
def _member(
    handle: int,
    prefix: str,
    train: bool,
    mode: str,
    has_key: bool,
    n_params: int,
    n_state: int,
    *args: Any,
) -> tuple[torch.Tensor, ...]:
    """One member: ``n_params`` param names, ``n_state`` state names (``-1``: no state),
    then its input, params, state and key in; its output, new buffers and sown values out,
    in that order (all tensors)."""
    spec, context_type, run_type = _REGIONS[handle]
    n_names = n_params + max(n_state, 0)
    pnames, snames = args[:n_params], args[n_params:n_names]
    x, *rest = tensors = args[n_names:]
    params = dict(zip(pnames, rest, strict=False))
    rest = rest[n_params:]
    state = None if n_state < 0 else dict(zip(snames, rest, strict=False))
    key = rest[-1] if has_key else None
    run = run_type(params, state, train, key, mode, None)
    out = spec.forward(context_type(run, spec, prefix), x)
    flat = (out, *pytree.tree_leaves((run.new_state, run.aux)))
    # invoke_subgraph refuses an output that is one of its inputs
    return tuple(t.clone() if any(t is a for a in tensors) else t for t in flat)


@torch.library.custom_op("funcmodels::stack_members", mutates_args=())
def _stack_members(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, opaque to the compiler."""
    return torch.stack(tensors)


@_stack_members.register_fake
def _(tensors):
    return torch.stack(tensors)


class _Unstack(torch.autograd.Function):
    """Each of ``ts`` ``unbind(0)``-ed, all members of all tensors in one flat tuple (one
    Function for all, so that dynamo traces one); the backward stacks each tensor's
    gradients by :func:`_stack_members`."""

    @staticmethod
    def forward(*ts):
        members = []
        for t in ts:  # a loop, not a generator: dynamo traces generators slowly
            members.extend(t.unbind(0))
        return tuple(members)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.size = inputs[0].shape[0]

    @staticmethod
    def backward(ctx, *grads):
        n = ctx.size
        return tuple([_stack_members(list(grads[i : i + n])) for i in range(0, len(grads), n)])


class _RequiringGrad(torch.autograd.Function):
    """``x`` (a view) that requires grad because ``anchor`` does; no gradient flows back."""

    @staticmethod
    def forward(x, anchor):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return None, None


def _unbind(ts: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Each of ``ts``'s members (``unbind(0)``: one backward, a stack, for all members,
    not a gradient of full size each); those that require grad through one
    :class:`_Unstack`."""
    grad = torch.is_grad_enabled()
    wrt = [i for i, t in enumerate(ts) if grad and t.requires_grad]
    out = [() if i in wrt else t.unbind(0) for i, t in enumerate(ts)]
    if wrt:
        flat = _Unstack.apply(*(ts[i] for i in wrt))
        n = ts[wrt[0]].shape[0]
        for j, i in enumerate(wrt):
            out[i] = flat[j * n : (j + 1) * n]
    return out


def in_region(
    member: Callable[..., tuple[Any, dict, dict]],
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor] | None,
    key: torch.Tensor | None,
    size: int,
    where: tuple[int, str, bool, str],
    check: Callable[[Any, Any], None],
) -> tuple[Any, list[dict], list[dict]]:
    """Members in sequence, each through the region (member 0 also traced inline by
    ``member`` once, for the structure of its outputs).

    Arguments:
        member: runs one member inline (``member(params, state, key, x)``).
        x: the first member's input.
        params, state: the members' tensors, stacked on dim 0.
        key: the key each member's index is folded into (``None``: no key).
        size: the number of members.
        where: the handle, the path prefix, the train flag and the mode of the call.
        check: ``check(x, out)`` raises when member 0's output cannot be its input.

    Returns:
        the last member's output, and each member's new buffers and sown values.
    """
    handle, prefix, train, mode = where
    pnames = tuple(params)
    snames = None if state is None else tuple(state)
    per_p = _unbind(list(params.values())) if params else []
    per_s = [] if state is None else [t.unbind(0) for t in state.values()]
    keys = [None] * size if key is None else [_random.fold_in(key, i) for i in range(size)]
    p0 = {n: ts[0] for n, ts in zip(pnames, per_p, strict=True)}
    s0 = None if state is None else {n: ts[0] for n, ts in zip(snames, per_s, strict=True)}
    probe, new_state, aux = member(p0, s0, keys[0], x)  # its operations go unused
    check(x, probe)
    _, side = pytree.tree_flatten((new_state, aux))
    constants = (handle, prefix, train, mode, key is not None, len(pnames))
    constants += (-1, *pnames) if snames is None else (len(snames), *pnames, *snames)
    out = _requiring_grad(x, params)
    states, auxes = [], []
    # each member's tensors, gathered by one zip (dynamo traces it faster than a
    # generator per member)
    columns = [*per_p, *per_s, *([keys] if key is not None else [])]
    members = list(zip(*columns, strict=True)) if columns else [()] * size
    for i in range(size):
        flat = _member(*constants, out, *members[i])
        out = flat[0]
        if side.num_leaves:  # else member 0's (empty) structure is every member's
            new_state, aux = pytree.tree_unflatten(list(flat[1:]), side)
        states.append(new_state)
        auxes.append(aux)
    return out, states, auxes


def _requiring_grad(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``x``, requiring grad where the members' params do (so that member 0's input is
    like the others' and the region is traced once)."""
    if x.requires_grad or not torch.is_grad_enabled():
        return x
    anchor = next((t for t in params.values() if t.requires_grad), None)
    return x if anchor is None else _RequiringGrad.apply(x, anchor)
