"""Philox4x32-10 in numpy's ``uint64`` ufuncs: the eager path's rounds on the CPU (see
:mod:`funcmodels.random._philox`, whose other implementations give the same bits)."""

from __future__ import annotations

import numpy as np

from ._constants import _M0, _M1, _MASK

# The round constants as 0-d arrays: a ufunc call with a 0-d array operand costs about
# two thirds of one with a numpy scalar (0.45 against 0.68 us on 1,024 elements), which
# is most of a small mask's time.
_NP_CONSTANTS = tuple(np.array(c, dtype=np.uint64) for c in (_MASK, _M0, _M1, 32))


def _philox_numpy(keys, start: int, stream: int, m: int, dtype=np.uint64) -> np.ndarray:
    """Philox of counters ``(start + i, stream, 0, 0)``, ``i < m``: ``(m, 4)`` words of
    ``dtype`` (``uint64``, or ``uint32``, into which the last round casts its words).

    The CPU's eager path, with the savings of torch's in-place rounds
    (:func:`funcmodels.random._philox._philox_inplace`), in numpy's ``uint64`` ufuncs: a
    ufunc call costs a fraction of a microsecond where a torch op costs a few, which is
    most of a small draw's time (a dropout mask of 8,192 entries: ~100 calls in this
    layout), and per element they are as fast. Every constant is a ``uint64`` 0-d
    array or scalar (a Python int would promote the arrays to float64 under numpy 1).
    Up to :data:`_PAIRED` blocks the rounds run on paired lanes
    (:func:`_philox_numpy_paired`, the same bits in fewer calls).
    """
    if m <= _PAIRED:
        return _philox_numpy_paired(keys, start, stream, m, dtype)
    u = np.uint64
    mask, m0, m1, s32 = _NP_CONSTANTS
    c0, c1, c2, c3, p0, p1 = np.empty((6, m), dtype=np.uint64)
    out = np.empty((m, 4), dtype=dtype)
    (k0, k1), (k0b, k1b) = keys[0], keys[1]
    np.multiply(np.arange(start, start + m, dtype=np.uint64), m0, out=p0)
    np.bitwise_xor(np.right_shift(p0, s32, out=c2), u(k1), out=c2)
    q0 = (stream ^ k0) * _M0
    np.multiply(c2, m1, out=p1)
    np.bitwise_xor(np.right_shift(p1, s32, out=c0), u(k0b), out=c0)
    np.bitwise_and(np.bitwise_xor(p0, u((q0 >> 32) ^ k1b), out=c2), mask, out=c2)
    c1, p1 = p1, c1
    c3.fill(q0 & _MASK)
    wide = dtype == np.uint64
    for r, (k0, k1) in enumerate(keys[2:], start=2):
        last = r == len(keys) - 1
        np.multiply(c0, m0, out=p0)
        np.multiply(c2, m1, out=p1)
        n0, n2 = (out[:, 0], out[:, 2]) if last and wide else (c0, c2)
        np.bitwise_xor(np.right_shift(p1, s32, out=n0), c1, out=n0)
        np.bitwise_xor(np.right_shift(p0, s32, out=n2), c3, out=n2)
        np.bitwise_xor(n0, u(k0), out=n0)
        np.bitwise_xor(n2, u(k1), out=n2)
        if wide or not last:
            np.bitwise_and(n0, mask, out=n0)
            np.bitwise_and(n2, mask, out=n2)
        c1, p1 = p1, c1
        c3, p0 = p0, c3
    if wide:
        np.bitwise_and(c1, mask, out=out[:, 1])
        np.bitwise_and(c3, mask, out=out[:, 3])
    else:
        # numpy's integer casts wrap: the cast into uint32 is the mask.
        for col, word in enumerate((c0, c1, c2, c3)):
            out[:, col] = word
    return out


