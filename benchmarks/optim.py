"""Optimiser steps: fm.optim vs torch.optim, eager and compiled, side by side in one run.

Trees: an MLP 64-128-128-10 (6 tensors, 26,122 values) and ResNet-18 (62 tensors,
11,689,512 values); gradients are fixed random tensors, the same on both sides.

1. AdamW alone (learning rate 1e-3, weight decay 0.01), eager, per tree:
   * ``fm.optim.adamw``: ``update`` then ``apply_updates`` (new tensors; torch's
     multi-tensor kernels);
   * the same, leaf by leaf (the path ``fm.optim`` takes inside ``torch.func`` transforms
     and under ``torch.compile``; forced here by a measurement-only switch);
   * ``fm.optim.donated_adamw``: opt-in, in place, on torch's fused kernel;
   * ``torch.optim.AdamW(foreach=True)`` and ``AdamW(fused=True)``, in place.
   Target: ``fm.optim.adamw`` / torch's foreach AdamW <= 1.10x.
2. The whole step on ResNet-18: clip to global norm 1, AdamW, warmup-cosine learning rate
   (``chain(clip_by_global_norm(1.0), adamw(warmup_cosine_decay_schedule(...),
   weight_decay=0.01))``), eager and ``torch.compile``d, against ``clip_grad_norm_(...,
   foreach=True)`` + ``AdamW(foreach=True)`` + ``LambdaLR``. Targets: compiled <= 1.10x,
   eager <= 1.5x.

Every contender first runs the same steps from the same values as its torch counterpart
and must agree (``rtol=1e-4``; ``donated_adamw`` and ``AdamW(fused=True)`` bitwise).

``--cpu-time 1`` times each contender by the CPU time of the process rather than the wall
clock (interleaved the same way): on a machine shared with other jobs the wall clock of a
memory-bound step moves by tens of percent between rounds, the CPU time much less.

``--compiled-paths 1`` instead compares the compiled full step leaf by leaf (what fm.optim
does under ``torch.compile``) with the same step forced onto the multi-tensor kernels,
with each one's compile time.

Run: ``python benchmarks/optim.py [--quick] [--threads 2] [--skip-compiled 1]
[--cpu-time 1] [--compiled-paths 1]``.
"""

from __future__ import annotations

import contextlib
import random
import time

import torch
from common import Timing, parse_args, report, row, time_interleaved
from init_resnet18 import resnet18_spec

import funcmodels as fm
from funcmodels import optim
from funcmodels.optim import _ops

LR, WARMUP, TOTAL, WD = 1e-3, 100, 1000, 0.01


def mlp_spec() -> fm.nn.Sequential:
    f = fm.nn
    return f.Sequential(
        f.Linear(64, 128), f.ReLU(), f.Linear(128, 128), f.ReLU(), f.Linear(128, 10)
    )


def make(spec):
    params = fm.init(fm.key(0), spec)
    gen = torch.Generator().manual_seed(0)
    grads = fm.tree.map(lambda t: torch.randn(t.shape, generator=gen) * 1e-2, params)
    return params, grads


@contextlib.contextmanager
def kernels(multi_tensor: bool):
    """Measurement only: the multi-tensor kernels off (as inside torch.func transforms),
    or on even under torch.compile (where fm.optim runs leaf by leaf)."""
    scan = _ops._scan

    def forced(lists, hyper):
        records = scan(lists, hyper)[0]
        return records, multi_tensor and not records

    _ops._scan = forced
    try:
        yield
    finally:
        _ops._scan = scan


def ours(params, grads, opt, compiled: bool = False, slow: bool = False, multi: bool = False):
    def step(p, s):
        updates, s = opt.update(grads, s, p)
        return optim.apply_updates(p, updates), s

    fn = torch.compile(step) if compiled else step
    box = {"p": params, "s": opt.init(params)}

    def once():
        forced = kernels(multi) if slow or multi else contextlib.nullcontext()
        with forced:
            box["p"], box["s"] = fn(box["p"], box["s"])

    return once, box


def donated(params, grads):
    opt = optim.donated_adamw(LR, weight_decay=WD)
    box = {"p": fm.tree.map(torch.clone, params)}
    box["s"] = opt.init(box["p"])

    def once():
        box["p"], box["s"] = opt.step(grads, box["s"], box["p"])

    return once, box


def theirs(params, grads, **kwargs):
    leaves = [torch.nn.Parameter(t.clone()) for t in params.flat().values()]
    for p, g in zip(leaves, grads.flat().values(), strict=True):
        p.grad = g.clone()
    return torch.optim.AdamW(leaves, lr=LR, weight_decay=WD, **kwargs).step, leaves


def _agree(got, leaves, exact: bool, what: str) -> None:
    for (name, t), p in zip(got.flat().items(), leaves, strict=True):
        if exact:
            assert torch.equal(t, p.detach()), (what, name)
        else:
            torch.testing.assert_close(t, p.detach(), rtol=1e-4, atol=1e-7, msg=f"{what} {name}")


def adamw_contenders(params, grads) -> dict:
    """The AdamW-alone contenders on one tree, each checked against torch first."""
    fns = {
        "fm.optim.adamw": ours(params, grads, optim.adamw(LR, weight_decay=WD)),
        "fm.optim.adamw, leaf by leaf": ours(
            params, grads, optim.adamw(LR, weight_decay=WD), slow=True
        ),
        "fm.optim.donated_adamw": donated(params, grads),
        "torch AdamW(foreach)": theirs(params, grads, foreach=True),
        "torch AdamW(fused)": theirs(params, grads, fused=True),
    }
    for _ in range(3):
        for fn, _box in fns.values():
            fn()
    foreach, fused = fns["torch AdamW(foreach)"][1], fns["torch AdamW(fused)"][1]
    _agree(fns["fm.optim.adamw"][1]["p"], foreach, False, "adamw")
    _agree(fns["fm.optim.adamw, leaf by leaf"][1]["p"], foreach, False, "leaf by leaf")
    _agree(fns["fm.optim.donated_adamw"][1]["p"], fused, True, "donated")
    return {name: fn for name, (fn, _) in fns.items()}


