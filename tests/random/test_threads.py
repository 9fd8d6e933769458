"""Large eager CPU draws split over torch's thread count (``funcmodels/random/_threads.py``):
the same values as on one thread and as the functional path that vmap takes, for every
sampler and sizes that split unevenly; the known answers through the split; a forked
child, concurrent Python threads, a changed thread count, transforms without threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch.func import vmap

import funcmodels as fm
from funcmodels.random import _philox as R
from funcmodels.random import _threads as T
from funcmodels.random._samplers import scaled_keep_mask

from .test_generator_paths import _SAMPLERS as PATH_SAMPLERS

# The generator-path tests' samplers, the scaled keep mask added (its own host path).
_SAMPLERS = {
    **{name: draw for name, draw in PATH_SAMPLERS.items() if name != "bernoulli tensor p"},
    "scaled keep mask": lambda k, n: scaled_keep_mask(k, 0.2, (n,), torch.float32),
}


@pytest.fixture
def threads():
    """Sets torch's thread count for a test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def small_split(monkeypatch):
    """Threads from 4 blocks each, chunks of 8 blocks; records the threads that made words."""
    monkeypatch.setattr(T, "_GRAIN", 4)
    monkeypatch.setattr(R, "_CHUNK", 8)
    seen: set[int] = set()
    rounds = R._philox_numpy

    def recording(*args, **kwargs):
        seen.add(threading.get_ident())
        return rounds(*args, **kwargs)

    monkeypatch.setattr(R, "_philox_numpy", recording)
    return seen


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("name", list(_SAMPLERS))
def test_split_draw_equals_one_thread_and_the_functional_path(
    threads, small_split, name, n_threads
):
    draw = _SAMPLERS[name]
    k = fm.key(31)
    # Tiny (one thread), at the grain, uneven splits, and many chunks per thread.
    for n in (1, 7, 8 * 8 - 1, 8 * 8 + 1, 3 * 8 * 8 + 5, 8 * 8 * 8 * 3 + 3):
        threads(1)
        one = draw(k, n)
        threads(n_threads)
        small_split.clear()
        split = draw(k, n)
        functional = vmap(lambda kk, n=n: draw(kk, n))(k[None])[0]
        assert split.dtype == one.dtype == functional.dtype
        assert torch.equal(split, one), n
        assert torch.equal(split, functional), n
        assert not split.is_inference()
        if n > 8 * 8 * 8:
            # A worker done with its range may take the next one: 2 threads at least.
            assert 2 <= len(small_split) <= n_threads, "the draw was not split"


