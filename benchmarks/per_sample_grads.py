"""Per-sample gradients of the torch.func tutorial CNN: funcmodels vs torch.func vs Opacus.

The model is the CNN of the torch "per-sample gradients" tutorial (MNIST-sized input
``(1, 28, 28)``, ten classes, NLL loss on log-softmax outputs). Four contenders compute the
gradient of each example's loss with respect to every parameter, for a whole batch:

* ``funcmodels``: ``vmap(grad(loss), in_dims=(None, 0, 0))`` where ``loss`` applies the
  model to one unbatched example (``fm.apply`` batches it internally);
* ``torch.func``: the tutorial's way, ``functional_call`` on the equivalent ``nn.Module``
  with ``unsqueeze(0)`` inside the vmapped loss;
* ``opacus``: ``opacus.GradSampleModule`` (forward/backward hooks), one backward of the
  summed loss;
* ``loop``: one ``torch.autograd.grad`` call per example.

All four are checked to give the same per-sample gradients before anything is timed.

Run: ``python benchmarks/per_sample_grads.py [--quick] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import assert_trees_close, cuda_sync, parse_args, report, row, time_interleaved
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

import funcmodels as fm

# Per-sample gradients from four computation orders (im2col + einsum in Opacus, batched
# convolutions under vmap, single-example autograd) agree to float32 rounding.
RTOL, ATOL = 1e-4, 1e-6

Grads = dict[str, torch.Tensor]


def cnn_spec() -> fm.nn.Sequential:
    """The tutorial CNN as a funcmodels spec: input ``(1, 28, 28)``, output 10 log-probs."""
    nn = fm.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
        nn.LogSoftmax(dim=-1),
    )


def cnn_module() -> torch.nn.Sequential:
    """The same CNN in ``torch.nn``, with the same ``state_dict`` keys as :func:`cnn_spec`."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
        nn.LogSoftmax(dim=-1),
    )


def to_device(params: fm.Params, device: str) -> fm.Params:
    """``params`` with every tensor moved to ``device`` (same values)."""
    return tree_map(lambda t: t.to(device), params)


def make_problem(
    batch: int, device: str
) -> tuple[fm.Params, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """funcmodels params, a torch twin holding the same weights, inputs and targets.

    Returns:
        ``(params, module, x, y)`` with ``x`` of shape ``(batch, 1, 28, 28)`` and ``y`` of
        shape ``(batch,)`` (class indices), all on ``device``.
    """
    params = to_device(fm.init(fm.key(0), cnn_spec()), device)
    module = cnn_module().to(device)
    module.load_state_dict(fm.to_state_dict(params), strict=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return params, module, x, y


def funcmodels_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Grads]:
    """``vmap(grad(loss))`` with a loss on one unbatched example."""

    def loss(p: fm.Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(fm.apply(p, xi), yi)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    return lambda: fm.to_state_dict(per_sample(params, x, y))


def torch_func_fn(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Grads]:
    """The tutorial: ``functional_call`` on the module, ``unsqueeze(0)`` in the loss."""
    weights = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}

    def loss(w, b, xi, yi):
        out = functional_call(module, (w, b), (xi.unsqueeze(0),))
        return F.nll_loss(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, None, 0, 0))
    return lambda: per_sample(weights, buffers, x, y)


def opacus_fn(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Grads]:
    """``GradSampleModule`` hooks; the summed loss makes ``grad_sample`` the per-example grads."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(module, loss_reduction="sum")
    names = [k for k, _ in module.named_parameters()]
    params = list(module.parameters())

    def step() -> Grads:
        gsm.zero_grad(set_to_none=True)
        F.nll_loss(gsm(x), y, reduction="sum").backward()
        return {k: p.grad_sample for k, p in zip(names, params, strict=True)}

    return step


def loop_fn(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Grads]:
    """One ``torch.autograd.grad`` per example, stacked."""
    names = [k for k, _ in module.named_parameters()]
    params = list(module.parameters())

    def step() -> Grads:
        per = [
            torch.autograd.grad(F.nll_loss(module(x[i : i + 1]), y[i : i + 1]), params)
            for i in range(x.shape[0])
        ]
        return {k: torch.stack(gs) for k, gs in zip(names, zip(*per, strict=True), strict=True)}

    return step


def contenders(batch: int, device: str) -> dict[str, Callable[[], Grads]]:
    """The four contenders on one problem, each on its own copy of the torch weights."""
    params, module, x, y = make_problem(batch, device)
    opacus_module = cnn_module().to(device)
    opacus_module.load_state_dict(module.state_dict())
    return {
        "funcmodels": funcmodels_fn(params, x, y),
        "torch.func": torch_func_fn(module, x, y),
        "opacus": opacus_fn(opacus_module, x, y),
        "loop": loop_fn(module, x, y),
    }


def check(fns: dict[str, Callable[[], Grads]]) -> None:
    """Raise unless every contender gives the loop's per-sample gradients."""
    want = fns["loop"]()
    for name, fn in fns.items():
        if name != "loop":
            got = {k: v.detach() for k, v in fn().items()}
            assert_trees_close(got, want, f"{name} vs loop", rtol=RTOL, atol=ATOL)


def figure(batch: int, device: str, repeats: int, threads: int) -> list[str]:
    """Check, time and return the table rows for one batch size."""
    if torch.device(device).type == "cuda":
        # cuDNN convolutions default to TF32 on recent cards, which would make the four
        # computation orders differ by ~1e-3; compare (and time) full float32 instead.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    fns = contenders(batch, device)
    check(fns)
    print(f"batch {batch} on {device}: all four agree (rtol={RTOL}, atol={ATOL}); timing...")
    sync = cuda_sync(device)
    # Two runs: the two vmap contenders head to head, then all four. (Opacus and the loop
    # free hundreds of MB per call; the untimed call before each sample absorbs what that
    # costs whoever runs next, see common.time_interleaved.)
    pair = {k: fns[k] for k in ("funcmodels", "torch.func")}
    head_to_head = time_interleaved(pair, repeats=2 * repeats, sync=sync)
    timings = time_interleaved(fns, repeats=repeats, sync=sync)
    where = "CPU" if device == "cpu" else torch.cuda.get_device_name(device)
    what = f"per-sample grads, tutorial CNN, batch {batch}, {where}, {threads} threads"
    return [
        row(what + " (head to head)", head_to_head, "funcmodels"),
        row(
            what + " (head to head)",
            head_to_head,
            "torch.func",
            ratio_of=("funcmodels", "torch.func"),
            target="<= 1.10",
        ),
        row(what, timings, "funcmodels"),
        row(what, timings, "torch.func", ratio_of=("funcmodels", "torch.func")),
        row(what, timings, "opacus", ratio_of=("opacus", "funcmodels"), target=">= 1.5"),
        row(what, timings, "loop", ratio_of=("loop", "funcmodels")),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        device=(str, "cpu", "cpu or cuda"),
        batches=(str, "64,256", "comma-separated batch sizes"),
    )
    # Opacus warns about its RNG and about full backward hooks on inputs that need no grad;
    # neither bears on speed or on the gradients checked here.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        batches = batches[:1]
    repeats = args.repeats or (4 if args.quick else 8)
    rows = [r for b in batches for r in figure(b, args.device, repeats, args.threads)]
    report(rows, args.threads)


if __name__ == "__main__":
    main()
