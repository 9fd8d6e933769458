"""Shared timing helpers for the benchmark scripts.

Every script times its contenders side by side in one process, interleaved (A, B, C, A, B,
C, ...) after a warm-up, so that load from other processes hits all of them alike. A
contender's figure is the median over rounds of its time per call; a ratio is the median
over rounds of the per-round ratio (each round's contenders ran moments apart, so the
paired ratio is steadier than a ratio of medians on a busy machine).
"""

from __future__ import annotations

import argparse
import gc
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call times of one contender, one entry per round, in seconds."""

    name: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def parse_args(description: str, argv: Sequence[str] | None = None, **extra) -> argparse.Namespace:
    """Parse the common options and set torch's thread count.

    Arguments:
        description: the script's one-line purpose, for ``--help``.
        argv: arguments (default ``sys.argv[1:]``).
        **extra: ``name=(type, default, help)`` for script-specific options.

    Returns:
        the parsed options: ``quick``, ``threads``, ``repeats`` (``None`` unless given),
        ``clock`` (``time.perf_counter``, or ``time.thread_time`` with ``--cpu-time``) and
        the extras.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few rounds)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per contender")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time samples by the thread's CPU time (with --threads 1, on a shared machine)",
    )
    for name, (typ, default, help_) in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=default, help=help_)
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time measures one thread's CPU time: use it with --threads 1")
    # CPU time leaves out time spent descheduled, which a contender of many small ops
    # suffers more than one of a few large ops on a machine shared with other work.
    args.clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    return args


def command() -> str:
    """The command line that is running, for the NOTES.md entry."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def cuda_sync(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued kernels on ``device`` (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _run(
    fn: Callable[[], object],
    number: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    sync()
    start = clock()
    for _ in range(number):
        fn()
    sync()
    return (clock() - start) / number


def time_interleaved(
    contenders: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 2,
    min_sample_s: float = 0.05,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each contender once per round, in a new random order each round (seeded, so runs
    repeat the same orders), for ``repeats`` rounds.

    Arguments:
        contenders: name -> a function of no arguments doing one unit of work.
        repeats: timed rounds.
        warmup: untimed calls of each contender first (caches, allocator, lazy init).
        min_sample_s: each round times enough back-to-back calls of a contender to last
            about this long (calibrated after warm-up), so tiny calls are measurable.
        sync: called before and after each timed sample (``torch.cuda.synchronize`` on GPU).
        clock: what a sample measures: wall time (default), or ``time.thread_time`` for
            the CPU time of a single-threaded run on a machine shared with other work
            (time spent descheduled is not counted).

    Returns:
        name -> :class:`Timing` with ``repeats`` per-call times.
    """
    numbers: dict[str, int] = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        once = _run(fn, 1, sync, clock)
        numbers[name] = max(1, round(min_sample_s / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    gc_was_enabled = gc.isenabled()
    try:
        names = list(contenders)
        order = random.Random(0)
        for _ in range(repeats):
            # A new order every round, so that no contender mostly follows the same one.
            # (Rotating a fixed order does not do this: each contender then keeps its
            # predecessor in all rounds but one.)
            shuffled = names[:]
            order.shuffle(shuffled)
            for name in shuffled:
                fn = contenders[name]
                # One untimed call first: it pays for what the previous contender left
                # behind (memory handed back to the system, caches filled with its data),
                # so each sample times the contender warm, whoever ran before.
                fn()
                gc.collect()
                gc.disable()
                samples[name].append(_run(fn, numbers[name], sync, clock))
                if gc_was_enabled:
                    gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(name, tuple(s)) for name, s in samples.items()}


def ratio(timings: Mapping[str, Timing], num: str, den: str) -> float:
    """Median over rounds of ``time(num) / time(den)``."""
    pairs = zip(timings[num].samples, timings[den].samples, strict=True)
    return statistics.median(a / b for a, b in pairs)


def fmt_time(seconds: float) -> str:
    """``12.3 ms``, ``45.6 µs`` or ``1.23 s``, three significant digits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


TABLE_HEADER = "| figure | contender | median | ratio | target | met |\n|---|---|---|---|---|---|"


def row(
    figure: str,
    timings: Mapping[str, Timing],
    name: str,
    *,
    ratio_of: tuple[str, str] | None = None,
    target: str = "",
) -> str:
    """One markdown table row for contender ``name``.

    Arguments:
        figure: what is measured (model, batch, device, threads).
        timings: from :func:`time_interleaved`.
        name: the contender of this row.
        ratio_of: ``(a, b)`` to report ``time(a) / time(b)`` (see :func:`ratio`).
        target: ``'<= 1.10'`` or ``'>= 1.5'``: the bound on that ratio, checked in ``met``.

    Returns:
        ``| figure | contender | median | ratio | target | met |``
    """
    r_text = tgt = met = ""
    if ratio_of is not None:
        a, b = ratio_of
        r = ratio(timings, a, b)
        r_text = f"{a} / {b} = {r:.2f}x"
        if target:
            op, bound = target.split()
            met = "yes" if (r <= float(bound) if op == "<=" else r >= float(bound)) else "no"
            tgt = f"{target}x"
    return f"| {figure} | {name} | {fmt_time(timings[name].median)} | {r_text} | {tgt} | {met} |"


def report(rows: Sequence[str], threads: int) -> None:
    """Print the table, the thread count and the exact command."""
    print()
    print(TABLE_HEADER)
    for r in rows:
        print(r)
    print()
    print(f"torch {torch.__version__}, torch.set_num_threads({threads}); command: `{command()}`")


def assert_trees_close(
    got: Mapping[str, torch.Tensor],
    want: Mapping[str, torch.Tensor],
    what: str,
    *,
    rtol: float,
    atol: float,
) -> None:
    """Raise unless two ``{name: tensor}`` dicts have the same keys and close values."""
    if set(got) != set(want):
        raise AssertionError(f"{what}: names differ: {sorted(got)} vs {sorted(want)}")
    for k in want:
        torch.testing.assert_close(
            got[k], want[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what}, '{k}': {m}"
        )
