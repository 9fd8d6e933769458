"""DP-SGD's clipped, summed gradient: transforms.dp vs the non-private step, vmap(grad) and
Opacus's ghost clipping.

Figures, each measured side by side in one run:

* the torch per-sample-grads tutorial CNN (conv32-conv64-fc128-fc10, MNIST-sized input),
  batch 64, clip norm 1.0, eval-mode model (its dropout off): ``transforms.dp.clipped_grad``
  against one non-private step (``grad`` of the summed loss), the materialised route
  (``vmap(grad)``, clip, sum) and Opacus's ghost clipping
  (``GradSampleModuleFastGradientClipping`` + ``DPLossFastGradientClipping``: the time of
  ``criterion(module(x), y).backward()``, which leaves the clipped sum in ``.grad``);
* a transformer-style model on sequences, batch 32 x 128 tokens: an embedding of 1,000
  tokens, width 128, two ``TransformerEncoderLayer`` (4 heads, feed-forward 512, no
  dropout), mean over tokens, a linear head; ``clipped_grad`` against the non-private
  step (its attention layers have no closed form: their per-example gradients are formed,
  theirs only);
* a CNN's late layers: two ``Conv2d(256, 256, 3, padding=1)`` on 8x8 maps, batch 64,
  mean-pooled to a linear head: time against the non-private step and ``vmap(grad)``,
  and their peak memory (below). Per-example weight gradients of 590k values: here
  ``clipped_grad`` takes the Gram form of the unfolded input for the norms and one
  backward over the batch for the sum, forming none;
* peak memory, CPU: each contender of the CNN figure runs three steps in a fresh process,
  which reports its peak resident set size (``VmHWM``, reset before the steps) above what
  it held after building the model and the batch.

All contenders are checked to agree before anything is timed (gradients to 1e-4
relative, Opacus's to 1e-3: it sums in float32 in another order).

Run: ``python benchmarks/dp.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F
from common import parse_args, report, row, time_interleaved
from per_sample_grads import cnn_module, cnn_spec
from torch.func import grad, vmap

import funcmodels as fm
from transforms import dp

nn = fm.nn
CLIP = 1.0


def losses(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(fm.apply(params, x), y, reduction="none")


def materialised(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> fm.Params:
    """``vmap(grad)``, clip, sum: the reference route."""

    def one(p, xi, yi):
        return losses(p, xi[None], yi[None])[0]

    per_example = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = per_example.flat()
    norms = torch.cat([v.flatten(1) for v in flat.values()], 1).norm(dim=1)
    factor = (CLIP / (norms + 1e-6)).clamp(max=1.0)
    return fm.Params(
        params.spec,
        {n: (v * factor.view(-1, *[1] * (v.dim() - 1))).sum(0) for n, v in flat.items()},
    )


def opacus_ghost(params: fm.Params, x: torch.Tensor, y: torch.Tensor):
    """Opacus's ghost clipping on the same weights: a function leaving the clipped sum in
    ``.grad``, and the module."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    module = cnn_module()
    module.load_state_dict(fm.to_state_dict(params))
    # Opacus records activations in train mode only: train mode with the dropout off
    # computes what the eval-mode model does.
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    gsm = GradSampleModuleFastGradientClipping(
        module, max_grad_norm=CLIP, use_ghost_clipping=True, loss_reduction="sum"
    )
    optimizer = DPOptimizerFastGradientClipping(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=CLIP,
        expected_batch_size=len(y),
        loss_reduction="sum",
    )
    criterion = DPLossFastGradientClipping(
        gsm, optimizer, torch.nn.CrossEntropyLoss(reduction="sum"), loss_reduction="sum"
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        criterion(gsm(x), y).backward()

    return step, module


def cnn_problem(batch: int) -> tuple[fm.Params, torch.Tensor, torch.Tensor]:
    params = fm.init(fm.key(0), cnn_spec())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return params, x, y


def cnn_contender(name: str, params: fm.Params, x: torch.Tensor, y: torch.Tensor):
    """One contender of the CNN figure, built alone (the memory figure runs it alone)."""
    if name == "non-private step":
        return lambda: grad(lambda p: losses(p, x, y).sum())(params)
    if name == "transforms.dp":
        clipped = dp.clipped_grad(losses, CLIP)
        return lambda: clipped(params, x, y)
    if name == "vmap(grad) + clip":
        return lambda: materialised(params, x, y)
    return opacus_ghost(params, x, y)[0]


CNN_CONTENDERS = ("non-private step", "transforms.dp", "vmap(grad) + clip", "Opacus ghost clipping")
WIDE_CONTENDERS = ("non-private step", "transforms.dp", "vmap(grad) + clip")


def wide_problem(batch: int) -> tuple[fm.Params, torch.Tensor, torch.Tensor]:
    """A CNN's late layers: two 256-channel 3x3 convolutions on 8x8 maps (per-example
    weight gradients of 590k values each, few output positions)."""
    spec = nn.Sequential(
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.Reduce("b c h w -> b c", "mean"),
        nn.Linear(256, 10),
    )
    params = fm.init(fm.key(0), spec)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 256, 8, 8, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return params, x, y


def wide_contenders(batch: int) -> dict:
    params, x, y = wide_problem(batch)
    ours, _ = dp.clipped_grad(losses, CLIP)(params, x, y)
    want = materialised(params, x, y)
    for name, g in want.flat().items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-5, msg=name)
    return {name: cnn_contender(name, params, x, y) for name in WIDE_CONTENDERS}


