"""Dropout's masks: 16 random bits per entry, eager and as one opaque operator under
:func:`torch.compile`.

Eagerly (and under :func:`torch.func.vmap` outside compile) a mask is made as before: in
numpy on the CPU (:func:`funcmodels.random._host.halves_below`), in torch's ops
elsewhere. Under compile the Philox rounds in tensor ops would be traced, ~100 integer
ops per mask that inductor turns into generated C++ kernels (seconds of ``g++`` per
compile), so there the mask is a call of the custom operators ``funcmodels::keep_mask``
and ``funcmodels::scaled_keep_mask``, whose implementation is the eager generator (the
same function of the key, so the same bits) and which inductor calls as an extern
kernel. Their key may carry batch dimensions in front, ``(*batch, 2)``, one mask per key:
that is their vmap rule, so vmap over keys inside a compiled function gives each key the
mask it gives alone. The operators are registered once per process, at import.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._host import halves_below
from ._philox import _numel, generate, is_plain


def keep_mask(k: torch.Tensor, keep: float, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Dropout's mask: ``True`` with probability ``keep`` resolved to a multiple of
    ``2**-16``, from 16 random bits per element (eight elements per Philox block, half
    the generator's work of :func:`bernoulli`'s 32 bits).

    Element ``e`` reads half ``e % 2`` (the low 16 bits first) of word ``(e % 8) // 2`` of
    block ``e // 8``: ``h``, and is ``True`` when ``h ^ 0x8000 < round(keep * 2**16)``.
    (The XOR makes the rule the signed comparison ``s < t - 2**15`` of ``h`` read as an
    int16, which the eager path does on an ``int16`` view of the words.) The
    probability is off by at most ``2**-17`` (7.6e-6), and exact for multiples of
    ``2**-16`` such as 0.5, 0.75, 0.9375. Under :func:`torch.compile` the mask is one
    call of the operator ``funcmodels::keep_mask`` (the same bits).

    Arguments:
        k: a key.
        keep: the probability of ``True``, a float in ``[0, 1]``.
        shape: the mask's shape.
        device: where it goes (default the key's device).

    Returns:
        ``bool`` tensor of ``shape``.
    """
    shape, n = _numel(shape, "keep_mask")
    threshold = round(keep * 65536.0)
    device = k.device if device is None else torch.device(device)
    if threshold >= 65536:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if torch.compiler.is_compiling():
        return _keep_mask_op(k, keep, shape, device)
    return _keep_mask(k, threshold, shape, n, device)


def _keep_mask(k: torch.Tensor, threshold: int, shape, n: int, device) -> torch.Tensor:
    """:func:`keep_mask` of ``threshold = round(keep * 2**16) < 2**16``, ``n`` entries."""
    signed = threshold - 32768
    host = halves_below(k, n, signed, device, shape=shape)
    if host is not None:
        return host

    def convert(words: torch.Tensor) -> torch.Tensor:
        if is_plain(words) and sys.byteorder == "little":
            # As int32 (a wrapping cast keeps the 32 bits), each word's two int16 are its
            # low and high halves, in element order: one contiguous compare.
            return (words.to(torch.int32).view(torch.int16) < signed).reshape(-1)
        halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1)
        return ((halves ^ 0x8000) < threshold).reshape(-1)

    return generate(k, n, 8, convert, device).reshape(shape)


