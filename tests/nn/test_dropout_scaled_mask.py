"""Dropout's scaled mask made in numpy (``scaled_keep_mask``) against torch's
``keep_mask(...).to(dtype).div_(1 - p)``, bit for bit: the kept value is torch's
division, which for many ``p`` differs in the last bit from ``1 / (1 - p)`` rounded
once (p = 0.0024962556165751375 is one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import vmap

import funcmodels as fm
from funcmodels.random import _host as H
from funcmodels.random._samplers import keep_mask, scaled_keep_mask

_PS = [0.0024962556165751375, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1e-6]


def _torch_way(k, p, shape, dtype):
    return keep_mask(k, 1.0 - p, shape).to(dtype).div_(1.0 - p)


def test_the_pinned_p_rounds_differently_when_rounded_once():
    p = _PS[0]
    torch_value = torch.ones((), dtype=torch.float32).div_(1.0 - p).item()
    assert np.float32(1.0 / (1.0 - p)) != np.float32(torch_value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", _PS)
def test_equals_the_torch_way(p, dtype):
    k = fm.key(7)
    got = scaled_keep_mask(k, p, (33, 17), dtype)
    assert got.dtype == dtype and got.shape == (33, 17)
    assert torch.equal(got, _torch_way(k, p, (33, 17), dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_numpy_path_runs_and_matches_vmap(dtype):
    k = fm.key(8)
    p = _PS[0]
    scale = np.float32 if dtype == torch.float32 else np.float64
    host = H.halves_below(k, 50, round((1 - p) * 65536) - 32768, None, scale(1.0))
    assert host is not None and host.dtype == dtype
    got = scaled_keep_mask(k, p, (50,), dtype)
    batched = vmap(lambda kk: scaled_keep_mask(kk, p, (50,), dtype))(k[None])[0]
    assert torch.equal(got, batched)


def test_dropout_layer_output_is_unchanged():
    # x * (mask / (1 - p)) with the mask of the layer's key, as before.
    spec = fm.nn.Dropout(0.3)
    params = fm.init(fm.key(0), spec)
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    k = fm.key(9)
    got = fm.apply(params, x, key=k, train=True)
    want = x * _torch_way(k, 0.3, (8, 40), torch.float32)
    assert torch.equal(got, want)


def test_compiles_in_one_graph_with_the_same_mask():
    k = fm.key(10)
    compiled = torch.compile(
        lambda kk: scaled_keep_mask(kk, 0.2, (16, 8), torch.float32), fullgraph=True
    )
    assert torch.equal(compiled(k), scaled_keep_mask(k, 0.2, (16, 8), torch.float32))