def time_cpu(fns: dict, repeats: int, calls: int = 5) -> dict[str, Timing]:
    """As ``time_interleaved`` (a new random order each round, one untimed call before
    each sample), timed by the process's CPU time."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = random.Random(0)
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        names = list(fns)
        order.shuffle(names)
        for name in names:
            fns[name]()
            start = time.process_time()
            for _ in range(calls):
                fns[name]()
            samples[name].append((time.process_time() - start) / calls)
    return {name: Timing(name, tuple(s)) for name, s in samples.items()}


def timed(fns: dict, repeats: int, cpu: bool) -> dict[str, Timing]:
    if cpu:
        return time_cpu(fns, repeats)
    return time_interleaved(fns, repeats=repeats, warmup=3, min_sample_s=0.2)


def adamw_rows(name: str, fns: dict, repeats: int, threads: int, cpu: bool) -> list[str]:
    timings = timed(fns, repeats, cpu)
    clock = "CPU time" if cpu else "wall clock"
    what = f"AdamW step, {name} tree, eager, CPU, {threads} threads, {clock}"
    base, fused = "torch AdamW(foreach)", "torch AdamW(fused)"
    return [
        row(what, timings, base),
        row(what, timings, fused),
        row(what, timings, "fm.optim.adamw", ratio_of=("fm.optim.adamw", base), target="<= 1.10"),
        row(
            what,
            timings,
            "fm.optim.adamw, leaf by leaf",
            ratio_of=("fm.optim.adamw, leaf by leaf", base),
        ),
        row(
            what,
            timings,
            "fm.optim.donated_adamw",
            ratio_of=("fm.optim.donated_adamw", fused),
        ),
    ]


def full_step(params, grads, compiled: bool, multi: bool = False):
    schedule = optim.warmup_cosine_decay_schedule(0.0, LR, WARMUP, TOTAL)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule, weight_decay=WD))
    return ours(params, grads, opt, compiled=compiled, multi=multi)


def torch_full_step(params, grads):
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


def full_step_rows(
    params, grads, repeats: int, threads: int, compiled: bool, cpu: bool
) -> list[str]:
    a, box = full_step(params, grads, compiled=False)
    b, leaves = torch_full_step(params, grads)
    for _ in range(3):
        a()
        b()
    _agree(box["p"], leaves, False, "clip + adamw + schedule")
    fns = {"funcmodels eager": a, "torch (foreach)": b}
    if compiled:
        fns["funcmodels compiled"] = full_step(params, grads, compiled=True)[0]
    timings = timed(fns, repeats, cpu)
    clock = "CPU time" if cpu else "wall clock"
    what = f"clip + AdamW + warmup-cosine step, ResNet-18 (11.7M), CPU, {threads} threads, {clock}"
    base = "torch (foreach)"
    rows = [
        row(what, timings, base),
        row(
            what, timings, "funcmodels eager", ratio_of=("funcmodels eager", base), target="<= 1.5"
        ),
    ]
    if compiled:
        rows.append(
            row(
                what,
                timings,
                "funcmodels compiled",
                ratio_of=("funcmodels compiled", base),
                target="<= 1.10",
            )
        )
    return rows


def compiled_paths_rows(spec_name: str, spec, repeats: int, threads: int) -> list[str]:
    """The compiled full step leaf by leaf (fm.optim's choice) against the same step on
    the multi-tensor kernels, with each one's compile time (the first call)."""
    params, grads = make(spec)
    fns, compile_s = {}, {}
    for name, multi in (("compiled, leaf by leaf", False), ("compiled, multi-tensor", True)):
        torch._dynamo.reset()
        fn = full_step(params, grads, compiled=True, multi=multi)[0]
        start = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - start
        fns[name] = fn
    timings = time_interleaved(fns, repeats=repeats, warmup=3, min_sample_s=0.2)
    what = f"clip + AdamW + warmup-cosine step, {spec_name}, CPU, {threads} threads"
    a, b = "compiled, multi-tensor", "compiled, leaf by leaf"
    print({name: f"{t:.1f} s to compile" for name, t in compile_s.items()})
    return [row(what, timings, b), row(what, timings, a, ratio_of=(a, b))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        skip_compiled=(int, 0, "1: leave out the compiled step (minutes of compile time)"),
        cpu_time=(int, 0, "1: time by the process's CPU time instead of the wall clock"),
        compiled_paths=(int, 0, "1: only compare the compiled step leaf by leaf / multi-tensor"),
    )
    repeats = args.repeats or (5 if args.quick else 15)
    if args.compiled_paths:
        rows = compiled_paths_rows("MLP 64-128-128-10", mlp_spec(), repeats, args.threads)
        rows += compiled_paths_rows("ResNet-18", resnet18_spec(), repeats, args.threads)
        report(rows, args.threads)
        return
    rows = []
    for name, spec in (("MLP 64-128-128-10", mlp_spec()), ("ResNet-18", resnet18_spec())):
        params, grads = make(spec)
        fns = adamw_contenders(params, grads)
        print(f"{name}: fm.optim and torch agree after 3 AdamW steps")
        rows += adamw_rows(name, fns, repeats, args.threads, bool(args.cpu_time))
    params, grads = make(resnet18_spec())
    compiled, cpu = not args.skip_compiled, bool(args.cpu_time)
    rows += full_step_rows(params, grads, repeats, args.threads, compiled, cpu)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
