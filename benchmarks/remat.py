"""Activation memory for compute: a training step with ``fm.nn.Remat`` on every block vs none.

The model: 16 blocks of ``Linear(1024, 1024)``-``GELU``-``LayerNorm(1024)``, a batch of 256,
a mean squared error; the same params with and without ``Remat`` (Remat adds no name or key
level). Two figures, each Remat / plain:

* **peak memory of a training step**, beyond what exists before it. Two steps are
  measured: the *accumulating* step, ``loss.backward()`` into gradient buffers kept from
  the previous step (a training loop with ``zero_grad(set_to_none=False)``): what it adds
  is the saved activations and the temporaries, what Remat acts on (the target); and the
  *functional* step, ``torch.autograd.grad``, which also allocates every gradient
  (64 MiB here, the same for both: reported).
* **time of a training step** (the functional step), interleaved.

Memory method: torch has no CPU allocator statistics, and ``tracemalloc`` does not see its
allocations, so the process's resident set is measured. Each contender runs in a fresh
subprocess with ``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc serves every tensor of 64
KiB or more by ``mmap`` and returns it to the system when freed (the resident set then
follows the live tensors instead of glibc's free lists). After a warm-up step, each
measured step resets the kernel's high-water mark (``5`` written to
``/proc/self/clear_refs``) and reads ``VmHWM`` from ``/proc/self/status`` after it: the
step's peak is ``VmHWM`` minus the resident set just before it (the median of 5 steps).
Outputs and gradients are checked bit-equal with and without Remat before anything is
measured.

Run: ``python benchmarks/remat.py [--quick] [--threads 1] [--blocks 16] [--width 1024]
[--batch 256]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import torch
from common import parse_args, report, row, time_interleaved

import funcmodels as fm

nn = fm.nn


def model(blocks: int, width: int, remat: bool) -> fm.Spec:
    block = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
    return nn.Sequential(*[nn.Remat(block) if remat else block for _ in range(blocks)])


def setup(blocks: int, width: int, batch: int, remat: bool):
    """Params (leaves requiring grad) of the model, and a batch."""
    spec = model(blocks, width, remat)
    params = fm.init(fm.key(0), model(blocks, width, False))
    leaves = {k: t.requires_grad_(True) for k, t in params.flat().items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=gen)
    y = torch.randn(batch, width, generator=gen)
    return fm.Params(spec, leaves), leaves, x, y


def loss_of(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (fm.apply(params, x) - y).pow(2).mean()


def functional_step(params, leaves, x, y):
    loss = loss_of(params, x, y)
    return loss, torch.autograd.grad(loss, list(leaves.values()))


def accumulating_step(params, leaves, x, y):
    for t in leaves.values():
        if t.grad is not None:
            t.grad.zero_()
    loss = loss_of(params, x, y)
    loss.backward()
    return loss


# -- memory, in a subprocess ---------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _step_peak(step) -> int:
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current resident set
    step()
    return _status("VmHWM") - before


def measure_here(blocks: int, width: int, batch: int, remat: bool) -> dict[str, int]:
    """The peaks of both steps, in this process (run by :func:`measure` in a child)."""
    params, leaves, x, y = setup(blocks, width, batch, remat)
    out = {}
    for name, step in (("functional", functional_step), ("accumulating", accumulating_step)):
        step(params, leaves, x, y)  # warm-up (and the accumulating step's buffers)
        peaks = [_step_peak(lambda s=step: s(params, leaves, x, y)) for _ in range(5)]
        out[name] = statistics.median(peaks)
    return out


def measure(blocks: int, width: int, batch: int, remat: bool, threads: int) -> dict[str, int]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = (
        "import json, sys, torch; sys.path.insert(0, 'benchmarks'); import remat; "
        f"torch.set_num_threads({threads}); "
        f"print(json.dumps(remat.measure_here({blocks}, {width}, {batch}, {remat})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(blocks: int, width: int, batch: int) -> None:
    """With and without Remat: the same loss and gradients, bit for bit."""
    plain = functional_step(*setup(blocks, width, batch, False))
    remat = functional_step(*setup(blocks, width, batch, True))
    for a, b in zip(plain[1], remat[1], strict=True):
        if not torch.equal(a, b):
            raise AssertionError("gradients differ with Remat")
    if not torch.equal(plain[0], remat[0]):
        raise AssertionError("losses differ with Remat")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        blocks=(int, 16, "blocks (default 16)"),
        width=(int, 1024, "width of each Linear (default 1024)"),
        batch=(int, 256, "batch size (default 256)"),
    )
    shape = (args.blocks, args.width, args.batch)
    check(*shape)
    print("losses and gradients bit-equal with and without Remat")
    mem = {r: measure(*shape, r, args.threads) for r in (False, True)}
    what = f"{args.blocks} x Linear({args.width})-GELU-LayerNorm, batch {args.batch}"
    print()
    print("| figure | plain | Remat | Remat / plain | target | met |")
    print("|---|---|---|---|---|---|")
    for name, target in (("accumulating", 0.45), ("functional", None)):
        a, b = mem[False][name] / 2**20, mem[True][name] / 2**20
        r = b / a
        met = "" if target is None else ("yes" if r <= target else "no")
        tgt = "" if target is None else f"<= {target}x"
        print(
            f"| peak memory of the {name} step, {what} | {a:.1f} MiB | {b:.1f} MiB "
            f"| {r:.2f}x | {tgt} | {met} |"
        )
    plain, remat = setup(*shape, False), setup(*shape, True)
    steps = {"plain": lambda: functional_step(*plain), "Remat": lambda: functional_step(*remat)}
    timings = time_interleaved(steps, repeats=args.repeats or (3 if args.quick else 15))
    what = f"training step, {what}, CPU, {args.threads} threads"
    rows = [
        row(what, timings, "plain"),
        row(what, timings, "Remat", ratio_of=("Remat", "plain"), target="<= 1.5"),
    ]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
