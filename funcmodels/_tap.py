"""Taps: a transform's view of every layer of a forward call (see :func:`tapping`)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context

#: The tap of the calls of :func:`funcmodels.run` made inside :func:`tapping` in this
#: thread (or asyncio task): another thread's calls never see it.
_TAP: contextvars.ContextVar[Callable[[Context, Any, Any], Any] | None] = contextvars.ContextVar(
    "funcmodels_tap", default=None
)
#: How many taps are active in all threads. Read before ``_TAP``: torch.compile cannot
#: trace ``ContextVar.get`` without a graph break, and with no tap anywhere (every
#: training step outside a dp pass) it sees this constant 0 and never reaches the get.
_ACTIVE = 0
_LOCK = threading.Lock()


@contextlib.contextmanager
def tapping(tap: Callable[[Context, Any, Any], Any]) -> Iterator[None]:
    """Let ``tap`` see every layer of the :func:`funcmodels.run` calls made in this block.

    After each layer runs (the root and every child run through ``ctx.apply``), its output
    becomes ``tap(ctx, x, out)``: ``ctx`` is the layer's context (``ctx.spec``,
    ``ctx.path``, and ``ctx.own_params()``, the layer's own tensors as the call holds
    them), ``x`` its input and ``out`` its output. A tap returns ``out`` or a tensor that
    stands in for it; :mod:`transforms.dp` records the inputs of the layers whose
    per-example gradients it computes in closed form and adds a zero probe to their
    outputs, whose gradient is the gradient at the layer's output. Only the calls of
    ``fm.run`` are tapped, not the members run inside a lifted vmap (``ctx.vmap``). The tap
    is local to the thread (a ``contextvars`` variable): another thread's ``fm.run`` is
    not tapped, and may open its own block. Taps do not nest within one thread.

    Arguments:
        tap: ``tap(ctx, x, out) -> out``, called after every layer of every
            ``fm.run`` in the block.

    Returns:
        a context manager; the tap is removed when the block ends, also on an error.

    Raises:
        RuntimeError: a tap is already active in this thread.
    """
    global _ACTIVE
    if _TAP.get() is not None:
        raise RuntimeError("funcmodels: a tap is already active; taps do not nest")
    token = _TAP.set(tap)
    with _LOCK:
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
        _TAP.reset(token)


def active_tap() -> Callable[[Context, Any, Any], Any] | None:
    """The tap of this thread's :func:`tapping` block, ``None`` outside one."""
    return _TAP.get() if _ACTIVE else None