def test_spans_cover_every_block_once_in_contiguous_ranges(threads, monkeypatch):
    monkeypatch.setattr(T, "_GRAIN", 3)
    for n_threads in (1, 2, 3, 4):
        threads(n_threads)
        for n_blocks in [0, *range(1, 80), 1000, 1001, 4099]:
            for chunk in (1, 2, 5, 16, 1 << 17):
                work = T.spans(n_blocks, chunk)
                flat = [c for part in work for c in part]
                assert [s for s, _ in flat] == list(np.cumsum([0] + [m for _, m in flat])[:-1]), (
                    n_blocks,
                    chunk,
                )
                assert sum(m for _, m in flat) == n_blocks
                assert all(0 < m <= chunk for _, m in flat)
                assert len(work) == max(1, min(n_threads, n_blocks // 3))
                if n_blocks:
                    assert all(work)


def test_known_answers_through_the_split(threads, small_split):
    threads(2)
    n_blocks = 8 * 8 * 5 + 3
    words = R.bits(fm.key(0), 4 * n_blocks).reshape(-1, 4)
    assert len(small_split) == 2
    # Random123's known answer for key (0, 0), counter 0.
    assert words[0].tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    for block in (1, 159, 160, 161, n_blocks - 1):  # either side of the threads' seam
        assert words[block].tolist() == list(R._philox_py(0, 0, block, R._STREAM_BITS))


def test_concurrent_python_threads_get_their_own_draws(threads, small_split):
    threads(2)
    n = 8 * 8 * 4 * 6 + 1
    keys = [fm.key(s) for s in range(6)]
    want = [fm.random.uniform(k, n) for k in keys] + [fm.random.normal(k, n) for k in keys]
    got: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        got[i] = [
            fm.random.uniform(keys[i], n) if j % 2 else fm.random.normal(keys[i], n)
            for j in range(8)
        ]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sorted(got) == list(range(6))
    for i, draws in got.items():
        for j, d in enumerate(draws):
            assert torch.equal(d, want[i] if j % 2 else want[6 + i]), (i, j)


def test_a_changed_thread_count_gets_a_pool_of_that_size(threads, small_split):
    n = 8 * 8 * 4 * 6
    want = fm.random.uniform(fm.key(2), n)
    for n_threads in (2, 4, 3):
        threads(n_threads)
        small_split.clear()
        assert torch.equal(fm.random.uniform(fm.key(2), n), want)
        assert 2 <= len(small_split) <= n_threads
        assert T._pool._max_workers == n_threads - 1  # the calling thread is the other


def test_no_threads_under_torch_func_transforms(threads, small_split):
    threads(2)
    n = 8 * 8 * 4 * 3
    k = fm.key(4)
    want = fm.random.normal(k, n)
    small_split.clear()
    g = torch.func.grad(lambda x: (x * fm.random.normal(k, n)).sum())(torch.ones(n))
    assert torch.equal(g, want)
    assert small_split == {threading.get_ident()}


def test_an_error_in_a_worker_reaches_the_caller(threads, small_split, monkeypatch):
    threads(2)
    rounds = R._philox_numpy

    def failing(keys, start, *args, **kwargs):
        if start > 0:
            raise RuntimeError("worker failed")
        return rounds(keys, start, *args, **kwargs)

    monkeypatch.setattr(R, "_philox_numpy", failing)
    with pytest.raises(RuntimeError, match="worker failed"):
        fm.random.uniform(fm.key(0), 8 * 8 * 4)


_FORK_CHILD = """
import os, sys, time, torch, funcmodels as fm
from funcmodels.random import _philox as R, _threads as T
T._GRAIN, R._CHUNK = 4, 8
torch.set_num_threads(2)
n = 8 * 8 * 4 * 6 + 3
want = fm.random.uniform(fm.key(9), n)
assert T._pool is not None, "the parent's draw did not split"
pid = os.fork()
if pid == 0:  # the child
    ok = False
    try:
        ok = torch.equal(fm.random.uniform(fm.key(9), n), want)
        ok = ok and torch.equal(fm.random.bits(fm.key(9), n), R.bits(fm.key(9), n))
    finally:
        os._exit(0 if ok else 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit(3)
"""


@pytest.mark.slow  # a subprocess that forks
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_on_threads_of_its_own():
    # The parent's pool exists (a split draw ran) when the child is forked; the child's
    # copy of it has no threads behind it, so a draw there would wait forever. A fresh
    # interpreter: no other library's threads (a test peer's) are forked along.
    out = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=180
    )
    assert out.returncode != 3, "a draw in a forked child hung"
    assert out.returncode == 0, out.stderr or "the child's draw differed"


@pytest.mark.slow  # a subprocess
def test_no_thread_at_import_nor_for_small_draws():
    code = (
        "import threading, torch, funcmodels as fm\n"
        "torch.set_num_threads(2)\n"
        "a = threading.active_count()\n"
        "fm.init(fm.key(0), fm.nn.Linear(64, 64))\n"
        "b = threading.active_count()\n"
        "fm.random.uniform(fm.key(0), 1 << 20)\n"
        "print(a, b, threading.active_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "2"]


@pytest.mark.parametrize("draw", [fm.random.uniform, fm.random.normal], ids=["uniform", "normal"])
def test_a_split_draw_stays_on_the_cpu_whatever_the_default_device(threads, small_split, draw):
    threads(2)
    n = 8 * 8 * 4 * 6 + 3
    k = fm.key(4)  # a CPU key (one made under a meta default is a meta key: no values)
    want = draw(k, n)
    with torch.device("meta"):
        got = draw(k, n, device="cpu")
    assert len(small_split) == 2
    assert got.device.type == "cpu"
    assert torch.equal(got, want)


_AT_EXIT = """
import atexit, sys, threading, torch, funcmodels as fm
from funcmodels.random import _philox as R, _threads as T
T._GRAIN = 4
torch.set_num_threads(2)
n = 8 * 8 * 4 * 6 + 3
want = fm.random.normal(fm.key(5), n)
def late():
    got = fm.random.normal(fm.key(5), n)
    print("same" if torch.equal(got, want) else "differs", flush=True)
atexit.register(late)
"""


@pytest.mark.slow  # a subprocess
def test_a_split_draw_during_interpreter_shutdown_runs_on_the_calling_thread():
    # At exit the pool takes no new work ("cannot schedule new futures"): the draw runs
    # its every range on the calling thread instead of failing.
    out = subprocess.run(
        [sys.executable, "-c", _AT_EXIT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["same"], out.stderr
