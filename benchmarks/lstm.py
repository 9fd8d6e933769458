"""LSTM inference: ``fm.apply`` of ``fm.nn.LSTM`` vs :class:`torch.nn.LSTM`, eager and compiled.

The model: a 2-layer LSTM, input 256, hidden 256, on a batch of 32 sequences of 128
steps (``(L, N, H_in) = (128, 32, 256)``), eval, under ``torch.no_grad()``, the same
weights on both sides. torch's module runs its fused kernel (oneDNN on CPU). So does
``fm.apply`` in eager mode and compiled under ``no_grad``: on the CPU, without a dropout
that draws, ``fm.nn.LSTM`` calls ``torch.lstm`` as the module does. Under ``torch.func``
transforms (per-sample gradients) it runs its scan instead: one input projection per
layer, then a Python loop over the steps with one matrix product and the gate arithmetic
per step. Six contenders:

* ``nn.LSTM``: ``module(x)``;
* ``funcmodels``: ``fm.apply(params, x)``;
* ``funcmodels scan``: the same with the fused kernel switched off, the path that runs
  under ``vmap``/``grad`` (reported, no target);
* ``nn.LSTM compiled``: ``torch.compile(module)``;
* ``funcmodels compiled``: ``torch.compile(fm.apply, fullgraph=True)``;
* ``funcmodels scan compiled``: the scan compiled (``fullgraph=True``, the steps unrolled
  into one graph), the compiled path of training and per-sample gradients;
* ``matmul floor``: the scan's matrix products alone (per layer the input projection,
  then one ``addmm`` per step, each step's state a slice of the last product), no gate
  arithmetic: what any scan built from torch's matrix products costs at least, so the
  scan's ratios cannot be below ``matmul floor / nn.LSTM`` (not checked for equal
  outputs: it computes no LSTM).

The targets of the scan (issue 24): eager ``<= 1.5x`` ``nn.LSTM``, compiled ``<= 1.2x`` the
compiled module; the floor's ratio says what they are measured against.

Outputs are checked equal (``rtol=1e-5, atol=1e-5``: different kernels round differently)
before anything is timed. The target is on the compiled pair; the eager ratios are
reported as they are.

Run: ``python benchmarks/lstm.py [--quick] [--threads 2] [--cpu-time] [--steps 128]``; with
``--profile 1``, the operators of the eager scan by time (torch.profiler) are printed too.
"""

from __future__ import annotations

import time

import torch
from common import parse_args, report, row, time_interleaved

import funcmodels as fm
from funcmodels.nn import _recurrent

RTOL, ATOL = 1e-5, 1e-5
INPUT, HIDDEN, LAYERS, BATCH = 256, 256, 2, 32


def contenders(steps: int) -> dict[str, object]:
    """The contenders on one input, checked to agree (but the floor); compile time is
    printed."""
    spec = fm.nn.LSTM(INPUT, HIDDEN, LAYERS)
    params = fm.init(fm.key(0), spec)
    module = torch.nn.LSTM(INPUT, HIDDEN, LAYERS)
    module.load_state_dict(fm.to_state_dict(params), strict=True)
    module.eval()
    x = torch.randn(steps, BATCH, INPUT, generator=torch.Generator().manual_seed(0))
    compiled_apply = torch.compile(fm.apply, fullgraph=True)
    compiled_module = torch.compile(module)
    compiled_scan = torch.compile(lambda p, inputs: fm.apply(p, inputs), fullgraph=True)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return fm.apply(params, x)[0]

    def ours_scan() -> torch.Tensor:
        _recurrent._FUSED = False
        try:
            with torch.no_grad():
                return fm.apply(params, x)[0]
        finally:
            _recurrent._FUSED = True

    def ours_scan_compiled() -> torch.Tensor:
        _recurrent._FUSED = False  # read while tracing; dynamo guards on it
        try:
            with torch.no_grad():
                return compiled_scan(params, x)[0]
        finally:
            _recurrent._FUSED = True

    def floor() -> torch.Tensor:
        with torch.no_grad():
            inputs = x
            for layer in range(LAYERS):
                w_hh = params[f"weight_hh_l{layer}"].t()
                xp = torch.nn.functional.linear(
                    inputs, params[f"weight_ih_l{layer}"], params[f"bias_ih_l{layer}"]
                )
                h, outs = x.new_zeros(BATCH, HIDDEN), []
                for t in range(steps):
                    h = torch.addmm(xp[t], h, w_hh)[:, :HIDDEN]
                    outs.append(h)
                inputs = torch.stack(outs)
            return inputs

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return module(x)[0]

    def ours_compiled() -> torch.Tensor:
        with torch.no_grad():
            return compiled_apply(params, x)[0]

    def theirs_compiled() -> torch.Tensor:
        with torch.no_grad():
            return compiled_module(x)[0]

    want = theirs()
    for name, fn in (
        ("funcmodels", ours),
        ("funcmodels scan", ours_scan),
        ("nn.LSTM compiled", theirs_compiled),
        ("funcmodels compiled", ours_compiled),
        ("funcmodels scan compiled", ours_scan_compiled),
    ):
        start = time.perf_counter()
        torch.testing.assert_close(fn(), want, rtol=RTOL, atol=ATOL)
        what = "first call, compilation included" if "compiled" in name else "first call"
        print(f"{name}: {what}: {time.perf_counter() - start:.1f} s")
    return {
        "nn.LSTM": theirs,
        "funcmodels": ours,
        "funcmodels scan": ours_scan,
        "nn.LSTM compiled": theirs_compiled,
        "funcmodels compiled": ours_compiled,
        "funcmodels scan compiled": ours_scan_compiled,
        "matmul floor": floor,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        steps=(int, 128, "sequence length (default 128)"),
        profile=(int, 0, "1: also print the eager scan's operators by time"),
    )
    repeats = args.repeats or (3 if args.quick else 15)
    fns = contenders(args.steps)
    print(f"outputs equal on all sides (rtol={RTOL}, atol={ATOL})")
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.1, clock=args.clock)
    what = (
        f"LSTM {LAYERS}x{HIDDEN}, input {INPUT}, batch {BATCH} x {args.steps} steps, eval, "
        f"no_grad, CPU, {args.threads} threads"
    )
    rows = [
        row(what, timings, "nn.LSTM"),
        row(what, timings, "funcmodels", ratio_of=("funcmodels", "nn.LSTM")),
        row(
            what,
            timings,
            "funcmodels scan",
            ratio_of=("funcmodels scan", "nn.LSTM"),
            target="<= 1.5",
        ),
        row(what, timings, "matmul floor", ratio_of=("matmul floor", "nn.LSTM")),
        row(what, timings, "nn.LSTM compiled"),
        row(
            what,
            timings,
            "funcmodels compiled",
            ratio_of=("funcmodels compiled", "nn.LSTM compiled"),
            target="<= 1.5",
        ),
        row(
            what,
            timings,
            "funcmodels scan compiled",
            ratio_of=("funcmodels scan compiled", "nn.LSTM compiled"),
            target="<= 1.2",
        ),
        row(what, timings, "matmul floor", ratio_of=("matmul floor", "nn.LSTM compiled")),
    ]
    report(rows, args.threads)
    if args.profile:
        with torch.profiler.profile() as prof:
            for _ in range(3):
                fns["funcmodels scan"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
