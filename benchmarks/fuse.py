"""Conv-BatchNorm fusion, eval mode, CPU eager: transforms.fuse vs torch's fx fuse.

The model is 8 blocks of ``Conv2d(64, 64, 3, padding=1) - BatchNorm2d(64) - ReLU``, built
as a funcmodels spec (BatchNorm statistics and affine terms set away from their initial
values) and converted with ``transforms.to_module``; the input is ``(32, 64, 56, 56)``.
Contenders, all under ``torch.no_grad()``:

* ``unfused``: the module from ``to_module``, in eval mode;
* ``fx.optimization.fuse``: ``torch.fx.experimental.optimization.fuse(module)``, torch's
  own pass (folds Conv-BN, leaves the ReLU as it is);
* ``transforms.fuse``: folds Conv-BN with the same formulas and runs the ReLU in place on
  the conv output.

Both fused models are checked against the unfused one (``rtol=1e-4, atol=1e-4`` after 8
blocks in float32) before anything is timed. The figure is the speed-up of each fused
model over the unfused one (target: at least 1.26x for ``transforms.fuse``).

Run: ``python benchmarks/fuse.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import torch
from common import parse_args, report, row, time_interleaved
from torch.fx.experimental.optimization import fuse as fx_fuse

import funcmodels as fm
import transforms

BLOCKS, CHANNELS = 8, 64


def model(seed: int = 0) -> torch.nn.Module:
    """The unfused conv net as a torch module, with non-trivial BatchNorm tensors."""
    nn = fm.nn
    layers = []
    for _ in range(BLOCKS):
        layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.BatchNorm2d(CHANNELS), nn.ReLU()]
    spec = nn.Sequential(*layers)
    params, state = fm.init_with_state(fm.key(seed), spec)
    g = torch.Generator().manual_seed(seed)
    flat_params, flat_state = params.flat(), state.flat()
    for k, v in flat_params.items():
        if v.dim() == 1:  # BatchNorm weight and bias, conv bias
            flat_params[k] = v + 0.1 * torch.randn(v.shape, generator=g)
    for k, v in flat_state.items():
        if k.endswith("running_mean"):
            flat_state[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            flat_state[k] = 0.5 + torch.rand(v.shape, generator=g)
    return transforms.to_module(fm.Params(spec, flat_params), fm.State(spec, flat_state))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, batch=(int, 32, "batch size"))
    repeats = args.repeats or (3 if args.quick else 11)
    x = torch.randn(args.batch, CHANNELS, 56, 56, generator=torch.Generator().manual_seed(1))
    unfused = model()
    contenders = {
        "unfused": unfused,
        "fx.optimization.fuse": fx_fuse(unfused),
        "transforms.fuse": transforms.fuse(unfused),
    }
    with torch.no_grad():
        want = unfused(x)
        for name in ("fx.optimization.fuse", "transforms.fuse"):
            torch.testing.assert_close(contenders[name](x), want, rtol=1e-4, atol=1e-4)
        print("both fused models match the unfused one (rtol=1e-4, atol=1e-4)")
        fns = {name: (lambda m=m: m(x)) for name, m in contenders.items()}
        timings = time_interleaved(fns, repeats=repeats, warmup=1, min_sample_s=0.0)
    what = (
        f"{BLOCKS} x Conv(64->64, 3x3)-BN-ReLU, eval, {tuple(x.shape)}, CPU eager, "
        f"{args.threads} threads"
    )
    rows = [
        row(what, timings, "unfused"),
        row(what, timings, "fx.optimization.fuse", ratio_of=("unfused", "fx.optimization.fuse")),
        row(
            what,
            timings,
            "transforms.fuse",
            ratio_of=("unfused", "transforms.fuse"),
            target=">= 1.26",
        ),
        row(
            what,
            timings,
            "transforms.fuse",
            ratio_of=("fx.optimization.fuse", "transforms.fuse"),
        ),
    ]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
