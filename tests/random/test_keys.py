"""PRNG keys: Philox known answers, determinism, independence, distributions, transforms.

Statistical tests run at fixed keys, so they are deterministic; their thresholds
(p > 1e-3, 5-sigma bounds) are loose enough that a correct generator passes at almost
every key, and tight enough that a stuck bit or a reused stream fails.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

import funcmodels as fm
from funcmodels import random as fmr
from funcmodels.random import _host as H
from funcmodels.random import _philox as R

# Random123 kat_vectors for philox4x32_10: (counter words, key words, output words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF,) * 2,
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

U32 = st.integers(0, 2**32 - 1)
N_STAT = 20_000  # draws per statistical test
SIGMA5 = 5.0 / math.sqrt(N_STAT)  # 5-sigma bound on a correlation of N_STAT pairs


def _i64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# -- Philox4x32-10 known answers ---------------------------------------------------------


@pytest.mark.parametrize(("ctr", "key", "want"), KAT)
def test_philox_py_known_answers(ctr, key, want):
    assert R._philox_py(*key, *ctr) == want


def test_philox_functional_known_answers_batched():
    # All three vectors in one call: keys and counters broadcast elementwise.
    k0, k1 = (_i64([kat[1][i] for kat in KAT]) for i in range(2))
    c = [_i64([kat[0][i] for kat in KAT]) for i in range(4)]
    out = R._philox_functional(k0, k1, *c)
    assert out.tolist() == [list(kat[2]) for kat in KAT]


def test_philox_inplace_known_answer():
    # The in-place path computes counters (c0, c1, 0, 0): only the first vector has that form.
    (ctr, key, want) = KAT[0]
    out = torch.empty(1, 4, dtype=torch.int64)
    R._philox_inplace(R._round_keys(*key), ctr[0], ctr[1], out, _scratch(1))
    assert out.tolist() == [list(want)]


def _scratch(m: int) -> list[torch.Tensor]:
    return [torch.empty(m, dtype=torch.int64) for _ in range(6)]


@settings(max_examples=20, deadline=None)
@given(k0=U32, k1=U32, start=st.integers(0, 2**32 - 9), m=st.integers(1, 8), c1=U32)
def test_three_philox_implementations_agree(k0, k1, start, m, c1):
    c0 = list(range(start, start + m))
    want = [list(R._philox_py(k0, k1, c, c1)) for c in c0]
    functional = R._philox_functional(_i64(k0), _i64(k1), _i64(c0), _i64(c1))
    inplace = torch.empty(m, 4, dtype=torch.int64)
    R._philox_inplace(R._round_keys(k0, k1), start, c1, inplace, _scratch(m))
    assert functional.tolist() == want
    assert inplace.tolist() == want


def test_bits_of_key_zero_is_the_first_known_answer():
    # fm.key(0) is key words (0, 0); the first block is counter (0, stream 0, 0, 0).
    assert fm.random.bits(fm.key(0), 4).tolist() == list(KAT[0][2])


def test_key_words_are_the_seed_bits():
    assert fm.key(2**40 + 5).tolist() == [2**8, 5]
    assert fm.key(-1).tolist() == [2**32 - 1, 2**32 - 1]


# -- known answers of the key streams ----------------------------------------------------
# Words produced by the current split and fold_in, pasted in as numbers: a change of either
# stream (which moves every init and every dropout mask) must be a deliberate change here.


def test_known_split_words():
    assert fm.split(fm.key(0), 3).tolist() == [
        [1792067052, 3928187465],
        [1940150773, 122242227],
        [1839274038, 3837959459],
    ]
    # The default is two keys, the first two of any longer split.
    assert fm.split(fm.key(0)).tolist() == [[1792067052, 3928187465], [1940150773, 122242227]]
    assert fm.split(fm.key(2**40 + 5), 2).tolist() == [
        [3865572569, 350983378],
        [3495011713, 574313779],
    ]


def test_known_fold_in_words():
    assert fm.fold_in(fm.key(0), 7).tolist() == [1364089280, 1995794412]
    assert fm.fold_in(fm.key(5), 2**32 - 1).tolist() == [1245936471, 1047576415]


# -- determinism -------------------------------------------------------------------------


def _draws(k: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "bits": R.bits(k, (3, 5)),
        "uniform": fmr.uniform(k, 7),
        "uniform64": fmr.uniform(k, 7, torch.float64),
        "normal": fmr.normal(k, (2, 4)),
        "truncated_normal": fmr.truncated_normal(k, -1.0, 2.0, 6),
        "bernoulli": fmr.bernoulli(k, 0.3, 9),
        "randint": fmr.randint(k, 8, -5, 1000),
        "split": fm.split(k, 3),
        "fold_in": fm.fold_in(k, 12345),
    }


def test_same_key_gives_same_draws():
    a, b = _draws(fm.key(7)), _draws(fm.key(7))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_different_keys_give_different_draws():
    a, b = _draws(fm.key(7)), _draws(fm.key(8))
    for name in a:
        assert not torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_same_draws_in_a_fresh_process():
    # A different PYTHONHASHSEED proves nothing depends on Python's salted hash().
    code = (
        "import funcmodels as fm; from tests.random.test_keys import _draws; "
        "print({n: t.tolist() for n, t in _draws(fm.key(2024)).items()})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    )
    here = {n: t.tolist() for n, t in _draws(fm.key(2024)).items()}
    assert res.stdout.strip() == repr(here)


# -- the eager in-place fast path and the functional path ----------------------------------


def _functional_bits(k: torch.Tensor, n: int) -> torch.Tensor:
    # Under vmap the key is a wrapped tensor, which forces the out-of-place path.
    return vmap(lambda kk: R.bits(kk, n))(k[None])[0]


@pytest.mark.parametrize("n_words", [33, 255, 256, 257, 511, 512, 513, 4 * 200 + 1])
def test_chunked_inplace_path_equals_functional_path(monkeypatch, n_words):
    calls = []
    inplace = R._philox_inplace

    def counting(*args):
        calls.append(args[3].shape[0])
        return inplace(*args)

    # 64 blocks (256 words) per chunk; the fast path starts above 8 blocks.
    monkeypatch.setattr(R, "_CHUNK", 64)
    monkeypatch.setattr(R, "_SMALL", 8)
    monkeypatch.setattr(R, "_philox_inplace", counting)
    monkeypatch.setattr(R, "_numpy_path", lambda device: False)  # torch's in-place path
    k = fm.key(11)
    fast = R.bits(k, n_words)
    assert sum(calls) == (n_words + 3) // 4 and max(calls) <= 64, "fast path not taken"
    calls.clear()
    assert torch.equal(fast, _functional_bits(k, n_words))
    assert not calls


def test_fast_path_at_the_real_chunk_size():
    k = fm.key(5)
    for n_blocks in (R._SMALL, R._SMALL + 1, R._CHUNK + 1):
        n = 4 * n_blocks - 1
        assert torch.equal(R.bits(k, n), _functional_bits(k, n)), n_blocks


# -- independence ------------------------------------------------------------------------


def test_split_keys_differ_from_each_other_and_the_parent():
    k = fm.key(3)
    keys = fm.split(k, 64)
    rows = {tuple(r) for r in keys.tolist()}
    assert len(rows) == 64 and tuple(k.tolist()) not in rows
    k1, k2 = fm.split(k)
    assert not torch.equal(k1, k2)


def test_split_is_a_prefix_of_a_longer_split():
    # Small CPU splits use Python ints, larger ones tensors: both must agree.
    k = fm.key(3)
    assert torch.equal(fm.split(k, 100)[:64], fm.split(k, 64))
    assert torch.equal(fm.split(k, 7), fm.split(k, 8)[:7])


def test_fold_in_has_no_collisions_and_differs_from_split():
    k = fm.key(9)
    folded = {tuple(fm.fold_in(k, i).tolist()) for i in range(1000)}
    assert len(folded) == 1000
    split = {tuple(r) for r in fm.split(k, 1000).tolist()}
    assert not folded & split
    assert tuple(k.tolist()) not in folded


@pytest.mark.parametrize("data", [0, 1, 2**31, 2**32 - 1])
def test_fold_in_int_equals_fold_in_tensor(data):
    k = fm.key(9)
    assert torch.equal(fm.fold_in(k, data), fm.fold_in(k, torch.tensor(data)))


def test_streams_of_derived_keys_are_uncorrelated():
    k = fm.key(17)
    keys = [k, *fm.split(k, 3), fm.fold_in(k, 0), fm.fold_in(k, 1)]
    x = torch.stack([fmr.uniform(kk, N_STAT, torch.float64) for kk in keys])
    r = torch.corrcoef(x)
    off = r[~torch.eye(len(keys), dtype=torch.bool)]
    assert off.abs().max() < SIGMA5, r
    # Neighbouring draws of one stream are uncorrelated too.
    lag = torch.corrcoef(torch.stack([x[0, :-1], x[0, 1:]]))[0, 1]
    assert lag.abs() < SIGMA5


# -- distributions -----------------------------------------------------------------------


def test_uniform_unit_interval_ks():
    u = fmr.uniform(fm.key(21), N_STAT, torch.float64)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert scipy.stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_uniform_with_bounds_ks():
    u = fmr.uniform(fm.key(22), N_STAT, minval=-2.0, maxval=3.0)
    assert -2.0 <= u.min() and u.max() < 3.0
    assert scipy.stats.kstest(u.numpy(), "uniform", args=(-2.0, 5.0)).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_ks(dtype):
    x = fmr.normal(fm.key(23), N_STAT, dtype)
    assert x.dtype == dtype and torch.isfinite(x).all()
    assert scipy.stats.kstest(x.double().numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 2.0), (0.5, 3.0), (-2.0, -1.5)])
def test_truncated_normal_bounds_and_ks(lower, upper):
    x = fmr.truncated_normal(fm.key(24), lower, upper, N_STAT)
    assert lower <= x.min() and x.max() <= upper
    ref = scipy.stats.truncnorm(lower, upper)
    assert scipy.stats.kstest(x.double().numpy(), ref.cdf).pvalue > 1e-3


def _binomial_ok(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("p", [0.0, 0.01, 0.3, 0.5, 0.9, 1.0])
def test_bernoulli_frequency(p):
    b = fmr.bernoulli(fm.key(25), p, (N_STAT,))
    assert b.dtype == torch.bool and b.shape == (N_STAT,)
    assert _binomial_ok(int(b.sum()), N_STAT, p)


def test_bernoulli_tensor_p_per_column():
    p = torch.tensor([0.05, 0.5, 0.8])
    b = fmr.bernoulli(fm.key(26), p, (N_STAT, 3))
    for j, pj in enumerate(p.tolist()):
        assert _binomial_ok(int(b[:, j].sum()), N_STAT, pj), j


def test_bernoulli_tensor_p_gives_independent_draws_of_its_shape():
    # Each entry of p gets its own random word (not one word broadcast to p's shape).
    b = fmr.bernoulli(fm.key(27), torch.full((N_STAT,), 0.5))
    assert b.shape == (N_STAT,)
    assert _binomial_ok(int(b.sum()), N_STAT, 0.5)
    both = (b[:-1] & b[1:]).sum()
    assert _binomial_ok(int(both), N_STAT - 1, 0.25)


def test_randint_chi_square_and_endpoints():
    lo, hi = -3, 7
    r = fmr.randint(fm.key(28), N_STAT, lo, hi)
    assert r.dtype == torch.int64
    assert r.min() == lo and r.max() == hi - 1  # minval inclusive, maxval exclusive
    counts = torch.bincount(r - lo, minlength=hi - lo)
    assert len(counts) == hi - lo
    assert scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_randint_extreme_ranges():
    k = fm.key(29)
    assert (fmr.randint(k, 50, 4, 5) == 4).all()
    big = fmr.randint(k, 1000, -(2**30), 2**30, torch.int32)
    assert big.dtype == torch.int32 and -(2**30) <= big.min() and big.max() < 2**30
    assert big.unique().numel() == 1000


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_uniform_low_precision_stays_below_one(dtype):
    u = fmr.uniform(fm.key(30), N_STAT, dtype)
    assert u.dtype == dtype
    assert 0.0 <= u.min() and u.max() < 1.0
    assert scipy.stats.kstest(u.double().numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("word", [0, 0xFFFFFFFF])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_extreme_words_stay_in_range(monkeypatch, word, dtype):
    # Every generator word at its extreme: the top lattice point must not round to 1
    # (uniform) nor reach erfinv(+-1) = inf (normal).
    def const_blocks(k, stream, n_blocks, device=None):
        return torch.full((n_blocks, 4), word, dtype=torch.int64)

    monkeypatch.setattr(R, "_blocks", const_blocks)
    monkeypatch.setattr(R, "_numpy_rounds", lambda keys: lambda start, m: const_blocks(0, 0, m))
    monkeypatch.setattr(
        H, "_numpy_words", lambda keys, start, m: np.full((m, 4), word, dtype=np.uint32)
    )
    k = fm.key(0)
    u = fmr.uniform(k, 8, dtype)
    assert 0.0 <= u.min() and u.max() < 1.0
    v = fmr.uniform(k, 8, dtype, minval=-1.0, maxval=1.0)
    assert -1.0 <= v.min() and v.max() < 1.0
    x = fmr.normal(k, 8, dtype)
    assert torch.isfinite(x).all() and x.abs().max() < 9
    t = fmr.truncated_normal(k, -2.0, 2.0, 8, dtype)
    assert -2.0 <= t.min() and t.max() <= 2.0
    g = fmr.gumbel(k, 8, dtype)
    assert torch.isfinite(g).all()


# -- transforms --------------------------------------------------------------------------

_PER_KEY = {
    "bits": lambda k: R.bits(k, (2, 3)),
    "uniform": lambda k: fmr.uniform(k, 5, minval=-1.0, maxval=4.0),
    "normal": lambda k: fmr.normal(k, (4,), torch.float64),
    "truncated_normal": lambda k: fmr.truncated_normal(k, -1.0, 1.0, 3),
    "bernoulli": lambda k: fmr.bernoulli(k, 0.4, 6),
    "randint": lambda k: fmr.randint(k, 5, 0, 17),
    "split": lambda k: fm.split(k, 3),
    "fold_in": lambda k: fm.fold_in(k, 99),
}


@pytest.mark.parametrize("name", list(_PER_KEY))
def test_vmap_over_keys_equals_a_loop(name):
    f = _PER_KEY[name]
    keys = fm.split(fm.key(31), 5)
    assert torch.equal(vmap(f)(keys), torch.stack([f(k) for k in keys]))


def test_vmap_fold_in_with_batched_data():
    k = fm.key(32)
    keys = fm.split(k, 6)
    data = torch.arange(6) * 1000
    loop = torch.stack([fm.fold_in(keys[i], int(data[i])) for i in range(6)])
    assert torch.equal(vmap(fm.fold_in)(keys, data), loop)
    shared = torch.stack([fm.fold_in(k, int(d)) for d in data])
    assert torch.equal(vmap(fm.fold_in, in_dims=(None, 0))(k, data), shared)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    def f(k):
        k2 = fm.fold_in(k, 7)
        return (
            R.bits(k2, 6),
            fmr.normal(k2, 5),
            fm.split(k, 3),
            fmr.uniform(k2, 4, minval=-1.0, maxval=2.0),
        )

    compiled = torch.compile(f, fullgraph=True)
    for seed in (3, 4):
        k = fm.key(seed)
        got, want = compiled(k), f(k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
        torch.testing.assert_close(got[3], want[3], atol=0, rtol=1e-6)
        # Generated code may evaluate erfinv differently in the last bit.
        torch.testing.assert_close(got[1], want[1], atol=0, rtol=1e-6)


# -- the global generator ----------------------------------------------------------------


def test_global_rng_is_never_touched():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    _draws(fm.key(33))
    vmap(lambda k: fmr.normal(k, 3))(fm.split(fm.key(33), 4))
    spec = fm.nn.Sequential(
        fm.nn.Linear(3, 4), fm.nn.ReLU(), fm.nn.Dropout(0.5), fm.nn.Linear(4, 2)
    )
    params, state = fm.init_with_state(fm.key(34), spec)
    x = torch.ones(5, 3)
    fm.apply(params, x)
    fm.apply(params, x, state=state, key=fm.key(35), train=True)
    fm.run(params, x, state=state, key=fm.key(35), train=True)
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_train_mode_is_a_function_of_the_key():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 64), fm.nn.Dropout(0.5))
    params = fm.init(fm.key(0), spec)
    x = torch.ones(4, 3)
    a = fm.apply(params, x, key=fm.key(1), train=True)
    b = fm.apply(params, x, key=fm.key(1), train=True)
    c = fm.apply(params, x, key=fm.key(2), train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(2), r"PRNG key.*float32 tensor of shape \(2,\)"),
        (0, r"PRNG key.*got int"),
        (torch.zeros(3, dtype=torch.int64), r"PRNG key.*shape \(3,\)"),
        (torch.zeros(4, 2, dtype=torch.int64), r"shape \(4, 2\).*vmap"),
        (torch.zeros(2, dtype=torch.int32), r"PRNG key.*int32"),
    ],
)
def test_non_key_is_rejected(bad, match):
    for f in (
        lambda: R.bits(bad, 3),
        lambda: fmr.uniform(bad, 3),
        lambda: fmr.normal(bad, 3),
        lambda: fmr.randint(bad, 3, 0, 5),
        lambda: fmr.bernoulli(bad, 0.5, 3),
        lambda: fm.split(bad),
        lambda: fm.fold_in(bad, 1),
        lambda: fm.init(bad, fm.nn.Linear(2, 2)),
    ):
        with pytest.raises(TypeError, match=match):
            f()


def test_bad_seed():
    with pytest.raises(TypeError, match="expected an int seed, got float"):
        fm.key(1.5)
    with pytest.raises(ValueError, match="must fit in 64 bits"):
        fm.key(2**64)


@pytest.mark.parametrize(
    ("shape", "exc", "match"),
    [
        ((2, -1), ValueError, r"fm.random.uniform: shape must be non-negative, got \(2, -1\)"),
        (2.5, TypeError, r"fm.random.uniform: shape must be an int or a sequence of ints"),
        ((2, 1.0), TypeError, r"sequence of ints, got \(2, 1.0\)"),
        ("ab", TypeError, r"sequence of ints, got 'ab'"),
    ],
)
def test_bad_shape(shape, exc, match):
    with pytest.raises(exc, match=match):
        fmr.uniform(fm.key(0), shape)


def test_bad_dtype():
    with pytest.raises(TypeError, match="floating torch.dtype, got torch.int32"):
        fmr.uniform(fm.key(0), 3, torch.int32)
    with pytest.raises(TypeError, match="integer dtype, got torch.float32"):
        fmr.randint(fm.key(0), 3, 0, 5, torch.float32)


@pytest.mark.parametrize(
    ("lo", "hi", "exc", "match"),
    [
        (5, 5, ValueError, r"need minval < maxval.*got \[5, 5\)"),
        (7, 2, ValueError, r"need minval < maxval.*got \[7, 2\)"),
        (0, 2**40, ValueError, r"maxval <= minval \+ 2\*\*31"),
        (0.0, 5, TypeError, "minval must be an int, got float"),
    ],
)
def test_bad_randint_range(lo, hi, exc, match):
    with pytest.raises(exc, match=match):
        fmr.randint(fm.key(0), 3, lo, hi)


def test_randint_range_must_fit_dtype():
    with pytest.raises(ValueError, match=r"\[0, 300\) does not fit in torch.int8"):
        fmr.randint(fm.key(0), 3, 0, 300, torch.int8)


@pytest.mark.parametrize("p", [1.5, -0.1, math.nan])
def test_bernoulli_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        fmr.bernoulli(fm.key(0), p, 3)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        fmr.bernoulli(fm.key(0), torch.tensor([0.5, p]))


def test_bernoulli_p_must_broadcast_to_shape():
    with pytest.raises(ValueError, match=r"p of shape \(3,\) does not broadcast to shape \(2,\)"):
        fmr.bernoulli(fm.key(0), torch.full((3,), 0.5), (2,))


def test_uniform_and_truncated_normal_bounds_order():
    with pytest.raises(ValueError, match="need minval < maxval, got 2.0, 1.0"):
        fmr.uniform(fm.key(0), 3, minval=2.0, maxval=1.0)
    with pytest.raises(ValueError, match="need lower < upper, got 1.0, 1.0"):
        fmr.truncated_normal(fm.key(0), 1.0, 1.0, 3)


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        (-1, ValueError, r"data must be in \[0, 2\*\*32\), got -1"),
        (2**32, ValueError, r"data must be in \[0, 2\*\*32\)"),
        (1.5, TypeError, "data must be an int, got float"),
        (True, TypeError, "data must be an int, got bool"),
        (torch.tensor(1.5), TypeError, "data must be an integer, got a torch.float32 tensor"),
        (torch.tensor([1, 2]), ValueError, r"data must be a scalar, got shape \(2,\)"),
    ],
)
def test_bad_fold_in_data(data, exc, match):
    with pytest.raises(exc, match=match):
        fm.fold_in(fm.key(0), data)


@pytest.mark.parametrize("num", [0, -2, 1.5, True])
def test_bad_split_count(num):
    with pytest.raises(ValueError, match="num must be a positive int"):
        fm.split(fm.key(0), num)
