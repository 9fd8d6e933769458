"""One training step, funcmodels against plain PyTorch, eager and compiled.

A step is forward, loss, gradients and an AdamW update (lr 1e-3, weight decay 1e-2):

* ``fm eager``: ``fm.value_and_grad`` of the loss, ``fm.optim.adamw`` (as it is, eager),
  ``fm.optim.apply_updates``;
* ``fm.jit``: the same step function compiled whole by ``fm.jit`` (one graph);
* ``torch eager``: the ``torch.nn`` module (same weights), ``loss.backward()``,
  ``torch.optim.AdamW(foreach=True).step()``;
* ``torch compiled``: the same with ``torch.compile(module)`` (backward compiled with it,
  the optimiser eager);
* ``torch compiled step``: ``torch.compile`` of the whole step function (``zero_grad``,
  module, loss, ``backward()``, ``step()``: dynamo splits it at the backward, which runs
  the compiled backward graph; the optimiser's step is compiled, as torch.optim's docs
  show).

Models: ``mlp`` (64-128-128-10, batch 64), ``mlp_dropout`` (the same with two
``Dropout(0.2)``), ``transformer`` (2-layer ``TransformerEncoder``, d 256, 4 heads, ff
1024, dropout 0.1, batch 16 x 128 tokens, mean-square loss), ``cnn_bn`` (two conv-BN-ReLU
blocks, max pool, two linears, 28 x 28 inputs, batch 64, BatchNorm state in train mode),
``moe`` (Linear 64-128, ``transforms.MoE`` of 8 experts 128-256-128 top-2, Linear
128-10, 256 tokens; torch side: ``transforms.to_module`` of the same params), ``stack``
(an 8-member ``fm.nn.Stack`` of the MLP, loss summed over members; torch side: a loop
over 8 modules, one AdamW over all).

Also timed alone: the gradient (``fm grad``: ``fm.value_and_grad``; ``torch.func grad``:
``torch.func.grad_and_value`` of the same loss; ``torch grad``: the module's forward and
``loss.backward()``).

Before timing, each model's gradients are checked against torch's from the same weights
(dropout off; train-mode BatchNorm on). Then the contenders run interleaved, several
rounds, and ratios are per-round medians. Also reported: the optimiser's share of each
eager step (the update alone, timed in the same run), and the compile time of the
``fm.jit`` step against torch's compiled steps (first call minus a steady call, with
inductor's on-disk caches off and a fresh kernel cache for each, so each compiles from
scratch, after one throwaway compile that pays inductor's one-time costs for neither).
With ``--cpu-time`` a compile is timed by the CPU time of the process and of the C++
compiler processes it waited for (``os.times()``), with inductor's ``compile_threads = 1``
so that no compile work runs in a worker pool it does not wait for.

Run: ``python benchmarks/train_step.py [--quick] [--threads 1|2] [--models mlp,cnn_bn]
[--no-compile 1] [--cpu-time]``. ``--cpu-time`` (with ``--threads 1``) times each
sample by the thread's CPU time instead of the wall clock: on a machine shared with other
work, time spent descheduled then counts for no contender (a step of many small ops is
descheduled more often than one of a few large ops, which skews wall-clock ratios).
"""

from __future__ import annotations

import os

# Compile from scratch every run: a cached graph would hide the compile time reported.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
# Compiled C++ kernels are cached by their source in inductor's cache directory, which
# outlives the process: a fresh one, or a rerun would time no C++ compiler.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="train_step_inductor_")

import copy  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
import torch._inductor.utils  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import parse_args, report, row, time_interleaved  # noqa: E402

import funcmodels as fm  # noqa: E402
import transforms  # noqa: E402

LR, WEIGHT_DECAY = 1e-3, 1e-2
RTOL, ATOL = 1e-4, 1e-5
TARGETS = {"mlp": "1.15", "mlp_dropout": "1.4", "cnn_bn": "1.10", "transformer": "1.0"}


@dataclass
class Problem:
    """One model on both sides, with its data and losses."""

    name: str
    params: fm.Params
    state: fm.State | None
    module: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    out_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    dropout: bool


