"""Dropout's masks: 16 random bits per entry.

Eagerly, for one plain key, a mask is made in numpy on the CPU
(:func:`funcmodels.random._host.halves_below`) and in torch's ops elsewhere; a batched
key (under :func:`torch.func.vmap`) takes the functional torch path. Under
:func:`torch.compile`, for a mask on the CPU, it is one call of the operator
``funcmodels::keep_mask`` or ``funcmodels::scaled_keep_mask``
(:mod:`funcmodels.random._ops`), whose implementation is the eager path below: the same
bits, and no traced Philox rounds for inductor to turn into C++ kernels. Off the CPU the
rounds are traced (inductor fuses them into its own kernels there; the operator would
run them op by op and read the key back to the host).
"""

from __future__ import annotations

import functools
import math
import sys

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
    ``2**-16`` such as 0.5, 0.75, 0.9375. Under :func:`torch.compile`, on the CPU, the
    mask is one call of the operator ``funcmodels::keep_mask`` (the same bits).

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
    if torch.compiler.is_compiling() and device.type == "cpu":
        return torch.ops.funcmodels.keep_mask.default(k, keep, shape, device)
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
    are 0 either way) instead of two torch ops. Under :func:`torch.compile`, on the CPU, it
    is one call of the operator ``funcmodels::scaled_keep_mask`` (the same bits).

    Arguments:
        k: a key.
        p: the drop probability, in ``[0, 1)``.
        shape: the mask's shape.
        dtype: a floating dtype.
        device: where it goes (default the key's device).

    Returns:
        ``dtype`` tensor of ``shape``: 0 or ``1 / (1 - p)``.
    """
    device = k.device if device is None else torch.device(device)
    keeps_some = round((1.0 - p) * 65536.0) < 65536
    if torch.compiler.is_compiling() and keeps_some and device.type == "cpu":
        shape = _numel(shape, "scaled_keep_mask")[0]
        return torch.ops.funcmodels.scaled_keep_mask.default(k, p, shape, dtype, device)
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
