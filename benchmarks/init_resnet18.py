"""Initialisation cost: ``fm.init`` of a ResNet-18 spec vs building the torch model.

ResNet-18 (11,689,512 parameters): conv 7x7 stride 2 -> BatchNorm -> ReLU -> max-pool 3x3
stride 2 -> four stages of two basic blocks (64, 128, 256, 512 channels; stages 2-4 start
with stride 2 and a 1x1 projection) -> adaptive average pool -> fc 1000. On our side the
blocks are ``fm.nn.ResidualBlock`` in a ``Sequential``; the torch side is written out by
hand with the same ``state_dict`` keys, so our params load into it and both give the same
output before anything is timed.

Contenders: ``fm.init`` (trainable params), ``fm.init_with_state`` (plus BatchNorm
buffers, what a torch model also allocates) and ``torch``: constructing the ``nn.Module``
(which runs torch's default initialisation). With ``--device cuda`` the funcmodels side
inits from a CUDA key (every leaf on the card) and the torch side is what a torch user
does: build on the CPU, then ``.to("cuda")``; each sample ends with a synchronisation.

Run: ``python benchmarks/init_resnet18.py [--quick] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from common import cuda_sync, parse_args, report, row, time_interleaved
from torch import nn

import funcmodels as fm

RESNET18_PARAMS = 11_689_512
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)


def resnet18_spec() -> fm.nn.Sequential:
    """ResNet-18 as a funcmodels spec; input ``(3, H, W)``, output 1000 logits."""
    f = fm.nn
    layers: list[fm.Spec] = [
        f.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        f.BatchNorm2d(64),
        f.ReLU(),
        f.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for cout, stride in STAGES:
        layers += [f.ResidualBlock(cin, cout, stride=stride), f.ResidualBlock(cout, cout)]
        cin = cout
    layers += [f.AdaptiveAvgPool2d(1), f.Flatten(), f.Linear(512, 1000)]
    return f.Sequential(*layers)


class BasicBlock(nn.Module):
    """torch twin of ``fm.nn.ResidualBlock(cin, cout, stride)`` (same parameter names)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.main_branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.projection = None
        if cin != cout or stride != 1:
            self.projection = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        return self.activation(self.main_branch(x) + shortcut)


def resnet18_module() -> nn.Sequential:
    """ResNet-18 in ``torch.nn``, with the ``state_dict`` keys of :func:`resnet18_spec`."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for cout, stride in STAGES:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def check_twins(spec: fm.nn.Sequential) -> None:
    """Raise unless both sides have ResNet-18's parameter count and compute the same thing."""
    params, state = fm.init_with_state(fm.key(0), spec)
    module = resnet18_module()
    ours = sum(t.numel() for t in params.flat().values())
    theirs = sum(p.numel() for p in module.parameters())
    if ours != RESNET18_PARAMS or theirs != RESNET18_PARAMS:
        raise AssertionError(f"parameter counts: ours {ours}, torch {theirs}, ResNet-18 11689512")
    module.load_state_dict(fm.to_state_dict(params, state), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module.eval()(x)
    torch.testing.assert_close(fm.apply(params, x, state=state), want, rtol=1e-4, atol=1e-5)


def figure(
    device: str, repeats: int, threads: int, clock: Callable[[], float] = time.perf_counter
) -> list[str]:
    """Time the three contenders on ``device``; return the table rows."""
    spec = resnet18_spec()
    check_twins(spec)
    print(f"both sides: {RESNET18_PARAMS:,} parameters, same eval output (rtol=1e-4, atol=1e-5)")
    key = fm.key(0, device=device)
    params, state = fm.init_with_state(key, spec)
    where = {t.device for t in [*params.flat().values(), *state.flat().values()]}
    if where != {torch.empty(0, device=device).device}:
        raise AssertionError(f"fm.init_with_state on {device} left leaves on {where}")
    if device == "cpu":
        build = resnet18_module
        torch_name, target = "torch", "<= 2"
    else:
        build = lambda: resnet18_module().to(device)  # noqa: E731
        torch_name, target = "torch, built on CPU then .to(device)", "<= 1.0"
    fns = {
        "fm.init": lambda: fm.init(key, spec),
        "fm.init_with_state": lambda: fm.init_with_state(key, spec),
        torch_name: build,
    }
    timings = time_interleaved(
        fns, repeats=repeats, min_sample_s=0.2, sync=cuda_sync(device), clock=clock
    )
    what = f"init ResNet-18 (11.7M params), float32, {device}, {threads} threads"
    return [
        row(what, timings, torch_name),
        row(what, timings, "fm.init", ratio_of=("fm.init", torch_name), target=target),
        row(what, timings, "fm.init_with_state", ratio_of=("fm.init_with_state", torch_name)),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, device=(str, "cpu", "cpu or cuda"))
    repeats = args.repeats or (3 if args.quick else 11)
    report(figure(args.device, repeats, args.threads, args.clock), args.threads)


if __name__ == "__main__":
    main()
