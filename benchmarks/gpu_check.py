"""GPU figures and device-independence of the random bits, when CUDA is available.

1. Per-sample gradients of the tutorial CNN at batch 512 on CUDA: the four contenders of
   ``per_sample_grads.py`` (funcmodels, torch.func, Opacus, a loop), checked equal first.
2. ``fm.random.uniform`` (default ``[0, 1)``, every floating dtype),
   ``fm.random.randint``, ``permutation``, ``choice`` (with and without replacement) and
   dropout's 16-bit keep mask
   give the same bits on CPU and CUDA (``torch.equal`` after
   ``.cpu()``), for sizes on both the small and the chunked path of the generator, with the
   key on either device.
3. ``fm.init_with_state`` of ResNet-18 from a CUDA key puts every leaf on the card, gives
   the bits of a CPU init, and runs; its time against torch's build on the CPU plus
   ``.to("cuda")`` (``init_resnet18.py``; target <= 1.0x).
4. A ``Stack`` ensemble of 8 MLPs against a loop over 8 modules on the card
   (``stack_ensemble.py``; target <= 0.5x).

The precision settings that decide GPU timings (TF32 for matmuls and for cuDNN) are
printed with the table. Without CUDA it says so and exits 0.

Run: ``python benchmarks/gpu_check.py [--quick]``.
"""

from __future__ import annotations

import math
import warnings

import init_resnet18
import stack_ensemble
import torch
from common import parse_args, report
from per_sample_grads import figure

import funcmodels as fm
from funcmodels.random._samplers import keep_mask

# Sizes below and above the generator's switch to chunked in-place rounds (2**14 blocks).
SIZES = ((3,), (257, 3), (1000, 1000), (4097, 1023))
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
RANGES = ((0, 10), (-5, 3), (0, 2**31), (-(2**31), 0))


def check_same_bits(device: str = "cuda") -> int:
    """Compare CPU draws with draws on ``device``; print each mismatch, return their count."""
    failures = 0
    cases = 0
    for seed in (0, 12345):
        k_cpu = fm.key(seed)
        k_dev = fm.key(seed, device=device)
        for shape in SIZES:
            draws = [
                (
                    f"uniform {dtype}",
                    lambda k, dev, dtype=dtype, shape=shape: fm.random.uniform(
                        k, shape, dtype, device=dev
                    ),
                )
                for dtype in FLOAT_DTYPES
            ] + [
                (
                    f"randint [{lo}, {hi})",
                    lambda k, dev, lo=lo, hi=hi, shape=shape: fm.random.randint(
                        k, shape, lo, hi, device=dev
                    ),
                )
                for lo, hi in RANGES
            ]
            n = max(1, math.prod(shape))
            draws += [  # the integer data draws (issue: training toolkit)
                ("permutation", lambda k, dev, n=n: fm.random.permutation(k, n, device=dev)),
                (
                    "choice with replacement",
                    lambda k, dev, n=n: fm.random.choice(k, n + 3, (n,), device=dev),
                ),
                (
                    "choice without replacement",
                    lambda k, dev, n=n: fm.random.choice(k, n + 3, (n,), replace=False, device=dev),
                ),
                ("dropout keep mask", lambda k, dev, n=n: keep_mask(k, 0.9, (n,), device=dev)),
            ]
            for what, draw in draws:
                want = draw(k_cpu, None)
                # The key on the device, and a CPU key with the device named.
                for how, got in (
                    ("key on the device", draw(k_dev, None)),
                    ("CPU key, device named", draw(k_cpu, device)),
                ):
                    cases += 1
                    if got.device.type != torch.device(device).type or not torch.equal(
                        got.cpu(), want
                    ):
                        failures += 1
                        print(f"MISMATCH: {what}, shape {shape}, seed {seed}, {how}")
    print(f"CPU vs {device} bits: {cases - failures}/{cases} cases bit-identical")
    return failures


def check_init_on_device(device: str = "cuda") -> int:
    """ResNet-18 from a key on ``device``: one device for every leaf, CPU bits, runs."""
    spec = init_resnet18.resnet18_spec()
    params, state = fm.init_with_state(fm.key(0, device=device), spec)
    want_p, want_s = fm.init_with_state(fm.key(0), spec)
    leaves = {**params.flat(), **state.flat()}
    wrong = sorted({str(t.device) for t in leaves.values()} - {"cuda:0"})
    differ = [
        k
        for k, t in {**want_p.flat(), **want_s.flat()}.items()
        if not torch.equal(leaves[k].cpu(), t)
    ]
    x = torch.randn(2, 3, 64, 64, device=device)
    out = fm.apply(params, x, state=state)
    ok = not wrong and not differ and out.device.type == "cuda"
    print(
        f"init on {device}: devices {sorted({str(t.device) for t in leaves.values()})}, "
        f"{len(differ)} tensors differ from the CPU init, apply -> {out.device}: "
        f"{'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to check here (exit 0).")
        return 0
    print(f"device: {torch.cuda.get_device_name()}")
    failures = check_same_bits() + check_init_on_device()
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    repeats = args.repeats or (3 if args.quick else 7)
    rows = figure(512, "cuda", repeats, args.threads)
    rows += init_resnet18.figure("cuda", repeats, args.threads)
    rows += stack_ensemble.figure("cuda", repeats, args.threads)
    report(rows, args.threads)
    print(
        f"card: {torch.cuda.get_device_name()}; precision: "
        f"torch.backends.cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
        f"torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
        f"float32_matmul_precision={torch.get_float32_matmul_precision()!r}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