def _mlp(nn, dropout: float = 0.0):
    layers: list[Any] = [nn.Linear(64, 128), nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    layers += [nn.Linear(128, 128), nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(128, 10))


def _cnn(nn):
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 12 * 12, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def _transformer(nn):
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2)


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def _members_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum over members of each member's mean cross-entropy: ``out`` is ``(n, B, C)``."""
    n, b = out.shape[:2]
    return F.cross_entropy(out.flatten(0, 1), y.repeat(n), reduction="sum") / b


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


class _Loop(torch.nn.Module):
    """The torch side of the Stack: ``n`` modules, outputs stacked on dim 0."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


def build(name: str) -> Problem:
    """The fm params, the torch module with the same weights, the data and the loss."""
    g = torch.Generator().manual_seed(0)
    key = fm.key(0)
    x = torch.randn(64, 64, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    state = None
    loss: Callable = _ce
    if name in ("mlp", "mlp_dropout"):
        p = 0.2 if name == "mlp_dropout" else 0.0
        params = fm.init(key, _mlp(fm.nn, p))
        module = _mlp(torch.nn, p)
    elif name == "cnn_bn":
        params, state = fm.init_with_state(key, _cnn(fm.nn))
        module = _cnn(torch.nn)
        x = torch.randn(64, 1, 28, 28, generator=g)
    elif name == "transformer":
        params = fm.init(key, _transformer(fm.nn))
        module = _transformer(torch.nn)
        x = torch.randn(16, 128, 256, generator=g)
        y, loss = torch.randn(16, 128, 256, generator=g), _mse
    elif name == "moe":
        expert = fm.nn.Sequential(fm.nn.Linear(128, 256), fm.nn.GELU(), fm.nn.Linear(256, 128))
        moe = transforms.MoE(expert=expert, num_experts=8, top_k=2)
        params = fm.init(key, fm.nn.Sequential(fm.nn.Linear(64, 128), moe, fm.nn.Linear(128, 10)))
        module = transforms.to_module(params)
        x = torch.randn(256, 64, generator=g)
        y = torch.randint(0, 10, (256,), generator=g)
    elif name == "stack":
        params = fm.init(key, fm.nn.Stack(_mlp(fm.nn), 8))
        members = [_mlp(torch.nn) for _ in range(8)]
        for i, m in enumerate(members):
            m.load_state_dict({k: t[i] for k, t in fm.to_state_dict(params).items()})
        module, loss = _Loop(members), _members_ce
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if name != "stack":
        module.load_state_dict(fm.to_state_dict(params, state), strict=True)
    dropout = name in ("mlp_dropout", "transformer")
    return Problem(name, params, state, module, x, y, loss, dropout)


MODELS = ("mlp", "mlp_dropout", "transformer", "cnn_bn", "moe", "stack")


def fm_loss(problem: Problem, train: bool) -> Callable[..., Any]:
    """``(params, state, x, y, key) -> (loss, new state)`` (state ``()`` when none)."""
    out_loss = problem.out_loss

    def loss(params, state, x, y, key):
        out = fm.run(params, x, state=state, key=key, train=train)
        return out_loss(out.out, y), (() if out.state is None else out.state)

    return loss


def fm_step(problem: Problem, opt) -> Callable[..., Any]:
    """One eager step: ``(params, opt_state, state, x, y, key) -> (params, opt_state,
    state, loss)``."""
    value_and_grad = fm.value_and_grad(fm_loss(problem, train=True), has_aux=True)

    def step(params, opt_state, state, x, y, key):
        (loss, new_state), grads = value_and_grad(params, state, x, y, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        new_state = None if state is None else new_state
        return fm.optim.apply_updates(params, updates), opt_state, new_state, loss

    return step


def check(problem: Problem) -> None:
    """Raise unless fm's gradients equal torch's from the same weights (dropout off)."""
    train = not problem.dropout
    problem.module.train(train)
    loss = fm_loss(problem, train)
    (value, _), grads = fm.value_and_grad(loss, has_aux=True)(
        problem.params, problem.state, problem.x, problem.y, fm.key(1)
    )
    module = problem.module
    module.zero_grad(set_to_none=True)
    want = problem.out_loss(module(problem.x), problem.y)
    want.backward()
    torch.testing.assert_close(value, want.detach(), rtol=RTOL, atol=ATOL)
    if problem.name == "stack":
        theirs = {
            k: torch.stack([dict(m.named_parameters())[k].grad for m in module.members])
            for k in grads.flat()
        }
    else:
        theirs = {k: t.grad for k, t in module.named_parameters()}
    for k, t in grads.flat().items():
        torch.testing.assert_close(t, theirs[k], rtol=RTOL, atol=ATOL, msg=lambda m, k=k: k + m)
    module.train(True)
    module.zero_grad(set_to_none=True)


_WARM: list[bool] = []


def _warm_up_compiler() -> None:
    """Pay inductor's one-time costs (imports, the C++ toolchain check) before the first
    compile time is measured, so that neither contender is charged with them."""
    if not _WARM:
        torch.compile(lambda a: (a.sin() * 2).sum())(torch.ones(3))
        _WARM.append(True)


def _process_cpu_time() -> float:
    """CPU time of this process and of the child processes it has waited for (the C++
    compiler inductor runs), in seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _compile_times(fns: dict[str, Callable], names: tuple[str, ...], cpu: bool) -> dict:
    """Per contender: the first call's time minus a steady call's (the compile), each in
    a fresh inductor cache (the contenders share kernels: torch's compiled step would
    reuse those of torch's compiled module)."""
    clock = _process_cpu_time if cpu else time.perf_counter
    times = {}
    for name in names:
        with torch._inductor.utils.fresh_cache():
            start = clock()
            fns[name]()
            first = clock() - start
            start = clock()
            fns[name]()
            times[name] = first - (clock() - start)
    return times


