"""A CPU init of fm.nn.Stack writes each member into the stacked tensors: the peak memory
is the stack and one member (measured in a subprocess, benchmarks/stack_init_memory.py:
1.08x the stacked size for 100 Linear(500, 500), 1.20x for 40 Linear(400, 400); building
every member and stacking them took 3.06x and 2.21x), with member
``i`` still exactly ``fm.init(fm.fold_in(key, i), spec)``."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.func import vmap

import funcmodels as fm

nn = fm.nn


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB on Linux")
def test_stack_init_peaks_near_the_stacked_size():
    sys.path.insert(0, "benchmarks")
    try:
        from stack_init_memory import peak_growth
    finally:
        sys.path.remove("benchmarks")
    stacked = 40 * (400 * 400 + 400) * 4
    # 1.6x: room for the allocator and one member; every member then a stack is >= 2x.
    assert peak_growth(40, 400) < 1.6 * stacked


def test_members_written_in_place_equal_their_own_inits():
    spec = nn.Stack(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 3)
    params, state = fm.init_with_state(fm.key(5), spec, dtype=torch.float64)
    for i in range(3):
        p, s = fm.init_with_state(fm.fold_in(fm.key(5), i), spec.spec, dtype=torch.float64)
        for k, v in p.flat().items():
            assert params[k][i].equal(v) and params[k].dtype == torch.float64
        for k, v in s.flat().items():
            assert state[k][i].equal(v) and state[k].dtype == v.dtype


def test_an_init_of_stacks_under_vmap_over_keys_still_stacks():
    spec = nn.Stack(nn.Linear(2, 3), 4)
    keys = fm.split(fm.key(0), 2)
    batched = vmap(lambda k: fm.init(k, spec).flat())(keys)
    for j in range(2):
        one = fm.init(keys[j], spec)
        for k, v in one.flat().items():
            torch.testing.assert_close(batched[k][j], v, atol=0, rtol=0)
