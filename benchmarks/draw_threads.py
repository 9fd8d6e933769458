"""Thread speedup of one large eager CPU draw: the numpy rounds on one thread vs split.

A draw of ``n`` float32 uniforms (default 2,359,296, ResNet-18's largest weight, 512 x
512 x 3 x 3) and of ``n`` normals, each at ``torch.set_num_threads(1)`` and at
``--threads`` threads, where the blocks split into contiguous ranges made at once
(``funcmodels/random/_threads.py``). Both thread counts give the same values (checked
first). Wall clock: the point is the elapsed time, so run it on a quiet machine; the
ratio is ``split / one thread`` (below 1 is a gain).

Run: ``python benchmarks/draw_threads.py [--quick] [--threads 2] [--size N]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from common import parse_args, report, row, time_interleaved

import funcmodels as fm


def at(threads: int, draw: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``draw`` at ``threads`` torch threads."""

    def run() -> torch.Tensor:
        torch.set_num_threads(threads)
        return draw()

    return run


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, size=(int, 2_359_296, "values per draw"))
    if args.cpu_time:
        raise SystemExit("the split is about elapsed time: run without --cpu-time")
    repeats = args.repeats or (3 if args.quick else 21)
    n, key, threads = args.size, fm.key(3), args.threads
    draws = {
        "uniform": lambda: fm.random.uniform(key, (n,)),
        "normal": lambda: fm.random.normal(key, (n,)),
    }
    fns = {}
    for name, draw in draws.items():
        fns[f"{name}, 1 thread"] = at(1, draw)
        fns[f"{name}, {threads} threads"] = at(threads, draw)
        if not torch.equal(fns[f"{name}, 1 thread"](), fns[f"{name}, {threads} threads"]()):
            raise AssertionError(f"{name}: the split draw differs from the one-thread draw")
    print(f"1 and {threads} threads give the same {n:,} values")
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.1, clock=args.clock)
    torch.set_num_threads(threads)
    what = f"{n:,} draws, CPU"
    rows = []
    for name in draws:
        one, split = f"{name}, 1 thread", f"{name}, {threads} threads"
        rows += [row(what, timings, one), row(what, timings, split, ratio_of=(split, one))]
    report(rows, threads)


if __name__ == "__main__":
    main()
