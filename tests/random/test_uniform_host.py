"""float32 uniform draws converted in numpy (``_host.uniform_host``) against the torch
conversion of the functional path (vmap), bit for bit, at the extreme words where the
clamp below ``maxval`` decides, and across chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import vmap

import funcmodels as fm
from funcmodels.random import _host as H
from funcmodels.random import _philox as R

# (minval, maxval): intervals where the top lattice point rounds onto maxval (the clamp
# runs) and where it stays below (the clamp is skipped).
_INTERVALS = [(0.0, 1.0), (-1.0, 1.0), (0.1, 0.3), (-0.3, 0.7), (1e-3, 1e-3 + 3e-7), (5.0, 7.0)]


def _top_rounds_onto_maxval(minval: float, maxval: float) -> bool:
    scale = np.float32((maxval - minval) * 2.0**-24)
    return bool(np.float32(np.float32(2**24 - 1) * scale) + np.float32(minval) >= maxval)


def test_the_intervals_take_both_branches():
    taken = {_top_rounds_onto_maxval(lo, hi) for lo, hi in _INTERVALS[1:]}
    assert taken == {True, False}


@pytest.mark.parametrize("word", [0, 0x7FFFFFFF, 0xFFFFFFFF])
@pytest.mark.parametrize(("minval", "maxval"), _INTERVALS)
def test_extreme_words_match_the_functional_path(monkeypatch, word, minval, maxval):
    monkeypatch.setattr(
        R, "_blocks", lambda k, stream, n, device=None: torch.full((n, 4), word, dtype=torch.int64)
    )
    monkeypatch.setattr(
        H, "_numpy_words", lambda keys, start, m: np.full((m, 4), word, dtype=np.uint32)
    )
    k = fm.key(0)
    host = fm.random.uniform(k, 9, minval=minval, maxval=maxval)
    functional = vmap(lambda kk: fm.random.uniform(kk, 9, minval=minval, maxval=maxval))(k[None])[0]
    assert torch.equal(host, functional)
    assert bool((host < maxval).all()) and bool((host >= minval).all())


@pytest.mark.parametrize(("minval", "maxval"), _INTERVALS)
def test_random_words_match_the_functional_path_across_chunks(monkeypatch, minval, maxval):
    monkeypatch.setattr(R, "_CHUNK", 16)
    k = fm.key(5)
    n = 16 * 4 * 3 + 3
    host = fm.random.uniform(k, n, minval=minval, maxval=maxval)
    functional = vmap(lambda kk: fm.random.uniform(kk, n, minval=minval, maxval=maxval))(k[None])[0]
    assert torch.equal(host, functional)


def test_the_host_path_runs_and_returns_an_ordinary_tensor():
    host = H.uniform_host(fm.key(1), 10, 8, 2.0**-24, None, None)
    assert host is not None and host.dtype == torch.float32 and not host.is_inference()
    assert torch.equal(host, fm.random.uniform(fm.key(1), 10))
