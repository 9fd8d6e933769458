"""Eager draws on the CPU converted in numpy straight into their result: the words of
the numpy Philox rounds (:func:`funcmodels.random._philox._philox_numpy`) as ``uint32``,
chunk by chunk (a large draw's chunks on several threads), turned into dropout's masks
and float32 uniforms without a torch op per chunk. The module's settings (chunk size,
which path runs) are read from ``_philox`` at call time, so one switch governs both."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from . import _philox as P
from . import _threads


def host_keys(k: torch.Tensor, n_blocks: int, device) -> list[tuple[int, int]] | None:
    """The round keys of ``k`` where the words of ``n_blocks`` blocks are made in numpy
    and handed to a converter (see :func:`for_each_chunk`); ``None`` where this path does
    not run (see :func:`generate`), or on a big-endian host (the callers read ``uint32``
    and ``int16`` views).
    """
    device = k.device if device is None else torch.device(device)
    if sys.byteorder != "little" or not (n_blocks and P.is_plain(k)):
        return None
    if device.type != "cpu" or k.device.type != "cpu" or not P._numpy_path(device):
        return None
    return P._round_keys(*k.tolist())


def for_each_chunk(keys, n_blocks: int, each: Callable[[int, np.ndarray], None]) -> None:
    """``each(start, words)`` for the words of blocks ``0 .. n_blocks - 1``, made in
    numpy chunk by chunk, ``words`` a ``uint32`` array of shape ``(m, 4)`` (blocks
    ``start .. start + m - 1``); a large draw's chunks on several threads
    (:mod:`._threads`), so ``each`` writes only its own blocks' part of the result.

    For samplers that convert in numpy straight into their result: no ``int64`` words,
    no torch op per chunk, no copy out of scratch.
    """
    work = _threads.spans(n_blocks, P._CHUNK)
    if len(work) == 1 and len(work[0]) == 1:  # one chunk, as every small draw
        each(0, _numpy_words(keys, 0, n_blocks))
        return
    _threads.run_spans(work, lambda start, m: each(start, _numpy_words(keys, start, m)))


def _numpy_words(keys, start: int, m: int) -> np.ndarray:
    """The ``(m, 4)`` ``uint32`` words of blocks ``start + i`` (a seam for tests)."""
    return P._philox_numpy(keys, start, P._STREAM_BITS, m, np.uint32)


def halves_below(
    k: torch.Tensor,
    n: int,
    below: int,
    device,
    scale: np.floating | None = None,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor | None:
    """``n`` booleans ``h < below`` of the words' 16-bit halves ``h`` read as ``int16``,
    in element order (block by block, each word's low half first), made in numpy alone;
    ``None`` where this path does not run (see :func:`host_keys`). With ``scale`` (a
    numpy float32 or float64), the booleans times ``scale`` in its dtype instead; with
    ``shape`` (of ``n`` entries), reshaped to it (in numpy: a torch reshape costs more).

    Dropout's masks on the CPU: numpy compares an ``int16`` view of the words and the
    result becomes a tensor without a copy.
    """
    n_blocks = -(-n // 8)
    keys = host_keys(k, n_blocks, device)
    if keys is None:
        return None
    out = np.empty((n_blocks, 8), dtype=np.bool_)

    def each(start: int, words: np.ndarray) -> None:
        np.less(words.view(np.int16), below, out=out[start : start + len(words)])

    for_each_chunk(keys, n_blocks, each)
    if scale is not None:
        out = np.multiply(out, scale, dtype=scale.dtype)
    out = out.reshape(-1)[:n]
    return torch.from_numpy(out if shape is None else out.reshape(shape))


def uniform_host(
    k: torch.Tensor, n: int, shift: int, scale: float, shifted: tuple[float, float] | None, device
) -> torch.Tensor | None:
    """``n`` float32 values ``(w >> shift) * scale`` of the words ``w``, in element order,
    then ``+ minval`` and ``min(., top)`` for ``shifted = (minval, top)``, made in numpy
    straight into the result; ``None`` where this path does not run (see
    :func:`host_keys`).

    The same float32 operations in the same order as the torch path of
    :func:`funcmodels.random.uniform` (``w >> shift`` is exact in float32 for
    ``shift >= 8``, and torch rounds a Python scale to float32 before multiplying), so
    the same bits. The ``min`` (numpy's costs as much as the rest of the conversion) runs
    only where the largest possible value, ``(2**(32 - shift) - 1) * scale + minval`` in
    the same float32 operations, exceeds ``top``: rounding is monotonic, so otherwise it
    changes nothing.
    """
    n_blocks = -(-n // 4)
    keys = host_keys(k, n_blocks, device)
    if keys is None:
        return None
    f32 = np.float32
    clamp = False
    if shifted is not None:
        largest = f32(f32((1 << (32 - shift)) - 1) * f32(scale)) + f32(shifted[0])
        clamp = bool(largest > f32(shifted[1]))
    out = torch.empty(n_blocks * 4, dtype=torch.float32, device="cpu")
    flat = out.numpy()

    def each(start: int, words: np.ndarray) -> None:
        w = words.reshape(-1)
        seg = flat[start * 4 : start * 4 + len(w)]
        np.right_shift(w, np.uint32(shift), out=w)
        # Below 2**31 after the shift: the int32 view is the same number, and numpy's
        # int32 -> float32 cast is faster than its uint32 one.
        np.copyto(seg, w.view(np.int32), casting="unsafe")
        np.multiply(seg, f32(scale), out=seg)
        if shifted is not None:
            np.add(seg, f32(shifted[0]), out=seg)
        if clamp:
            np.minimum(seg, f32(shifted[1]), out=seg)

    for_each_chunk(keys, n_blocks, each)
    return out[:n]
