"""Transformer encoder forward: ``fm.apply`` vs ``nn.TransformerEncoder`` on the same weights.

The model is a 2-layer ``TransformerEncoder`` (d_model 256, 4 heads, feed-forward 1024,
batch first), run in eval mode under ``torch.no_grad()`` on a batch of 32 sequences of 128
tokens. The torch side is ``module(x)`` as a user calls it, so in eval mode without
autograd it takes torch's fast path (the fused ``_transformer_encoder_layer_fwd`` kernel);
funcmodels runs ``scaled_dot_product_attention`` and the layers' kernels one by one.

Two figures: both eager, and both compiled with ``torch.compile`` (default mode; each
compiled once, outside the timing). Outputs are checked equal first, eager and compiled.

Run: ``python benchmarks/transformer.py [--quick] [--threads 2]``; ``--batch``,
``--tokens`` change the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._dynamo
from common import parse_args, report, row, time_interleaved

import funcmodels as fm

D_MODEL, HEADS, FEEDFORWARD, LAYERS = 256, 4, 1024, 2
# torch's fused kernel and ours compute the same layers with other kernels (and compiled
# graphs fuse differently): outputs agree to float32 rounding, a few 1e-6.
RTOL, ATOL = 1e-4, 1e-4


def spec() -> fm.nn.TransformerEncoder:
    layer = fm.nn.TransformerEncoderLayer(D_MODEL, HEADS, FEEDFORWARD, batch_first=True)
    return fm.nn.TransformerEncoder(layer, LAYERS)


def module() -> torch.nn.TransformerEncoder:
    """:func:`spec` in ``torch.nn``, same ``state_dict`` keys."""
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FEEDFORWARD, batch_first=True)
    return torch.nn.TransformerEncoder(layer, LAYERS)


def contenders(x: torch.Tensor, compiled: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """``fm.apply`` and ``module(x)`` on the same weights (compiled or not), checked equal."""
    params = fm.init(fm.key(0), spec())
    mod = module()
    mod.load_state_dict(fm.to_state_dict(params), strict=True)
    mod.eval()
    apply = fm.apply
    if compiled:
        torch._dynamo.reset()
        apply = torch.compile(fm.apply)
        mod = torch.compile(mod)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return apply(params, x)

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return mod(x)

    torch.testing.assert_close(ours(), theirs(), rtol=RTOL, atol=ATOL)
    return {"funcmodels": ours, "nn.Module": theirs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        batch=(int, 32, "sequences per batch (default 32)"),
        tokens=(int, 128, "tokens per sequence (default 128)"),
    )
    repeats = args.repeats or (3 if args.quick else 21)
    x = torch.randn(args.batch, args.tokens, D_MODEL, generator=torch.Generator().manual_seed(0))
    rows = []
    for compiled, target in ((False, "<= 1.10"), (True, "<= 1.05")):
        fns = contenders(x, compiled)
        timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.05)
        mode = "torch.compile" if compiled else "eager"
        what = (
            f"TransformerEncoder {LAYERS}x(d {D_MODEL}, {HEADS} heads, ff {FEEDFORWARD}), "
            f"batch {args.batch}x{args.tokens}, eval, no_grad, {mode}, CPU, "
            f"{args.threads} threads"
        )
        rows.append(row(what, timings, "nn.Module"))
        ratio_of = ("funcmodels", "nn.Module")
        rows.append(row(what, timings, "funcmodels", ratio_of=ratio_of, target=target))
    print(f"outputs equal on both sides, eager and compiled (rtol={RTOL}, atol={ATOL})")
    report(rows, args.threads)


if __name__ == "__main__":
    main()
