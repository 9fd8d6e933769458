"""Large eager draws on the CPU split over torch's thread count.

Philox's counters are positional, so the blocks of a draw fall into contiguous ranges
that are made independently, each with the same bits it would have in one pass. numpy's
ufuncs release the GIL on large arrays, so ranges given to worker threads run at once.
The calling thread makes the first range itself; the others go to a small pool of
``torch.get_num_threads() - 1`` threads, made at the first draw that needs it (none at
import), made again when the thread count changes, and dropped in a forked child (whose
copy of the pool has no threads behind it: a draw there would wait forever).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch._C import _functorch

# Fewest blocks worth a thread of their own (~0.7 ms of rounds): a split costs a worker's
# wake-up and ~10% more CPU time in all (the GIL between ufunc calls), which a draw
# must dwarf; on a loaded machine a split of 2**16 blocks or fewer lost (NOTES.md).
_GRAIN = 1 << 15

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _forget_pool() -> None:
    """In a forked child: the parent's pool and lock, copied without their threads."""
    global _lock, _pool, _pool_workers
    _lock, _pool, _pool_workers = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _submit(run: Callable[[list[tuple[int, int]]], None], parts) -> list[Future]:
    """``run(part)`` for each of ``parts`` on the pool, whose size follows torch's thread
    count (it is made again when that changed; under the lock, so that no other thread
    submits to the pool being replaced)."""
    global _pool, _pool_workers
    workers = max(len(parts), torch.get_num_threads() - 1)
    with _lock:
        if _pool_workers != workers:
            old, _pool, _pool_workers = _pool, ThreadPoolExecutor(workers), workers
            if old is not None:
                # Ranges already handed to it still run: only its idle threads end.
                old.shutdown(wait=False)
        return [_pool.submit(run, part) for part in parts]


def scratch_mode():
    """Inference mode for the generator's own buffers (a quarter fewer microseconds per
    op on small draws: no version counters), outside torch.func transforms, whose
    interaction with it is not ours to rely on."""
    if _functorch.peek_interpreter_stack() is None:
        return torch.inference_mode()
    return contextlib.nullcontext()


def spans(n_blocks: int, chunk: int) -> list[list[tuple[int, int]]]:
    """The chunks ``(start, m)`` of blocks ``0 .. n_blocks - 1``, one list per thread.

    Arguments:
        n_blocks: the draw's blocks.
        chunk: the most blocks in one chunk (a chunk's lanes stay in cache).

    Returns:
        A list (one entry per thread, the first for the calling thread) of lists of
        ``(start, m)``; the threads' ranges are contiguous and of nearly equal length,
        and one thread takes the whole draw when it is below :data:`_GRAIN` blocks per
        thread, torch runs on one thread, or a torch.func transform is active (its
        state is the calling thread's).
    """
    if n_blocks == 0:
        return [[]]
    threads = max(1, min(torch.get_num_threads(), n_blocks // _GRAIN))
    if threads > 1 and _functorch.peek_interpreter_stack() is not None:
        threads = 1
    work = []
    for t in range(threads):
        lo, hi = n_blocks * t // threads, n_blocks * (t + 1) // threads
        pieces = math.ceil((hi - lo) / chunk)
        cuts = [lo + (hi - lo) * i // pieces for i in range(pieces + 1)]
        work.append([(a, b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    return work


def run_spans(work: list[list[tuple[int, int]]], each: Callable[[int, int], None]) -> None:
    """``each(start, m)`` for every chunk of :func:`spans`, each thread's list in order.

    Arguments:
        work: what :func:`spans` returned.
        each: makes and stores the values of blocks ``start .. start + m - 1``; it runs
            on the calling thread (under :func:`scratch_mode`) and, for the other lists,
            on worker threads (under inference mode).

    Raises:
        whatever ``each`` raised, on any thread (after every thread has finished).
    """

    def run(chunks: list[tuple[int, int]], mode=torch.inference_mode) -> None:
        with mode():
            for start, m in chunks:
                each(start, m)

    if len(work) == 1:
        run(work[0], scratch_mode)
        return
    try:
        futures = _submit(run, work[1:])
    except RuntimeError:
        # The interpreter is shutting down (an atexit handler, a thread still running
        # after the main one): no new work is scheduled, so every range runs here.
        run([chunk for part in work for chunk in part], scratch_mode)
        return
    try:
        run(work[0], scratch_mode)
    finally:
        for f in futures:
            f.exception()  # wait for every range before anything is raised or returned
    for f in futures:
        f.result()
