"""Depth as one layer: a training step over ``fm.nn.Repeat(block, 24)`` vs 24 separate blocks.

The step: ``loss = torch.compile(loss_fn, fullgraph=True)(params, x, y)`` (the model's
mean squared error), then ``torch.autograd.grad`` of it (AOTAutograd compiles the backward
graph on the first call). Contenders, on the same weights:

* ``Repeat``: ``fm.nn.Repeat(block, 24)``, whose members run under compile as a
  ``torch.compiler.nested_compile_region`` (member 0 inline, the region traced once for
  member 1 and stamped out for the others), so dynamo and inductor see two blocks;
* ``Repeat, scan op``: the same members run as torch's ``scan`` op (what Repeat did
  before the region, and what it still does for members whose input is not one tensor);
* ``24 blocks``: ``fm.nn.Sequential`` of 24 separate copies of the block spec (what a
  model without Repeat is), traced block after block;
* ``one block``: the block alone, the floor of what compiling depth can cost.

Blocks (``--block``): ``transformer``, ``fm.nn.TransformerEncoderLayer(64, 4,
dim_feedforward=256, dropout=0, batch_first=True)`` on 8 x 32 tokens; ``mlp``,
``Linear(256, 256)``-``GELU``-``LayerNorm(256)`` at batch 64.

Two figures: **compile time**, the first step of a fresh ``torch.compile`` after
``torch._dynamo.reset()`` with inductor's and AOTAutograd's caches off (one warm-up
compile first, so that no contender pays for importing and initialising inductor; the
contenders take turns over ``--compile-rounds`` rounds, the median reported); and the
**steady-state step**, the compiled steps timed interleaved. The losses and gradients of
``Repeat`` and ``24 blocks`` are checked to agree (``rtol=1e-4, atol=1e-5``: inductor
fuses the two graphs differently) before anything is timed.

With ``--cpu-time`` (and ``--threads 1``), on a machine shared with other work: a compile
time is the CPU time of this process and of the compiler processes it waited for
(``getrusage``; inductor then compiles in this process, ``compile_threads = 1``, so that
every C++ compilation is a waited-for child), and a step's time is its thread's CPU time.

Run: ``python benchmarks/repeat.py [--quick] [--threads 1] [--cpu-time] [--block
transformer|mlp] [--depth 24] [--compile-rounds 3]``.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from collections.abc import Callable

import torch
from common import assert_trees_close, parse_args, report, row, time_interleaved

import funcmodels as fm
from funcmodels import Context

nn = fm.nn
RTOL, ATOL = 1e-4, 1e-5


def block_and_input(kind: str) -> tuple[fm.Spec, torch.Tensor]:
    """The block spec and a batch for it."""
    gen = torch.Generator().manual_seed(0)
    if kind == "transformer":
        spec = nn.TransformerEncoderLayer(64, 4, dim_feedforward=256, dropout=0.0, batch_first=True)
        return spec, torch.randn(8, 32, 64, generator=gen)
    if kind == "mlp":
        spec = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.LayerNorm(256))
        return spec, torch.randn(64, 256, generator=gen)
    raise SystemExit(f"--block must be 'transformer' or 'mlp', got {kind!r}")


class ScanOpRepeat(nn.Repeat):
    """``Repeat`` through the public ``ctx.scan``: torch's ``scan`` op under compile."""

    type_name = "ScanOpRepeat"

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        return ctx.scan(self.spec, x, size=self.n, remat=self.remat)


def models(kind: str, depth: int) -> tuple[dict[str, fm.Params], torch.Tensor]:
    """The contenders' params (Repeat's and the separate blocks' equal) and input."""
    block, x = block_and_input(kind)
    repeat = fm.init(fm.key(0), nn.Repeat(block, depth))
    scan_op = fm.Params(ScanOpRepeat(block, depth), repeat.flat())
    stacked = fm.to_state_dict(repeat)
    unstacked = {f"{i}.{k}": t[i].clone() for i in range(depth) for k, t in stacked.items()}
    blocks, _ = fm.from_state_dict(nn.Sequential(*[block] * depth), unstacked)
    one = fm.init(fm.key(0), block)
    return {"Repeat": repeat, "Repeat, scan op": scan_op, "24 blocks": blocks, "one block": one}, x


