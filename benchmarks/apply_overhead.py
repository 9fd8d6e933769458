"""Forward-pass overhead: ``fm.apply`` vs the equivalent ``nn.Module`` called normally.

Two models, each with the same weights on both sides:

* a small MLP (batch 32, three ``Linear(256, 256)`` with ReLU in between), where Python
  overhead dominates the time;
* the torch per-sample-gradients tutorial CNN (batch 64, eval), where the kernels do.

The torch side is ``module(x)``, hook machinery included, since that is what a user
compares with. Each model is timed twice: under ``torch.no_grad()`` (inference) and with
autograd recording (every parameter requires grad, on both sides, as in training).

Run: ``python benchmarks/apply_overhead.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from common import parse_args, report, row, time_interleaved
from per_sample_grads import cnn_module, cnn_spec

import funcmodels as fm

# Same kernels on both sides: outputs agree to the last bits (a few ulps at most).
RTOL, ATOL = 1e-6, 1e-6


def mlp_spec() -> fm.nn.Sequential:
    """Three 256-wide linear layers with ReLU in between."""
    nn = fm.nn
    return nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)
    )


def mlp_module() -> torch.nn.Sequential:
    """:func:`mlp_spec` in ``torch.nn``, same ``state_dict`` keys."""
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)
    )


def pair(
    spec: fm.Spec, module: torch.nn.Module, x: torch.Tensor, autograd: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    """``fm.apply`` and ``module(x)`` on the same weights, checked equal.

    Arguments:
        spec: the funcmodels model.
        module: its ``torch.nn`` twin (weights are overwritten with the spec's).
        x: the input batch.
        autograd: record autograd (parameters require grad) instead of ``torch.no_grad``.

    Returns:
        ``{'funcmodels': ..., 'nn.Module': ...}``, functions of no arguments.
    """
    params = fm.init(fm.key(0), spec)
    module.load_state_dict(fm.to_state_dict(params), strict=True)
    module.eval()
    module.requires_grad_(autograd)
    if autograd:
        params = fm.Params(spec, {k: v.requires_grad_(True) for k, v in params.flat().items()})
    mode = contextlib.nullcontext if autograd else torch.no_grad

    def ours() -> torch.Tensor:
        with mode():
            return fm.apply(params, x)

    def theirs() -> torch.Tensor:
        with mode():
            return module(x)

    torch.testing.assert_close(ours(), theirs(), rtol=RTOL, atol=ATOL)
    return {"funcmodels": ours, "nn.Module": theirs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (5 if args.quick else 21)
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("MLP 3x Linear(256), batch 32", mlp_spec, mlp_module, (32, 256), "<= 1.15"),
        ("tutorial CNN, batch 64, eval", cnn_spec, cnn_module, (64, 1, 28, 28), "<= 1.05"),
    ]
    rows = []
    for label, spec_fn, module_fn, shape, target in cases:
        x = torch.randn(shape, generator=gen)
        for autograd in (False, True):
            fns = pair(spec_fn(), module_fn(), x, autograd)
            timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.02)
            mode = "autograd on" if autograd else "no_grad"
            what = f"forward, {label}, {mode}, CPU, {args.threads} threads"
            rows.append(row(what, timings, "nn.Module"))
            ratio_of = ("funcmodels", "nn.Module")
            rows.append(row(what, timings, "funcmodels", ratio_of=ratio_of, target=target))
    print(f"outputs equal on both sides (rtol={RTOL}, atol={ATOL})")
    report(rows, args.threads)


if __name__ == "__main__":
    main()