def _torch_compiled_step(problem: Problem, x: torch.Tensor, y: torch.Tensor) -> Callable:
    """torch's whole step under ``torch.compile`` (its own module copy and optimiser)."""
    module = copy.deepcopy(problem.module)
    opt = torch.optim.AdamW(module.parameters(), LR, weight_decay=WEIGHT_DECAY, foreach=True)

    # static shapes: compiled a second time in one process, the module's forward would be
    # retraced with dynamic shapes, which inductor (torch 2.13) failed to compile for the
    # CNN's train-mode BatchNorm ("Cannot convert expression to float")
    @torch.compile(dynamic=False)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = problem.out_loss(module(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def contenders(
    problem: Problem, compiled: bool, cpu: bool = False
) -> tuple[dict[str, Callable], dict[str, float]]:
    """The timed steps (each call advances its own training run) and compile times."""
    opt = fm.optim.adamw(LR, weight_decay=WEIGHT_DECAY)
    step = fm_step(problem, opt)
    run = {"fm": [problem.params, opt.init(problem.params), problem.state, 0]}
    base = fm.key(2)
    x, y = problem.x, problem.y

    def advance(name: str, fn: Callable) -> Callable[[], Any]:
        def call():
            p, s, st, i = run[name]
            p, s, st, loss = fn(p, s, st, x, y, fm.fold_in(base, i))
            run[name] = [p, s, st, i + 1]
            return loss

        return call

    fns = {"fm eager": advance("fm", step)}
    loss = fm_loss(problem, True)
    args = (problem.params, problem.state, x, y, base)
    fns["fm grad"] = lambda: fm.value_and_grad(loss, has_aux=True)(*args)
    fns["torch.func grad"] = lambda: torch.func.grad_and_value(loss, has_aux=True)(*args)
    grads = fm.grad(fm_loss(problem, True), has_aux=True)(
        problem.params, problem.state, x, y, base
    )[0]
    opt_state = opt.init(problem.params)
    fns["fm optimiser"] = lambda: fm.optim.apply_updates(
        problem.params, opt.update(grads, opt_state, problem.params)[0]
    )
    module = problem.module
    torch_opt = torch.optim.AdamW(module.parameters(), LR, weight_decay=WEIGHT_DECAY, foreach=True)

    def torch_step(model: Callable) -> Callable[[], Any]:
        def call():
            torch_opt.zero_grad(set_to_none=True)
            loss = problem.out_loss(model(x), y)
            loss.backward()
            torch_opt.step()
            return loss

        return call

    fns["torch eager"] = torch_step(module)

    def torch_grad():
        module.zero_grad(set_to_none=True)
        problem.out_loss(module(x), y).backward()

    fns["torch grad"] = torch_grad
    fns["torch eager"]()
    fns["torch optimiser"] = torch_opt.step
    times: dict[str, float] = {}
    if compiled:
        # Each model compiles afresh: the torch models share nn.Sequential.forward, whose
        # cache entries for an earlier model's shapes would make dynamo retrace this one
        # with dynamic shapes, which inductor (torch 2.13) fails to compile for the CNN's
        # train-mode BatchNorm ("Cannot convert expression to float").
        torch._dynamo.reset()
        _warm_up_compiler()
        run["jit"] = list(run["fm"])
        # static shapes, as torch's compiled step below: the CNN's fm.jit step was once
        # recompiled at its second call with the same shapes (a guard failing on "'NoneType'
        # object has no attribute 'size'"), and dynamo's recompile went to dynamic shapes,
        # which inductor failed to compile for the train-mode BatchNorm
        fns["fm.jit"] = advance("jit", fm.jit(step, dynamic=False))
        fns["torch compiled"] = torch_step(torch.compile(module))
        fns["torch compiled step"] = _torch_compiled_step(problem, x, y)
        names = ("fm.jit", "torch compiled", "torch compiled step")
        times = _compile_times(fns, names, cpu)
    return fns, times


def rows_for(
    problem: Problem, timings, times: dict[str, float], threads: int, cpu: bool = False
) -> list[str]:
    what = f"{problem.name}, CPU, {threads} thread{'s' if threads > 1 else ''}"
    rows = [row(what, timings, "torch eager")]
    target = TARGETS.get(problem.name)
    rows.append(
        row(
            what,
            timings,
            "fm eager",
            ratio_of=("fm eager", "torch eager"),
            target=f"<= {target}" if target else "",
        )
    )
    rows.append(row(what, timings, "torch grad"))
    rows.append(row(what, timings, "fm grad", ratio_of=("fm grad", "torch grad")))
    rows.append(row(what, timings, "torch.func grad", ratio_of=("torch.func grad", "torch grad")))
    rows.append(row(what, timings, "fm optimiser", ratio_of=("fm optimiser", "fm eager")))
    rows.append(row(what, timings, "torch optimiser", ratio_of=("torch optimiser", "torch eager")))
    if times:
        rows.append(row(what, timings, "torch compiled"))
        rows.append(
            row(
                what,
                timings,
                "fm.jit",
                ratio_of=("fm.jit", "torch compiled"),
                target="<= 0.8",
            )
        )
        rows.append(row(what, timings, "torch compiled step"))
        rows.append(row(what, timings, "fm.jit", ratio_of=("fm.jit", "torch compiled step")))
        clock = "CPU time" if cpu else "wall clock"
        for other in ("torch compiled", "torch compiled step"):
            ratio = times["fm.jit"] / times[other]
            rows.append(
                f"| {what} | compile time ({clock}): fm.jit {times['fm.jit']:.1f} s, {other} "
                f"{times[other]:.1f} s | | {ratio:.2f}x | < 2x | "
                f"{'yes' if ratio < 2 else 'no'} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        models=(str, ",".join(MODELS), "comma-separated models"),
        no_compile=(int, 0, "1: eager contenders only"),
    )
    repeats = args.repeats or (3 if args.quick else 15)
    if args.cpu_time:  # every compile in this process, so its CPU time counts it all
        torch._inductor.config.compile_threads = 1
    rows = []
    for name in args.models.split(","):
        problem = build(name)
        check(problem)
        print(f"{name}: gradients equal torch's (rtol {RTOL}, atol {ATOL})", flush=True)
        fns, times = contenders(problem, compiled=not args.no_compile, cpu=args.cpu_time)
        timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.05, clock=args.clock)
        new = rows_for(problem, timings, times, args.threads, cpu=args.cpu_time)
        rows += new
        print("\n".join(new), flush=True)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
