"""On the meta device nothing is sampled: draws, splits, folds and whole inits give meta
tensors of the right shapes and dtypes without running a Philox round on tensors."""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm
from funcmodels.random import _philox as R

fnn = fm.nn


@pytest.fixture
def rounds(monkeypatch):
    """Counts the calls of the array Philox paths (numpy's, torch's in-place one and the
    functional one); the Python-int path that derives CPU keys is not counted."""
    calls = []
    for name in ("_philox_numpy", "_philox_inplace", "_philox_functional"):
        real = getattr(R, name)
        monkeypatch.setattr(
            R, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    return calls


def _entries(tree):
    return {n: (tuple(t.shape), t.dtype, t.device.type) for n, t in tree.flat().items()}


def _big_stack():
    member = fnn.Sequential(fnn.Linear(10_000, 5_000), fnn.ReLU(), fnn.Linear(5_000, 10_000))
    return fnn.Stack(member, 100)  # 10^10 parameters: 40 GB if real


@pytest.mark.parametrize("where", ["device", "key"])
def test_a_huge_stack_inits_on_meta_without_sampling(rounds, where):
    spec = _big_stack()
    if where == "device":
        params = fm.init(fm.key(0), spec, device="meta")
    else:
        params = fm.init(fm.key(0, device="meta"), spec)
    assert rounds == []
    assert _entries(params) == {
        "0.weight": ((100, 5_000, 10_000), torch.float32, "meta"),
        "0.bias": ((100, 5_000), torch.float32, "meta"),
        "2.weight": ((100, 10_000, 5_000), torch.float32, "meta"),
        "2.bias": ((100, 10_000), torch.float32, "meta"),
    }


def test_meta_init_has_the_cpu_inits_names_shapes_and_dtypes(rounds):
    spec = fnn.Sequential(
        fnn.Conv2d(1, 4, 3), fnn.BatchNorm2d(4), fnn.ReLU(), fnn.Flatten(), fnn.Linear(16, 3)
    )
    spec = fnn.Stack(spec, 3)
    meta_p, meta_s = fm.init_with_state(fm.key(1), spec, device="meta", dtype=torch.float64)
    assert rounds == []
    cpu_p, cpu_s = fm.init_with_state(fm.key(1), spec, dtype=torch.float64)
    assert rounds, "the CPU init samples (the counter sees it)"
    for meta, cpu in ((meta_p, cpu_p), (meta_s, cpu_s)):
        want = {n: (s, d, "meta") for n, (s, d, _) in _entries(cpu).items()}
        assert _entries(meta) == want
        assert list(meta.flat()) == list(cpu.flat())


def test_many_small_layers_on_meta_run_no_rounds(rounds):
    spec = fnn.Sequential(*[fnn.Linear(4, 4) for _ in range(100)])
    params = fm.init(fm.key(2), spec, device="meta")
    assert rounds == [] and len(params.flat()) == 200


@pytest.mark.parametrize(
    ("draw", "dtype"),
    [
        (lambda k, s: R.bits(k, s, device="meta"), torch.int64),
        (lambda k, s: fm.random.uniform(k, s, torch.float16, "meta"), torch.float16),
        (lambda k, s: fm.random.uniform(k, s, device="meta", minval=-1.0), torch.float32),
        (lambda k, s: fm.random.normal(k, s, torch.float64, "meta"), torch.float64),
        (lambda k, s: fm.random.truncated_normal(k, -1.0, 1.0, s, device="meta"), torch.float32),
        (lambda k, s: fm.random.bernoulli(k, 0.3, s, device="meta"), torch.bool),
        (lambda k, s: fm.random.randint(k, s, 0, 7, torch.int32, "meta"), torch.int32),
        (lambda k, s: fm.random.gumbel(k, s, device="meta"), torch.float32),
    ],
)
def test_draws_on_meta_have_the_shape_and_dtype(rounds, draw, dtype):
    for k in (fm.key(3), fm.key(3, device="meta")):
        out = draw(k, (1000, 3000))
        assert (out.shape, out.dtype, out.device.type) == ((1000, 3000), dtype, "meta")
    assert rounds == []


def test_meta_keys_split_and_fold_to_meta_keys(rounds):
    k = fm.key(4, device="meta")
    assert fm.split(k, 5).shape == (5, 2) and fm.split(k, 5).is_meta
    assert fm.fold_in(k, 7).shape == (2,) and fm.fold_in(k, torch.tensor(7)).is_meta
    assert rounds == []
