"""transforms.EarlyExit: does eager compaction really save the compute the exits skip?

8 blocks Linear(512, 2048)-ReLU-Linear(2048, 512), an exit head Linear(512, 10) after
each, batch 256, eval, max_prob criterion. The inputs are built so that exits are mixed
across depths (each sample's scale sets its confidence), and the threshold is picked from
a sweep as the one whose mean depth is closest to half the blocks. Contenders, timed
interleaved in one run:

* ``early exit``: ``fm.apply`` in eager mode (finished samples leave the batch);
* ``full depth``: the same model with threshold 1.0 (no sample leaves early: every block
  on every row, heads included).

The ideal is ``full depth x mean blocks run / 8``; the figure is ``early exit / ideal``.

Run: ``python benchmarks/early_exit.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import dataclasses

import torch
from common import parse_args, report, row, time_interleaved

import funcmodels as fm
import transforms

nn = fm.nn
BLOCKS, WIDTH, HIDDEN, BATCH = 8, 512, 2048, 256


def spec(threshold: float) -> transforms.EarlyExit:
    blocks = tuple(
        nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, WIDTH))
        for _ in range(BLOCKS)
    )
    return transforms.EarlyExit(
        blocks, tuple(nn.Linear(WIDTH, 10) for _ in range(BLOCKS)), threshold=threshold
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (5 if args.quick else 15)
    params = fm.init(fm.key(0), spec(0.5))
    # Deeper heads are made sharper and the inputs' scales spread over two decades, so a
    # sample's confidence grows with depth at its own pace: exits spread over the depths.
    sharper = {f"heads.{i}.weight": params[f"heads.{i}.weight"] * 4.0**i for i in range(BLOCKS)}
    params = fm.tree.at(params, list(sharper), list(sharper.values()))
    scales = torch.logspace(-3, 1, BATCH)[:, None]
    x = fm.random.normal(fm.key(1), (BATCH, WIDTH)) * scales

    def at(threshold: float) -> fm.Params:
        return params.with_spec(dataclasses.replace(params.spec, threshold=threshold))

    with torch.no_grad():
        sweep = []
        for t in [i / 200 for i in range(20, 200)]:
            depth = fm.run(at(t), x).aux[""]["depth"].float()
            sweep.append((abs(depth.mean().item() - BLOCKS / 2), t, depth))
    _, threshold, depth = min(sweep, key=lambda s: s[0])
    mean_depth = depth.mean().item()
    hist = torch.bincount(depth.long(), minlength=BLOCKS + 1)[1:].tolist()
    print(
        f"threshold {threshold}: mean blocks {mean_depth:.2f} of {BLOCKS}; exits per depth {hist}"
    )
    early, full = at(threshold), at(1.0)

    def run_early():
        with torch.no_grad():
            return fm.apply(early, x)

    def run_full():
        with torch.no_grad():
            return fm.apply(full, x)

    with torch.no_grad():
        assert fm.run(full, x).aux[""]["depth"].min().item() == BLOCKS
    timings = time_interleaved(
        {"early exit": run_early, "full depth": run_full}, repeats=repeats, min_sample_s=0.2
    )
    ideal = timings["full depth"].median * mean_depth / BLOCKS
    ratio = timings["early exit"].median / ideal
    what = f"EarlyExit 8 x MLP 512-2048-512, batch {BATCH}, eval, CPU, {args.threads} threads"
    rows = [row(what, timings, "full depth"), row(what, timings, "early exit")]
    report(rows, args.threads)
    met = "yes" if ratio <= 1.15 else "no"
    print(
        f"ideal = full depth x {mean_depth:.2f} / {BLOCKS} = {ideal * 1e3:.1f} ms; "
        f"early exit / ideal = {ratio:.2f}x (target <= 1.15x: {met})"
    )


if __name__ == "__main__":
    main()
