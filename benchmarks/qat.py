"""Quantization-aware training to int8: accuracy, size and CPU inference time vs float.

The pipeline of ``examples/deploy.py``: a small CNN with BatchNorm trained functionally on
scikit-learn's 8x8 digits, ``transforms.to_module``, ``transforms.fuse``, QAT fine-tuning
with ``transforms.qat.prepare`` and ``torch.optim``, ``transforms.qat.convert``.

Figures:

* accuracy on the digits test split (360 images) of the float model and the int8 one
  (target: int8 within 1.0 point of float);
* size: bytes of the parameters and buffers, and of the ``torch.export.save`` file;
* CPU inference time on the whole test split in one batch, eager and under
  ``torch.compile`` (inductor with freezing, which lowers the int8 graph to int8 kernels
  on x86), for the float model, the fused one and the int8 one.

Run: ``python benchmarks/qat.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

import torch
import torch._inductor.config as inductor_config
from common import parse_args, report, row, time_interleaved

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import deploy  # noqa: E402  (examples/deploy.py, found through the path above)
from _digits import load  # noqa: E402

import funcmodels as fm  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (3 if args.quick else 11)
    epochs, qat_epochs = (2, 1) if args.quick else (10, 3)
    warnings.filterwarnings("ignore", module="torchao")
    data_key, run_key = fm.split(fm.key(0), 2)
    data = load(data_key)
    out = deploy.pipeline(data, epochs, qat_epochs, run_key)
    x = data.x_test

    models = {"float": out.module, "fused": out.fused, "int8": out.int8}
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: deploy.export_and_save(m, x[: deploy.BATCH], os.path.join(tmp, f"{name}.pt2"))
            for name, m in models.items()
        }
    acc = out.accuracy
    change = 100 * (acc["int8"] - acc["float"])
    print()
    print("| model | test accuracy | tensors | torch.export.save file |")
    print("|---|---|---|---|")
    for name, m in models.items():
        kib = deploy.tensor_bytes(m) / 1024
        print(f"| {name} | {acc[name]:.4f} | {kib:.1f} KiB | {files[name] / 1024:.1f} KiB |")
    met = "yes" if change >= -1.0 else "no"
    print(f"int8 - float accuracy: {change:+.2f} points (target: at least -1.0): {met}")

    # Freezing lets inductor treat the weights as constants, which its int8 lowering needs.
    inductor_config.freezing = True
    fns = {}
    with torch.no_grad():
        for name, m in models.items():
            compiled = torch.compile(m)
            same = torch.equal(compiled(x).argmax(-1), m(x).argmax(-1))
            print(f"torch.compile({name}) predicts as eager: {same}")
            fns[f"{name} eager"] = lambda m=m: m(x)
            fns[f"{name} compiled"] = lambda c=compiled: c(x)
        timings = time_interleaved(fns, repeats=repeats)
    what = f"digits CNN, batch {tuple(x.shape)}, CPU, {args.threads} threads"
    rows = []
    for mode in ("eager", "compiled"):
        rows.append(row(what, timings, f"float {mode}"))
        for name in ("fused", "int8"):
            rows.append(
                row(what, timings, f"{name} {mode}", ratio_of=(f"{name} {mode}", f"float {mode}"))
            )
    report(rows, args.threads)


if __name__ == "__main__":
    main()
