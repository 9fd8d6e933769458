"""Train-mode dropout: ``fm.nn.Dropout`` and ``fm.random.bernoulli`` vs torch's dropout.

Eager, on a ``4096 x 4096`` float32 tensor with ``p = 0.5``. Contenders:

* ``fm.apply``: ``fm.apply(params, x, key=k, train=True)`` on ``fm.nn.Dropout(0.5)``;
* ``keep_mask``: the layer's raw path, ``x * (keep_mask(k, 1 - p, x.shape) / (1 - p))``
  (16 random bits per entry);
* ``bernoulli``: the same with ``fm.random.bernoulli`` (32 bits per entry, the layers'
  mask before 16 bits);
* ``F.dropout``: ``torch.nn.functional.dropout(x, p, training=True)`` (torch's generator).

``fm.apply`` and ``keep_mask`` must give the same tensor bit for bit (same key). The
others draw other bits, so they are checked in distribution instead: kept entries are
exactly ``x / (1 - p)``, dropped ones exactly zero, and the kept fraction is ``1 - p``
within six standard deviations.

Run: ``python benchmarks/dropout.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import parse_args, report, row, time_interleaved

import funcmodels as fm
from funcmodels.random._samplers import keep_mask

P = 0.5


def check_dropout(out: torch.Tensor, x: torch.Tensor, p: float, who: str) -> None:
    """Raise unless ``out`` is a dropout of ``x``: zeros, or ``x / (1 - p)`` exactly."""
    kept = out != 0
    scaled = x / (1.0 - p)
    if not torch.equal(out[kept], scaled[kept]):
        raise AssertionError(f"{who}: kept entries are not x / (1 - p)")
    n = x.numel()
    frac = kept.sum().item() / n
    if abs(frac - (1 - p)) > 6 * math.sqrt(p * (1 - p) / n):
        raise AssertionError(f"{who}: kept fraction {frac:.5f}, expected {1 - p}")


def contenders(x: torch.Tensor, p: float) -> dict[str, Callable[[], torch.Tensor]]:
    """The three dropout paths on ``x``, checked before they are returned."""
    spec = fm.nn.Dropout(p)
    params = fm.init(fm.key(0), spec)
    k = fm.key(1)
    fns = {
        "fm.apply": lambda: fm.apply(params, x, key=k, train=True),
        "keep_mask": lambda: x * (keep_mask(k, 1.0 - p, x.shape).to(x.dtype) / (1 - p)),
        "bernoulli": lambda: x * (fm.random.bernoulli(k, 1.0 - p, x.shape).to(x.dtype) / (1 - p)),
        "F.dropout": lambda: F.dropout(x, p, training=True),
    }
    ours = fns["fm.apply"]()
    if not torch.equal(ours, fns["keep_mask"]()):
        raise AssertionError("fm.apply and the raw keep_mask path differ for the same key")
    check_dropout(ours, x, p, "fm.apply")
    check_dropout(fns["bernoulli"](), x, p, "bernoulli")
    check_dropout(fns["F.dropout"](), x, p, "F.dropout")
    return fns


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, size=(int, 4096, "rows = cols of x"))
    repeats = args.repeats or (3 if args.quick else 11)
    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0))
    fns = contenders(x, P)
    print(f"fm.apply == keep_mask path bit for bit; all are dropouts of x (p={P})")
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.1, clock=args.clock)
    what = f"dropout train, {args.size}x{args.size} float32, p={P}, CPU, {args.threads} threads"
    rows = [
        row(what, timings, "F.dropout"),
        row(what, timings, "fm.apply", ratio_of=("fm.apply", "F.dropout"), target="<= 2"),
        row(what, timings, "keep_mask", ratio_of=("keep_mask", "F.dropout"), target="<= 2"),
        row(what, timings, "bernoulli", ratio_of=("bernoulli", "F.dropout")),
    ]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
