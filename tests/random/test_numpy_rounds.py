"""numpy's Philox rounds in both layouts (``_philox_numpy_paired`` up to ``_PAIRED``
blocks, the four-lane rounds above) against the textbook rounds in Python ints
(``_philox_py``, checked against Random123's vectors in ``test_keys.py``), on random
keys, counters and streams, in both output dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from funcmodels.random import _philox as R
from funcmodels.random import _philox_np as N


def _want(k0: int, k1: int, start: int, stream: int, m: int) -> list[list[int]]:
    return [list(R._philox_py(k0, k1, c, stream)) for c in range(start, start + m)]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("seed", range(4))
def test_numpy_rounds_equal_the_textbook_rounds(seed, dtype):
    rng = np.random.default_rng(seed)
    k0, k1 = (int(w) for w in rng.integers(0, 2**32, 2))
    stream = int(rng.integers(0, 3))
    # Both layouts: on each side of the switch and at it; counters near the top of
    # 32 bits too (the first product's high word is largest there).
    for m in (1, 7, N._PAIRED, N._PAIRED + 1):
        start = int(rng.integers(0, 2**32 - m))
        got = R._philox_numpy(R._round_keys(k0, k1), start, stream, m, dtype)
        assert got.dtype == dtype and got.shape == (m, 4)
        rows = sorted({0, m // 2, m - 1})
        want = _want(k0, k1, start, stream, m)
        assert got[rows].tolist() == [want[i] for i in rows], m
        assert got.tolist() == want, m


def test_paired_and_four_lane_rounds_agree_on_every_block():
    keys = R._round_keys(0xFFFFFFFF, 0x12345678)
    m = 300
    for start in (0, 2**32 - m):
        paired = N._philox_numpy_paired(keys, start, 2, m, np.uint64)
        wide = R._philox_numpy(keys, start, 2, N._PAIRED + m, np.uint64)[:m]
        assert np.array_equal(paired, wide)
        assert paired.max() <= 0xFFFFFFFF


def test_paired_rounds_known_answer():
    # Random123's known answer for key (0, 0), counter 0 (the first vector in
    # test_keys.py), through the paired layout.
    got = N._philox_numpy_paired(R._round_keys(0, 0), 0, 0, 1, np.uint32)
    assert got.tolist() == [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]]
