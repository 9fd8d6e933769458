"""Ensembles: ``fm.nn.Stack`` of 8 MLPs vs a Python loop over 8 modules.

The members are MLPs 64-256-256-10 (ReLU), the batch is 256 and every member sees it
(``Stack(spec, 8)`` with ``in_axis=None``). Contenders, on the same weights:

* ``funcmodels``: ``fm.apply`` of the Stack (one lifted ``vmap``: batched matmuls); its
  gradients by ``fm.grad`` (plain autograd outside transforms);
* ``nn.Module loop``: ``torch.stack([m(x) for m in models])``, what a PyTorch user writes;
* ``torch.func``: ``vmap`` of ``functional_call`` over ``stack_module_state``, the
  ensembling recipe of the torch.func tutorial (for reference).

Two figures: the forward under ``no_grad`` (inference), and a training step's gradients
(forward and backward of the sum of the members' mean squared errors, so each member gets
its own loss's gradient).

Run: ``python benchmarks/stack_ensemble.py [--quick] [--threads 2] [--device cpu]``;
``--members``, ``--widths`` (``64,256,256,10``) and ``--batch`` change the ensemble.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from common import assert_trees_close, cuda_sync, parse_args, report, row, time_interleaved
from torch.func import functional_call, grad, stack_module_state, vmap

import funcmodels as fm

MEMBERS, WIDTHS, BATCH = 8, (64, 256, 256, 10), 256
# The same float32 kernels in another grouping (one batched matmul vs eight): outputs and
# gradients agree to rounding.
RTOL, ATOL = 1e-5, 1e-6


def mlp(nn, widths: tuple[int, ...]):
    """``Linear`` layers of the given widths with ReLU between, from ``nn`` (either library)."""
    layers = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def contenders(
    device: str, train: bool, members: int = MEMBERS, widths=WIDTHS, batch: int = BATCH
) -> dict[str, Callable[[], object]]:
    """The three ways to run (or differentiate) the ensemble, checked equal first."""
    params = fm.init(fm.key(0), fm.nn.Stack(mlp(fm.nn, widths), members), device=device)
    modules = []
    for i in range(members):
        m = mlp(torch.nn, widths).to(device)
        m.load_state_dict({k: t[i] for k, t in fm.to_state_dict(params).items()}, strict=True)
        modules.append(m)
    stacked, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, widths[0], generator=gen).to(device)
    y = torch.randn(batch, widths[-1], generator=gen).to(device)

    def call_one(p, b):
        return functional_call(base, (p, b), (x,))

    if not train:

        def ours():
            with torch.no_grad():
                return fm.apply(params, x)

        def loop():
            with torch.no_grad():
                return torch.stack([m(x) for m in modules])

        def tfunc():
            with torch.no_grad():
                return vmap(call_one, in_dims=(0, 0))(stacked, buffers)

        want = loop()
        for fn in (ours, tfunc):
            torch.testing.assert_close(fn(), want, rtol=RTOL, atol=ATOL)
        return {"funcmodels": ours, "nn.Module loop": loop, "torch.func": tfunc}

    def loss_ours(p):
        return ((fm.apply(p, x) - y) ** 2).mean(dim=(1, 2)).sum()

    def ours():
        return fm.grad(loss_ours)(params)

    weights = [t for m in modules for t in m.parameters()]

    def loop():
        loss = sum(((m(x) - y) ** 2).mean() for m in modules)
        return torch.autograd.grad(loss, weights)

    def loss_tfunc(p):
        return ((vmap(call_one, in_dims=(0, 0))(p, buffers) - y) ** 2).mean(dim=(1, 2)).sum()

    def tfunc():
        return grad(loss_tfunc)(stacked)

    names = list(modules[0].state_dict())
    per = loop()
    want = {k: torch.stack(per[j :: len(names)]) for j, k in enumerate(names)}
    assert_trees_close(fm.to_state_dict(ours()), want, "funcmodels grads", rtol=RTOL, atol=ATOL)
    assert_trees_close(tfunc(), want, "torch.func grads", rtol=RTOL, atol=ATOL)
    return {"funcmodels": ours, "nn.Module loop": loop, "torch.func": tfunc}


def figure(
    device: str,
    repeats: int,
    threads: int,
    members: int = MEMBERS,
    widths=WIDTHS,
    batch=BATCH,
    clock: Callable[[], float] = time.perf_counter,
) -> list[str]:
    """Time the contenders on ``device``, forward and gradients; return the table rows."""
    target = "<= 1.0" if device == "cpu" else "<= 0.5"
    shape = "-".join(map(str, widths))
    rows = []
    for train in (False, True):
        fns = contenders(device, train, members, widths, batch)
        timings = time_interleaved(
            fns, repeats=repeats, min_sample_s=0.05, sync=cuda_sync(device), clock=clock
        )
        what = (
            f"{'gradients (forward + backward)' if train else 'forward, no_grad'}, "
            f"{members} MLPs {shape}, batch {batch}, {device}, {threads} threads"
        )
        rows.append(row(what, timings, "nn.Module loop"))
        rows.append(
            row(
                what,
                timings,
                "funcmodels",
                ratio_of=("funcmodels", "nn.Module loop"),
                target=target,
            )
        )
        rows.append(row(what, timings, "torch.func", ratio_of=("torch.func", "nn.Module loop")))
    print(f"all three compute the same outputs and gradients (rtol={RTOL}, atol={ATOL})")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        device=(str, "cpu", "cpu or cuda"),
        members=(int, MEMBERS, "ensemble members"),
        widths=(str, ",".join(map(str, WIDTHS)), "layer widths of a member, comma-separated"),
        batch=(int, BATCH, "batch size"),
    )
    repeats = args.repeats or (5 if args.quick else 21)
    widths = tuple(int(w) for w in args.widths.split(","))
    rows = figure(args.device, repeats, args.threads, args.members, widths, args.batch, args.clock)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
