"""The lifted scan under ``torch.compile`` as a nested compile region: one member traced,
stamped out for the others.

``torch.compiler.nested_compile_region`` (torch 2.13) reuses a traced member only when the
region is a function defined outside the compiled code, whose inputs are tensors and
constants (ints, strings, bools, ``None``) and whose output is a flat tuple of tensors.
The member, though, is a spec run in a context of the call. So a spec that wants its
members run as a region registers the member spec once, when it is built
(:func:`region_handle`), and the region, :func:`_member`, rebuilds the member's context
from constants (the handle, the path, the train flag, the mode, the tensor names) and
takes the member's tensors, its input and its key (folded outside) as arguments. What a
member returns besides its output (new buffers, sown values) comes back flattened; its
structure is that of member 0, which runs inline before the others (its outputs say how to
read the region's, and its input, which need not require grad where the others' do, would
have made dynamo trace the region twice anyway).
"""

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
    pnames: tuple[str, ...],
    snames: tuple[str, ...] | None,
    has_key: bool,
    *tensors: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One member: its input, params, state and key in, its output, new buffers and sown
    values out, in that order (all tensors)."""
    spec, context_type, run_type = _REGIONS[handle]
    x, *rest = tensors
    params = dict(zip(pnames, rest, strict=False))
    rest = rest[len(pnames) :]
    state = None if snames is None else dict(zip(snames, rest, strict=False))
    key = rest[-1] if has_key else None
    run = run_type(params, state, train, key, mode, None)
    out = spec.forward(context_type(run, spec, prefix), x)
    flat = (out, *pytree.tree_leaves((run.new_state, run.aux)))
    # invoke_subgraph refuses an output that is one of its inputs
    return tuple(t.clone() if any(t is a for a in tensors) else t for t in flat)


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
    """Members in sequence: member 0 inline (by ``member``), the others through the region.

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
    per_p = [t.unbind(0) for t in params.values()]  # unbind: one backward for all
    per_s = [] if state is None else [t.unbind(0) for t in state.values()]
    keys = [None] * size if key is None else [_random.fold_in(key, i) for i in range(size)]
    p0 = {n: ts[0] for n, ts in zip(pnames, per_p, strict=True)}
    s0 = None if state is None else {n: ts[0] for n, ts in zip(snames, per_s, strict=True)}
    out, new_state, aux = member(p0, s0, keys[0], x)
    check(x, out)
    _, side = pytree.tree_flatten((new_state, aux))
    states, auxes = [new_state], [aux]
    for i in range(1, size):
        tensors = [out, *(ts[i] for ts in per_p), *(ts[i] for ts in per_s)]
        if key is not None:
            tensors.append(keys[i])
        flat = _member(handle, prefix, train, mode, pnames, snames, key is not None, *tensors)
        out = flat[0]
        new_state, aux = pytree.tree_unflatten(list(flat[1:]), side)
        states.append(new_state)
        auxes.append(aux)
    return out, states, auxes