@functools.lru_cache(maxsize=64)
def _inverted_keep(p: float, dtype: torch.dtype) -> float:
    """``1 / (1 - p)`` as torch's ``ones(dtype).div_(1 - p)`` makes it (the kept value of
    :func:`scaled_keep_mask`), as a Python float."""
    return torch.ones((), dtype=dtype).div_(1.0 - p).item()


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def scaled_keep_mask(
    k: torch.Tensor, p: float, shape: tuple[int, ...], dtype: torch.dtype, device=None
) -> torch.Tensor:
    """Dropout's scaled mask: :func:`keep_mask` of ``1 - p`` in ``dtype``, divided by
    ``1 - p``, bitwise as ``keep_mask(...).to(dtype).div_(1 - p)``.

    On the CPU, for float32 and float64, the scaled mask is made in numpy from the
    booleans (one multiply by the kept value torch's division gives; the dropped entries
    are 0 either way) instead of two torch ops. Under :func:`torch.compile` it is one
    call of the operator ``funcmodels::scaled_keep_mask`` (the same bits).

    Arguments:
        k: a key.
        p: the drop probability, in ``[0, 1)``.
        shape: the mask's shape.
        dtype: a floating dtype.
        device: where it goes (default the key's device).

    Returns:
        ``dtype`` tensor of ``shape``: 0 or ``1 / (1 - p)``.
    """
    if torch.compiler.is_compiling() and round((1.0 - p) * 65536.0) < 65536:
        device = k.device if device is None else torch.device(device)
        return _scaled_keep_mask_op(k, p, _numel(shape, "keep_mask")[0], dtype, device)
    return _scaled_keep_mask(k, p, shape, dtype, device)


def _scaled_keep_mask(k: torch.Tensor, p: float, shape, dtype: torch.dtype, device):
    """:func:`scaled_keep_mask` made eagerly."""
    threshold = round((1.0 - p) * 65536.0)
    kind = _NUMPY_FLOATS.get(dtype)
    # Only where the numpy path can run: elsewhere ``.item()`` may not be readable.
    if kind is not None and threshold < 65536 and is_plain(k):
        n = math.prod(shape)
        scale = kind(_inverted_keep(p, dtype))
        host = halves_below(k, n, threshold - 32768, device, scale, shape)
        if host is not None:
            return host
    return keep_mask(k, 1.0 - p, shape, device).to(dtype).div_(1.0 - p)


def _per_key(key: torch.Tensor, shape, dtype, device, make: Callable) -> torch.Tensor:
    """``make(k)`` (a mask of ``shape``) for each key ``k`` of ``key`` ``(*batch, 2)``,
    stacked as ``(*batch, *shape)``."""
    if key.dim() == 1:
        return make(key)
    out = torch.empty((*key.shape[:-1], *shape), dtype=dtype, device=device)
    rows = out.view(-1, *shape)
    for i, k in enumerate(key.reshape(-1, 2)):
        rows[i] = make(k)
    return out


@torch.library.custom_op("funcmodels::keep_mask", mutates_args=())
def _keep_mask_op(
    key: torch.Tensor, keep: float, shape: Sequence[int], device: torch.device
) -> torch.Tensor:
    """:func:`keep_mask` for keys ``(*batch, 2)``: ``bool`` ``(*batch, *shape)``."""
    shape = tuple(shape)
    threshold, n = round(keep * 65536.0), math.prod(shape)
    return _per_key(
        key, shape, torch.bool, device, lambda k: _keep_mask(k, threshold, shape, n, device)
    )


@torch.library.custom_op("funcmodels::scaled_keep_mask", mutates_args=())
def _scaled_keep_mask_op(
    key: torch.Tensor, p: float, shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`scaled_keep_mask` for keys ``(*batch, 2)``: ``dtype`` ``(*batch, *shape)``."""
    shape = tuple(shape)
    return _per_key(
        key, shape, dtype, device, lambda k: _scaled_keep_mask(k, p, shape, dtype, device)
    )


@_keep_mask_op.register_fake
def _(key, keep, shape, device):
    return torch.empty((*key.shape[:-1], *shape), dtype=torch.bool, device=device)


@_scaled_keep_mask_op.register_fake
def _(key, p, shape, dtype, device):
    return torch.empty((*key.shape[:-1], *shape), dtype=dtype, device=device)


@_keep_mask_op.register_vmap
def _(info, in_dims, key, keep, shape, device):
    if in_dims[0] is None:
        return _keep_mask_op(key, keep, shape, device), None
    return _keep_mask_op(key.movedim(in_dims[0], 0), keep, shape, device), 0


@_scaled_keep_mask_op.register_vmap
def _(info, in_dims, key, p, shape, dtype, device):
    if in_dims[0] is None:
        return _scaled_keep_mask_op(key, p, shape, dtype, device), None
    return _scaled_keep_mask_op(key.movedim(in_dims[0], 0), p, shape, dtype, device), 0
