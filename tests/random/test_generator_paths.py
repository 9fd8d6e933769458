"""The eager fast path (chunked, in place, scratch in inference mode) against the
functional path that vmap and compile take: the same values for every sampler, and the
results are ordinary tensors."""

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


@pytest.mark.parametrize("name", list(_SAMPLERS))
def test_fast_path_equals_functional_path_across_chunks(monkeypatch, name):
    monkeypatch.setattr(R, "_CHUNK", 16)  # blocks per chunk: many chunks
    monkeypatch.setattr(R, "_SMALL", 4)  # the fast path from 5 blocks
    draw = _SAMPLERS[name]
    k = fm.key(21)
    n = 16 * 8 * 3 + 5
    fast = draw(k, n)
    functional = vmap(lambda kk: draw(kk, n))(k[None])[0]
    assert fast.dtype == functional.dtype
    assert torch.equal(fast, functional)


@pytest.mark.parametrize("name", list(_SAMPLERS))
def test_results_are_ordinary_tensors(name):
    out = _SAMPLERS[name](fm.key(22), 5000)  # above the fast path's threshold
    assert not out.is_inference()
    out.zero_()  # in place, outside inference mode: refused for an inference tensor
    x = torch.ones(5000, requires_grad=True)
    (x * out.to(x.dtype)).sum().backward()  # may be saved for backward