# Up to this many blocks the numpy rounds run on paired lanes: fewer calls (the fixed cost
# of a small draw), more memory per block (slower once the lanes leave the L1/L2 caches).
_PAIRED = 2048
_PAIRED_TABLES: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _paired_tables(m: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``m`` blocks from counter ``start``, key-free and made once (read-only):
    ``[M0] * m + [M1] * m``, and the high and low words of round 0's first products
    ``(start + i) * M0``, which do not depend on the key."""
    tables = _PAIRED_TABLES.get((m, start))
    if tables is None:
        if len(_PAIRED_TABLES) >= 32:
            _PAIRED_TABLES.clear()
        p0 = np.arange(start, start + m, dtype=np.uint64) * np.uint64(_M0)
        mask, _, _, s32 = _NP_CONSTANTS
        tables = (
            np.repeat(np.array([_M0, _M1], dtype=np.uint64), m),
            np.right_shift(p0, s32),
            np.bitwise_and(p0, mask),
        )
        for t in tables:
            t.flags.writeable = False
        _PAIRED_TABLES[(m, start)] = tables
    return tables


def _philox_numpy_paired(keys, start: int, stream: int, m: int, dtype) -> np.ndarray:
    """:func:`_philox_numpy` with words 0 and 2 side by side in one ``2m`` lane, ``[c0 |
    c2]``: a round is one product against ``[M0 | M1]``, one shift and one XOR with the
    previous products (aligned: each half meets its own half), two XORs with the round
    keys that also swap the halves, and one mask; six ufunc calls where
    :func:`_philox_numpy` makes ten, the same work per element. The previous products
    stand in for words 1 and 3 unmasked, as there. Round 0's products of the counters
    come from :func:`_paired_tables` (the same for every key).
    """
    u = np.uint64
    mask, _, m1, s32 = _NP_CONSTANTS
    s, h, pa, pb = np.empty((4, 2 * m), dtype=np.uint64)
    out = np.empty((m, 4), dtype=dtype)
    s0, s2, h0, h2 = s[:m], s[m:], h[m:], h[:m]
    (k0, k1), (k0b, k1b) = keys[0], keys[1]
    mv, hi0, lo0 = _paired_tables(m, start)
    # Rounds 0 and 1 as in _philox_inplace; pb ends as round 1's products [q0 | p1].
    np.bitwise_xor(hi0, u(k1), out=s2)
    q0 = (stream ^ k0) * _M0
    np.multiply(s2, m1, out=pb[m:])
    pb[:m].fill(q0)
    np.bitwise_xor(np.right_shift(pb[m:], s32, out=s0), u(k0b), out=s0)
    np.bitwise_xor(lo0, u((q0 >> 32) ^ k1b), out=s2)
    prev, cur = pb, pa
    for r, (k0, k1) in enumerate(keys[2:], start=2):
        np.multiply(s, mv, out=cur)
        np.bitwise_xor(np.right_shift(cur, s32, out=h), prev, out=h)
        if r == len(keys) - 1:
            break
        np.bitwise_xor(h0, u(k0), out=s0)
        np.bitwise_xor(h2, u(k1), out=s2)
        np.bitwise_and(s, mask, out=s)
        prev, cur = cur, prev
    if dtype == np.uint64:
        np.bitwise_and(np.bitwise_xor(h0, u(k0), out=h0), mask, out=out[:, 0])
        np.bitwise_and(cur[m:], mask, out=out[:, 1])
        np.bitwise_and(np.bitwise_xor(h2, u(k1), out=h2), mask, out=out[:, 2])
        np.bitwise_and(cur[:m], mask, out=out[:, 3])
    else:
        # numpy's integer casts wrap: writing into uint32 is the mask.
        np.bitwise_xor(h0, u(k0), out=out[:, 0], casting="unsafe")
        out[:, 1] = cur[m:]
        np.bitwise_xor(h2, u(k1), out=out[:, 2], casting="unsafe")
        out[:, 3] = cur[:m]
    return out
