"""Data randomness from keys: permutation, choice, categorical, gumbel, batches.

Statistical checks use fixed keys and loose bounds (p-values above 1e-3, or six standard
deviations), so they are deterministic and would fail for a biased sampler.
"""

from __future__ import annotations

from collections import Counter

import pytest
import scipy.stats
import torch
from torch.func import vmap

import funcmodels as fm

R = fm.random


# -- permutation ---------------------------------------------------------------------------


def test_permutation_known_answer():
    # Pinned: a change of the stream must be deliberate.
    assert R.permutation(fm.key(0), 10).tolist() == [4, 5, 0, 7, 3, 1, 6, 8, 9, 2]


def test_permutation_is_a_permutation_and_a_function_of_the_key():
    for n in (0, 1, 7, 1000):
        p = R.permutation(fm.key(3), n)
        assert p.dtype == torch.int64 and sorted(p.tolist()) == list(range(n))
    assert torch.equal(R.permutation(fm.key(3), 50), R.permutation(fm.key(3), 50))
    assert not torch.equal(R.permutation(fm.key(3), 50), R.permutation(fm.key(4), 50))


def test_permutation_of_a_tensor_reorders_slices_along_dim():
    x = torch.arange(24.0).view(4, 6)
    rows = R.permutation(fm.key(1), x)
    assert torch.equal(rows, x[R.permutation(fm.key(1), 4)])
    cols = R.permutation(fm.key(1), x, dim=1)
    assert torch.equal(cols, x[:, R.permutation(fm.key(1), 6)])
    with pytest.raises(ValueError, match="at least one dim"):
        R.permutation(fm.key(1), torch.tensor(1.0))
    with pytest.raises(TypeError, match="non-negative int or a tensor"):
        R.permutation(fm.key(1), -3)


def test_permutations_of_three_are_uniform():
    perms = vmap(lambda k: R.permutation(k, 3))(fm.split(fm.key(5), 6000))
    counts = Counter(tuple(p) for p in perms.tolist())
    assert len(counts) == 6
    assert scipy.stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_permutation_under_vmap_over_keys_equals_a_loop():
    keys = fm.split(fm.key(2), 5)
    got = vmap(lambda k: R.permutation(k, 9))(keys)
    assert torch.equal(got, torch.stack([R.permutation(k, 9) for k in keys]))


# -- choice ---------------------------------------------------------------------------------


def test_choice_with_replacement_is_uniform():
    idx = R.choice(fm.key(6), 5, (20_000,))
    assert idx.dtype == torch.int64 and idx.min() >= 0 and idx.max() < 5
    assert scipy.stats.chisquare(torch.bincount(idx, minlength=5).tolist()).pvalue > 1e-3


def test_choice_without_replacement_gives_distinct_picks():
    picks = R.choice(fm.key(7), 10, (2, 3), replace=False)
    assert picks.shape == (2, 3) and len(set(picks.flatten().tolist())) == 6
    assert sorted(R.choice(fm.key(7), 4, (4,), replace=False).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot take 5 distinct picks from 4"):
        R.choice(fm.key(7), 4, (5,), replace=False)


def test_choice_with_probabilities_follows_them():
    p = torch.tensor([0.1, 0.0, 0.6, 0.3])
    idx = R.choice(fm.key(8), 4, (20_000,), p=p)
    counts = torch.bincount(idx, minlength=4)
    assert counts[1] == 0
    q = p.double()[[0, 2, 3]] / p.double().sum()
    expected = (q * 20_000).tolist()
    assert scipy.stats.chisquare(counts[[0, 2, 3]].tolist(), expected).pvalue > 1e-3
    # Without replacement: never picks a zero-probability item before the others run out,
    # and the first pick follows p.
    first = vmap(lambda k: R.choice(k, 4, (3,), replace=False, p=p)[0])(fm.split(fm.key(9), 3000))
    first_counts = torch.bincount(first, minlength=4)
    assert first_counts[1] == 0
    assert (
        scipy.stats.chisquare(first_counts[[0, 2, 3]].tolist(), (q * 3000).tolist()).pvalue > 1e-3
    )
    with pytest.raises(ValueError, match="p has 3 entries, expected 4"):
        R.choice(fm.key(8), 4, p=torch.ones(3) / 3)


def test_choice_of_rows():
    a = torch.arange(12).view(6, 2)
    rows = R.choice(fm.key(10), a, (4,))
    assert rows.shape == (4, 2)
    assert all(row.tolist() in a.tolist() for row in rows)
    assert torch.equal(rows, a[R.choice(fm.key(10), 6, (4,))])


# -- categorical and gumbel ---------------------------------------------------------------


def test_categorical_follows_the_softmax():
    logits = torch.tensor([0.0, 1.0, -1.0, float("-inf")])
    draws = R.categorical(fm.key(11), logits, shape=(20_000,))
    counts = torch.bincount(draws, minlength=4)
    assert counts[3] == 0
    expected = (torch.softmax(logits[:3].double(), 0) * counts[:3].sum()).tolist()
    assert scipy.stats.chisquare(counts[:3].tolist(), expected).pvalue > 1e-3


def test_categorical_batch_and_dim():
    logits = torch.full((5, 3), -1e9)
    logits[torch.arange(5), torch.tensor([2, 0, 1, 2, 0])] = 0.0
    assert R.categorical(fm.key(12), logits).tolist() == [2, 0, 1, 2, 0]
    assert R.categorical(fm.key(12), logits.T, dim=0).tolist() == [2, 0, 1, 2, 0]
    keys = fm.split(fm.key(13), 4)
    got = vmap(lambda k: R.categorical(k, torch.zeros(6)))(keys)
    assert torch.equal(got, torch.stack([R.categorical(k, torch.zeros(6)) for k in keys]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gumbel_ks(dtype):
    g = R.gumbel(fm.key(14), 50_000, dtype)
    assert g.dtype == dtype and torch.isfinite(g).all()
    assert scipy.stats.kstest(g.double().numpy(), "gumbel_r").pvalue > 1e-3


# -- batches ----------------------------------------------------------------------------------


def test_batches_cover_every_example_once_in_a_shuffled_order():
    x = torch.arange(10)
    y = torch.arange(10) * 10
    got = list(R.batches(fm.key(15), x, y, batch_size=4, drop_last=False))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    seen = torch.cat([b[0] for b in got])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert all(torch.equal(b[1], b[0] * 10) for b in got)  # the arrays stay aligned
    dropped = list(R.batches(fm.key(15), x, batch_size=4))
    assert [len(b[0]) for b in dropped] == [4, 4]
    assert torch.equal(dropped[0][0], got[0][0])  # the same key, the same order


def test_batches_errors():
    with pytest.raises(ValueError, match="different sizes of dim 0"):
        next(R.batches(fm.key(0), torch.ones(3), torch.ones(4), batch_size=2))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        next(R.batches(fm.key(0), torch.ones(3), batch_size=0))
    with pytest.raises(TypeError, match="expected one or more tensors"):
        next(R.batches(fm.key(0), batch_size=2))
    assert list(R.batches(fm.key(0), torch.ones(3), batch_size=4)) == []
