"""The Philox generator's own speed: the eager fast path vs the functional path vs torch.

Contenders, each drawing ``n`` values (default 11,689,512, ResNet-18's parameter count):

* ``uniform``: ``fm.random.uniform(key, (n,), minval=-0.1, maxval=0.1)`` (the chunked
  eager path that ``fm.init`` takes on plain tensors: numpy's rounds, a large draw's
  blocks split over torch's threads);
* ``bits (fast)``: ``fm.random.bits(key, (n,))`` on the same path;
* ``bits (functional)``: the out-of-place path that runs under vmap, grad and compile,
  called directly on the whole tensor;
* ``torch uniform_``: ``torch.empty(n).uniform_(-0.1, 0.1)`` (torch's CPU generator).

The two ``bits`` paths are checked to be equal bit for bit before timing.

Run: ``python benchmarks/generator.py [--quick] [--threads 2] [--size N]``.
"""

from __future__ import annotations

import torch
from common import parse_args, report, row, time_interleaved

import funcmodels as fm
from funcmodels.random import _philox as R


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, size=(int, 11_689_512, "values per draw"))
    repeats = args.repeats or (3 if args.quick else 9)
    n, key = args.size, fm.key(3)

    def functional_bits() -> torch.Tensor:
        return R._blocks(key, R._STREAM_BITS, (n + 3) // 4).reshape(-1)[:n]

    if not torch.equal(R.bits(key, (n,)), functional_bits()):
        raise AssertionError("fast and functional paths disagree")
    print(f"fast and functional paths give the same {n} words")
    fns = {
        "uniform": lambda: fm.random.uniform(key, (n,), minval=-0.1, maxval=0.1),
        "bits (fast)": lambda: R.bits(key, (n,)),
        "bits (functional)": functional_bits,
        "torch uniform_": lambda: torch.empty(n).uniform_(-0.1, 0.1),
    }
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.1, clock=args.clock)
    what = f"{n:,} draws, CPU, {args.threads} threads"
    report(
        [
            row(what, timings, "torch uniform_"),
            row(what, timings, "uniform", ratio_of=("uniform", "torch uniform_")),
            row(what, timings, "bits (fast)"),
            row(what, timings, "bits (functional)", ratio_of=("bits (functional)", "bits (fast)")),
        ],
        args.threads,
    )


if __name__ == "__main__":
    main()
