"""What torch offers for depth, in plain torch: 24 blocks unrolled, as one
``torch.compiler.nested_compile_region``, and as torch's ``scan`` op.

The block: ``Linear(256, 256)``-``GELU``-``LayerNorm(256)`` at batch 64 (the ``mlp`` block of
``benchmarks/repeat.py``), its 24 members' tensors stacked on dim 0. The step: a compiled
loss (``fullgraph=True``, mean square of the output), then ``torch.autograd.grad`` of it.
Contenders:

* ``unrolled``: a Python loop over ``unbind`` slices of the stacked tensors (what 24
  separate blocks are to the compiler);
* ``region``: the same loop calling a module-level function marked with
  ``torch.compiler.nested_compile_region`` that takes and returns tensors only (a flat
  tuple), so that dynamo traces it once and stamps it out (twice in fact: the first
  member's input does not require grad, the others' do);
* ``scan``: torch's ``scan`` higher-order op over the stacked tensors.

This is the measurement behind the choice of a region for ``fm.nn.Repeat`` (NOTES.md),
with no funcmodels code in it. Each contender is compiled once, fresh (``torch._dynamo.reset()``,
caches off, after one warm-up compile), in a shuffled order; the compile time is the CPU
time of this process and of the compiler processes it waited for (``compile_threads =
1``); then the steady steps are timed interleaved by the thread's CPU time. Losses and
gradients are checked against the eager loop (``rtol=1e-4, atol=1e-5``).

Run: ``python benchmarks/repeat_region.py [--quick] [--depth 24]`` (always 1 thread).
"""

from __future__ import annotations

import random
import resource
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from common import parse_args, report, row, time_interleaved
from torch._higher_order_ops.scan import scan

DIM, BATCH = 256, 64
RTOL, ATOL = 1e-4, 1e-5


def block(x, w, b, g, beta):
    return F.layer_norm(F.gelu(F.linear(x, w, b)), (DIM,), g, beta)


@torch.compiler.nested_compile_region
def region(x, w, b, g, beta):
    return (block(x, w, b, g, beta),)


def loss_unrolled(ps, x):
    for w, b, g, beta in zip(*(p.unbind(0) for p in ps), strict=True):
        x = block(x, w, b, g, beta)
    return x.pow(2).mean()


def loss_region(ps, x):
    for w, b, g, beta in zip(*(p.unbind(0) for p in ps), strict=True):
        x = region(x, w, b, g, beta)[0]
    return x.pow(2).mean()


def loss_scan(ps, x):
    def body(carry, xs):
        y = block(carry, *xs)
        return y, y.new_zeros(())  # inductor needs a per-step output

    out, _ = scan(body, x, tuple(ps))
    return out.pow(2).mean()


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the C++ compiler)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, depth=(int, 24, "members (default 24)"))
    torch.set_num_threads(1)
    inductor_config.compile_threads = 1
    gen = torch.Generator().manual_seed(0)
    n = args.depth
    ps = [
        torch.randn(n, DIM, DIM, generator=gen) * DIM**-0.5,
        torch.randn(n, DIM, generator=gen) * 0.1,
        1 + 0.1 * torch.randn(n, DIM, generator=gen),
        0.1 * torch.randn(n, DIM, generator=gen),
    ]
    ps = [p.requires_grad_(True) for p in ps]
    x = torch.randn(BATCH, DIM, generator=gen)

    def stepper(fn):
        compiled = torch.compile(fn, fullgraph=True)

        def step():
            loss = compiled(ps, x)
            return (loss, *torch.autograd.grad(loss, ps))

        return step

    eager = loss_unrolled(ps, x)
    want = (eager, *torch.autograd.grad(eager, ps))
    torch.compiler.config.force_disable_caches = True
    stepper(lambda ps, x: block(x, *(p[0] for p in ps)).sum())()  # inductor's imports
    fns = {"unrolled": loss_unrolled, "region": loss_region, "scan": loss_scan}
    names = list(fns)
    random.Random(0).shuffle(names)
    steps, compile_s = {}, {}
    for name in names:
        torch._dynamo.reset()
        steps[name] = stepper(fns[name])
        start = cpu_seconds()
        got = steps[name]()
        compile_s[name] = cpu_seconds() - start
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        print(f"compile {name}: {compile_s[name]:.1f} s CPU", flush=True)
    print("losses and gradients equal the eager loop's")
    timings = time_interleaved(
        {k: steps[k] for k in fns},
        repeats=args.repeats or (3 if args.quick else 9),
        clock=time.thread_time,
    )
    print()
    print("| figure | contender | compile (CPU s) | ratio to unrolled |\n|---|---|---|---|")
    for name in fns:
        r = compile_s[name] / compile_s["unrolled"]
        print(f"| compile, {n} x mlp block | {name} | {compile_s[name]:.1f} | {r:.2f}x |")
    what = f"steady step, {n} x mlp block, CPU time, 1 thread"
    rows = [row(what, timings, "unrolled")] + [
        row(what, timings, k, ratio_of=(k, "unrolled")) for k in ("region", "scan")
    ]
    report(rows, 1)


if __name__ == "__main__":
    main()
