"""An optimiser step on a ResNet-18-sized tree: fm.optim vs torch.optim.

The step: clip the gradients to global norm 1, then AdamW (weight decay 0.01) with a
warmup-cosine learning rate. Params are ResNet-18's (11,689,512 values in 62 tensors) and
so are the gradients (fixed random tensors), on both sides:

* ``funcmodels``: ``chain(clip_by_global_norm(1.0), adamw(warmup_cosine_decay_schedule(
  ...), weight_decay=0.01))``, ``update`` then ``apply_updates`` (new tensors, nothing in
  place), eager and under ``torch.compile``;
* ``torch``: ``clip_grad_norm_(params, 1.0, foreach=True)``, ``AdamW(foreach=True)``'s
  ``step`` and ``LambdaLR``'s ``step`` (in place), the usual fast eager path.

Both sides first run the same steps from the same values and must agree (``rtol=1e-4``,
float32 in another order of operations). Targets: compiled / torch <= 1.10x, eager / torch
<= 1.5x.

Run: ``python benchmarks/optim.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import torch
from common import parse_args, report, row, time_interleaved
from init_resnet18 import resnet18_spec

import funcmodels as fm
from funcmodels import optim

LR, WARMUP, TOTAL, WD = 1e-3, 100, 1000, 0.01


def make():
    params = fm.init(fm.key(0), resnet18_spec())
    gen = torch.Generator().manual_seed(0)
    grads = fm.tree.map(lambda t: torch.randn(t.shape, generator=gen) * 1e-2, params)
    return params, grads


def ours(params, grads, compiled: bool):
    schedule = optim.warmup_cosine_decay_schedule(0.0, LR, WARMUP, TOTAL)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule, weight_decay=WD))

    def step(p, s):
        updates, s = opt.update(grads, s, p)
        return optim.apply_updates(p, updates), s

    fn = torch.compile(step) if compiled else step
    box = {"p": params, "s": opt.init(params)}

    def once():
        box["p"], box["s"] = fn(box["p"], box["s"])

    return once, box


def theirs(params, grads):
    schedule = optim.warmup_cosine_decay_schedule(0.0, LR, WARMUP, TOTAL)
    leaves = [torch.nn.Parameter(t.clone()) for t in params.flat().values()]
    for p, g in zip(leaves, grads.flat().values(), strict=True):
        p.grad = g.clone()
    opt = torch.optim.AdamW(leaves, lr=LR, weight_decay=WD, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: float(schedule(t)) / LR)

    def once():
        # clip_grad_norm_ rescales .grad in place: restore the raw gradient first, as
        # a training loop's backward would have written it.
        with torch.no_grad():
            for p, g in zip(leaves, grads.flat().values(), strict=True):
                p.grad.copy_(g)
        torch.nn.utils.clip_grad_norm_(leaves, 1.0, foreach=True)
        opt.step()
        sched.step()

    return once, leaves


def check(params, grads, steps: int = 3) -> None:
    """Both sides agree after ``steps`` steps."""
    a, box = ours(params, grads, compiled=False)
    b, leaves = theirs(params, grads)
    for _ in range(steps):
        a()
        b()
    for (name, t), p in zip(box["p"].flat().items(), leaves, strict=True):
        torch.testing.assert_close(t, p.detach(), rtol=1e-4, atol=1e-7, msg=name)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (5 if args.quick else 15)
    params, grads = make()
    check(params, grads)
    print("funcmodels and torch agree after 3 steps (rtol=1e-4)")
    fns = {
        "funcmodels eager": ours(params, grads, compiled=False)[0],
        "funcmodels compiled": ours(params, grads, compiled=True)[0],
        "torch (foreach)": theirs(params, grads)[0],
    }
    timings = time_interleaved(fns, repeats=repeats, warmup=3, min_sample_s=0.2)
    what = f"clip + AdamW + warmup-cosine step, ResNet-18 tree (11.7M), CPU, {args.threads} threads"
    base = "torch (foreach)"
    rows = [
        row(what, timings, base),
        row(
            what, timings, "funcmodels eager", ratio_of=("funcmodels eager", base), target="<= 1.5"
        ),
        row(
            what,
            timings,
            "funcmodels compiled",
            ratio_of=("funcmodels compiled", base),
            target="<= 1.10",
        ),
    ]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
