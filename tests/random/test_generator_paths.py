"""The eager paths (chunked; numpy's rounds on the CPU, torch's in-place ones elsewhere;
scratch in inference mode) against the functional path that vmap and compile take: the
same values for every sampler, and the results are ordinary tensors."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

import funcmodels as fm
from funcmodels.random import _philox as R
from funcmodels.random._samplers import keep_mask

_SAMPLERS = {
    "bits": lambda k, n: R.bits(k, n),
    "uniform": lambda k, n: fm.random.uniform(k, n),
    "uniform bounded": lambda k, n: fm.random.uniform(k, n, minval=-0.3, maxval=0.7),
    "uniform float16": lambda k, n: fm.random.uniform(k, n, torch.float16, minval=-2.0),
    "uniform float64": lambda k, n: fm.random.uniform(k, n, torch.float64),
    "normal": lambda k, n: fm.random.normal(k, n),
    "truncated normal": lambda k, n: fm.random.truncated_normal(k, -1.0, 2.0, n),
    "bernoulli": lambda k, n: fm.random.bernoulli(k, 0.3, n),
    "bernoulli tensor p": lambda k, n: fm.random.bernoulli(k, torch.full((n,), 0.6)),
    "randint": lambda k, n: fm.random.randint(k, n, -7, 1000),
    "gumbel": lambda k, n: fm.random.gumbel(k, n),
    "keep mask": lambda k, n: keep_mask(k, 0.8, (n,)),
}


@pytest.mark.parametrize("numpy", [True, False], ids=["numpy", "torch in place"])
@pytest.mark.parametrize("name", list(_SAMPLERS))
def test_fast_path_equals_functional_path_across_chunks(monkeypatch, name, numpy):
    monkeypatch.setattr(R, "_CHUNK", 16)  # blocks per chunk: many chunks
    monkeypatch.setattr(R, "_SMALL", 4)  # torch's in-place path from 5 blocks
    monkeypatch.setattr(R, "_numpy_path", lambda device: numpy)
    draw = _SAMPLERS[name]
    k = fm.key(21)
    n = 16 * 8 * 3 + 5
    fast = draw(k, n)
    functional = vmap(lambda kk: draw(kk, n))(k[None])[0]
    assert fast.dtype == functional.dtype
    assert torch.equal(fast, functional)


@pytest.mark.parametrize("numpy", [True, False], ids=["numpy", "torch in place"])
@pytest.mark.parametrize("name", list(_SAMPLERS))
def test_results_are_ordinary_tensors(monkeypatch, name, numpy):
    monkeypatch.setattr(R, "_numpy_path", lambda device: numpy)
    out = _SAMPLERS[name](fm.key(22), 5000)  # above the in-place path's threshold
    assert not out.is_inference()
    out.zero_()  # in place, outside inference mode: refused for an inference tensor
    x = torch.ones(5000, requires_grad=True)
    (x * out.to(x.dtype)).sum().backward()  # may be saved for backward


def test_numpy_rounds_match_the_reference_and_the_known_answer():
    keys = R._round_keys(0, 0)
    assert R._philox_numpy(keys, 0, 0, 1).tolist() == [
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ]
    keys = R._round_keys(0xFFFFFFFF, 123)
    want = [list(R._philox_py(0xFFFFFFFF, 123, c, 2)) for c in range(2**32 - 5, 2**32)]
    assert R._philox_numpy(keys, 2**32 - 5, 2, 5).tolist() == want


def test_empty_draws():
    for name, draw in _SAMPLERS.items():
        if name != "bernoulli tensor p":
            assert draw(fm.key(23), 0).shape == (0,), name
