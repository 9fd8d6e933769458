"""Taps: a transform's view of every layer of a forward call (see :func:`tapping`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context

#: The tap of the calls of :func:`funcmodels.run` made inside :func:`tapping` (see there).
_TAP: Callable[[Context, Any, Any], Any] | None = None


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
    ``fm.run`` are tapped, not the members run inside a lifted vmap (``ctx.vmap``); taps do
    not nest, and the block is not thread-safe (one global, so that ``torch.compile``
    sees a constant outside it).

    Arguments:
        tap: ``tap(ctx, x, out) -> out``, called after every layer of every
            ``fm.run`` in the block.

    Returns:
        a context manager; the tap is removed when the block ends, also on an error.

    Raises:
        RuntimeError: a tap is already active.
    """
    global _TAP
    if _TAP is not None:
        raise RuntimeError("funcmodels: a tap is already active; taps do not nest")
    _TAP = tap
    try:
        yield
    finally:
        _TAP = None


def active_tap() -> Callable[[Context, Any, Any], Any] | None:
    return _TAP