def loss_fn(params: fm.Params, x: torch.Tensor) -> torch.Tensor:
    return fm.apply(params, x).pow(2).mean()


def stepper(params: fm.Params, x: torch.Tensor) -> Callable[[], tuple]:
    """A fresh compiled training step (loss and gradients) over ``params``."""
    leaves = {k: t.clone().requires_grad_(True) for k, t in params.flat().items()}
    p = fm.Params(params.spec, leaves)
    compiled = torch.compile(loss_fn, fullgraph=True)

    def step() -> tuple:
        loss = compiled(p, x)
        return (loss, *torch.autograd.grad(loss, list(leaves.values())))

    return step


def check(params: dict[str, fm.Params], x: torch.Tensor, depth: int) -> None:
    """Repeat and the separate blocks agree, compiled, on the loss and every gradient."""
    want = stepper(params["24 blocks"], x)()
    for name in ("Repeat", "Repeat, scan op"):
        got = stepper(params[name], x)()
        torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=ATOL)
        names = list(params[name].flat())
        grads = dict(zip(names, got[1:], strict=True))
        unstacked = {f"{i}.{k}": g[i] for i in range(depth) for k, g in grads.items()}
        assert_trees_close(
            unstacked,
            dict(zip(params["24 blocks"].flat(), want[1:], strict=True)),
            "gradients",
            rtol=RTOL,
            atol=ATOL,
        )


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the C++ compiler)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compile_times(
    params: dict[str, fm.Params], x: torch.Tensor, rounds: int, clock: Callable[[], float]
) -> dict:
    """Seconds of the first compiled step of each contender, ``rounds`` each, interleaved."""
    torch.compiler.config.force_disable_caches = True
    stepper(params["one block"], x)()  # warm-up: inductor's imports and initialisation
    times: dict[str, list[float]] = {name: [] for name in params}
    order = random.Random(0)
    for _ in range(rounds):
        names = list(params)
        order.shuffle(names)
        for name in names:
            torch._dynamo.reset()
            step = stepper(params[name], x)
            start = clock()
            step()
            times[name].append(clock() - start)
            print(f"compile {name}: {times[name][-1]:.1f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        block=(str, "transformer", "transformer or mlp (default transformer)"),
        depth=(int, 24, "blocks (default 24)"),
        compile_rounds=(int, 3, "compilations per contender (default 3)"),
    )
    params, x = models(args.block, args.depth)
    check(params, x, args.depth)
    print("Repeat (both paths) and the separate blocks agree on the loss and the gradients")
    rounds = 1 if args.quick else args.compile_rounds
    if args.cpu_time:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    clock = cpu_seconds if args.cpu_time else time.perf_counter
    times = compile_times(params, x, rounds, clock)
    med = {name: statistics.median(t) for name, t in times.items()}
    torch._dynamo.reset()
    steps = {name: stepper(params[name], x) for name in ("Repeat", "Repeat, scan op", "24 blocks")}
    for step in steps.values():
        step()
    timings = time_interleaved(
        steps, repeats=args.repeats or (3 if args.quick else 15), clock=args.clock
    )
    clock_name = ", CPU time" if args.cpu_time else ""
    what = f"{args.depth} x {args.block} block, CPU, {args.threads} threads{clock_name}"
    print()
    print("| figure | contender | median compile | ratio to 24 blocks | target | met |")
    print("|---|---|---|---|---|---|")
    for name in params:
        pairs = zip(times[name], times["24 blocks"], strict=True)
        r = statistics.median(a / b for a, b in pairs)
        target = "<= 0.5x" if name.startswith("Repeat") else ""
        met = ("yes" if r <= 0.5 else "no") if name.startswith("Repeat") else ""
        print(
            f"| compile time, {what} | {name} | {med[name]:.1f} s | {r:.2f}x | {target} | {met} |"
        )
    rows = [
        row(f"steady step, {what}", timings, "24 blocks"),
        row(
            f"steady step, {what}",
            timings,
            "Repeat",
            ratio_of=("Repeat", "24 blocks"),
            target="<= 1.10",
        ),
        row(
            f"steady step, {what}",
            timings,
            "Repeat, scan op",
            ratio_of=("Repeat, scan op", "24 blocks"),
            target="<= 1.10",
        ),
    ]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