def cnn_contenders(batch: int) -> dict:
    params, x, y = cnn_problem(batch)
    ours, _ = dp.clipped_grad(losses, CLIP)(params, x, y)
    want = materialised(params, x, y)
    ghost, module = opacus_ghost(params, x, y)
    ghost()
    theirs = {n: p.grad for n, p in module.named_parameters()}
    for name, g in want.flat().items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(theirs[name], g, rtol=1e-3, atol=1e-5, msg=name)
    return {name: cnn_contender(name, params, x, y) for name in CNN_CONTENDERS}


def transformer_contenders(batch: int, tokens: int) -> dict:
    spec = nn.Sequential(
        {
            "embed": nn.Embedding(1000, 128),
            "encoder": nn.TransformerEncoder(
                nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True), 2
            ),
            "pool": nn.Reduce("b t d -> b d", "mean"),
            "head": nn.Linear(128, 10),
        }
    )
    params = fm.init(fm.key(0), spec)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1000, (batch, tokens), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    clipped = dp.clipped_grad(losses, CLIP)
    ours, _ = clipped(params, x[:4], y[:4])
    want = materialised(params, x[:4], y[:4])
    for name, g in want.flat().items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-6, msg=name)
    return {
        "non-private step": lambda: grad(lambda p: losses(p, x, y).sum())(params),
        "transforms.dp": lambda: clipped(params, x, y),
    }


def peak_memory(name: str, batch: int, problem: str = "cnn") -> int:
    """Peak RSS (bytes) of three steps of ``name`` above the RSS of its process after
    building the model, the batch and the contender (nothing else ran there). Linux: the
    peak is reset through ``/proc/self/clear_refs`` and read from ``VmHWM``."""
    code = f"""
import gc, json, re, sys, warnings
sys.path.insert(0, {str(sys.path[0])!r})
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import dp as bench
def status(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024
params, x, y = bench.{problem}_problem({batch})
fn = bench.cnn_contender({name!r}, params, x, y)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
for _ in range(3):
    fn()
print(json.dumps(status("VmHWM") - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    warnings.simplefilter("ignore")
    repeats = args.repeats or (3 if args.quick else 11)
    rows = []
    fns = cnn_contenders(64)
    print("all four agree (transforms.dp to 1e-4 of vmap(grad); Opacus to 1e-3)")
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.2)
    what = f"tutorial CNN, batch 64, clip 1.0, CPU, {args.threads} threads"
    base = "non-private step"
    rows.append(row(what, timings, base))
    rows.append(
        row(what, timings, "transforms.dp", ratio_of=("transforms.dp", base), target="<= 1.5")
    )
    rows.append(row(what, timings, "vmap(grad) + clip", ratio_of=("vmap(grad) + clip", base)))
    rows.append(
        row(
            what,
            timings,
            "Opacus ghost clipping",
            ratio_of=("Opacus ghost clipping", "transforms.dp"),
            target=">= 1.0",
        )
    )
    tokens = 32 if args.quick else 128
    fns = transformer_contenders(32, tokens)
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.2)
    what = (
        f"transformer 2 x (d 128, 4 heads, ff 512), batch 32 x {tokens} tokens, CPU, "
        f"{args.threads} threads"
    )
    rows.append(row(what, timings, base))
    rows.append(
        row(what, timings, "transforms.dp", ratio_of=("transforms.dp", base), target="<= 2.0")
    )
    fns = wide_contenders(64)
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.2)
    what = f"2 x Conv2d(256, 256, 3) on 8x8 maps, batch 64, CPU, {args.threads} threads"
    rows.append(row(what, timings, base))
    rows.append(row(what, timings, "transforms.dp", ratio_of=("transforms.dp", base)))
    rows.append(row(what, timings, "vmap(grad) + clip", ratio_of=("vmap(grad) + clip", base)))
    if not args.quick:
        wide = {n: peak_memory(n, 64, "wide") for n in WIDE_CONTENDERS}
        print()
        print("wide convolutions, peak memory above the model and batch (3 steps, fresh each):")
        for n, v in wide.items():
            ratio_n = v / wide["non-private step"]
            print(f"  {n}: {v / 2**20:.1f} MiB ({ratio_n:.2f}x the non-private step)")
        peaks = {n: peak_memory(n, 64) for n in CNN_CONTENDERS}
        base_peak = peaks["non-private step"]
        print()
        print("peak memory above the model and batch (RSS, 3 steps, fresh process each):")
        for n, v in peaks.items():
            print(f"  {n}: {v / 2**20:.1f} MiB ({v / base_peak:.2f}x the non-private step)")
        ratio_dp = peaks["transforms.dp"] / base_peak
        met = "yes" if ratio_dp <= 1.5 else "no"
        print(f"transforms.dp / non-private: {ratio_dp:.2f}x (target <= 1.5x: {met})")
    report(rows, args.threads)


if __name__ == "__main__":
    main()
