"""transforms.dp's noise, Poisson sampling and privacy accounting: noise from the key only
with the std it promises, pinned sampling masks at their rate, and the accountant's epsilon
pinned."""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm
from transforms import dp

nn = fm.nn


# -- noise, sampling, accounting ---------------------------------------------------------------


def test_noise_comes_from_the_key():
    grads = fm.init(fm.key(0), nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10)))
    zero = fm.tree.map(torch.zeros_like, grads)
    a = dp.add_noise(zero, fm.key(1), noise_multiplier=1.1, max_norm=2.0)
    b = dp.add_noise(zero, fm.key(1), noise_multiplier=1.1, max_norm=2.0)
    c = dp.add_noise(zero, fm.key(2), noise_multiplier=1.1, max_norm=2.0)
    assert all(torch.equal(a[n], b[n]) for n in a.flat())
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert not torch.equal(a["0.weight"][:10, :10], a["1.weight"][:10, :10])
    noise = a["0.weight"]
    assert abs(noise.std().item() - 2.2) < 0.02 and abs(noise.mean().item()) < 0.02
    rng = torch.get_rng_state()
    dp.add_noise(zero, fm.key(1), noise_multiplier=1.0, max_norm=1.0)
    assert torch.equal(rng, torch.get_rng_state())


def test_poisson_sampling_is_pinned_and_has_the_rate():
    mask = dp.poisson_mask(fm.key(0), 16, 0.25)
    assert mask.tolist() == [bool(int(c)) for c in "0000000110100000"]
    big = dp.poisson_mask(fm.key(1), 100_000, 0.01)
    assert abs(big.float().mean().item() - 0.01) < 6 * (0.01 * 0.99 / 100_000) ** 0.5
    batches = list(dp.poisson_batches(fm.key(3), 50, 0.2, steps=4))
    assert len(batches) == 4 and len({len(b) for b in batches}) > 1
    assert torch.equal(
        batches[2], torch.nonzero(dp.poisson_mask(fm.fold_in(fm.key(3), 2), 50, 0.2)).squeeze(1)
    )


def test_epsilon_from_the_accountant():
    eps = dp.epsilon(noise_multiplier=1.0, sample_rate=128 / 1438, steps=165, delta=1e-5)
    assert eps == pytest.approx(EPSILON_PINNED, rel=1e-6)
    more_noise = dp.epsilon(noise_multiplier=2.0, sample_rate=128 / 1438, steps=165, delta=1e-5)
    assert more_noise < eps


EPSILON_PINNED = 8.869605089854627  # Opacus 1.6, RDP accountant
