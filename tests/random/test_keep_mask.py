"""Dropout's 16-bit keep mask: its stream against a reference written from the rule in
Python integers (on the Random123-checked Philox), the same bits on every path, and its
frequency and bias."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

import funcmodels as fm
from funcmodels.random import _philox as R
from funcmodels.random._samplers import keep_mask


def _reference(k: torch.Tensor, keep: float, n: int) -> list[bool]:
    """The documented rule: element e reads half e % 2 (low first) of word (e % 8) // 2 of
    block e // 8, and is kept when half ^ 0x8000 < round(keep * 2**16)."""
    k0, k1 = k.tolist()
    threshold = round(keep * 65536)
    out = []
    for e in range(n):
        word = R._philox_py(k0, k1, e // 8, R._STREAM_BITS)[(e % 8) // 2]
        half = (word >> (16 * (e % 2))) & 0xFFFF
        out.append((half ^ 0x8000) < threshold)
    return out


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.9, 0.1, 0.3])
def test_the_stream_is_the_documented_rule(keep):
    k = fm.key(12)
    assert keep_mask(k, keep, (50,)).tolist() == _reference(k, keep, 50)


@pytest.mark.parametrize("n", [8 * 256 + 3, 8 * 600 + 5])
def test_the_eager_chunked_path_equals_the_rule(monkeypatch, n):
    # Above 256 blocks the eager in-place path runs; chunks of 64 blocks cross boundaries.
    monkeypatch.setattr(R, "_CHUNK", 64)
    k = fm.key(13)
    assert keep_mask(k, 0.7, (n,)).tolist() == _reference(k, 0.7, n)


def test_same_bits_under_vmap_grad_and_for_a_batch_of_keys():
    keys = fm.split(fm.key(14), 3)
    shape = (40, 70)  # 2,800 elements: the eager fast path alone, the functional one in vmap
    alone = torch.stack([keep_mask(k, 0.8, shape) for k in keys])
    assert torch.equal(vmap(lambda k: keep_mask(k, 0.8, shape))(keys), alone)

    def masked_sum(w, k):
        return (w * keep_mask(k, 0.8, shape)).sum()

    g = torch.func.grad(masked_sum)(torch.ones(shape), keys[0])
    assert torch.equal(g, alone[0].float())


@pytest.mark.slow
def test_same_bits_compiled():
    k = fm.key(15)
    compiled = torch.compile(lambda k: keep_mask(k, 0.9, (33, 65)), fullgraph=True)
    assert torch.equal(compiled(k), keep_mask(k, 0.9, (33, 65)))


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.8, 0.95, 1.0])
def test_frequency_within_five_sigma(keep):
    n = 200_000
    kept = int(keep_mask(fm.key(16), keep, (n,)).sum())
    assert abs(kept - n * keep) <= 5 * math.sqrt(n * keep * (1 - keep)) + 1e-9


@pytest.mark.parametrize("keep", [0.8, 0.9, 1 / 3, 0.123456, 1e-6, 1 - 1e-6])
def test_bias_is_at_most_two_to_the_minus_seventeen(keep):
    # Over all 2**16 half-words (every value once), the kept fraction is exactly
    # round(keep * 2**16) / 2**16, so the probability is off by at most 2**-17.
    threshold = round(keep * 65536)
    halves = torch.arange(65536)
    exact = int(((halves ^ 0x8000) < threshold).sum()) / 65536
    assert exact == threshold / 65536
    assert abs(exact - keep) <= 2**-17


def test_keep_one_and_zero_and_devices():
    k = fm.key(17)
    assert keep_mask(k, 1.0, (3, 4)).all() and not keep_mask(k, 0.0, (300,)).any()
    meta = keep_mask(k, 0.5, (7, 9), device="meta")
    assert meta.shape == (7, 9) and meta.dtype == torch.bool and meta.is_meta
