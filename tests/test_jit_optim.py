"""fm.optim inside fm.jit: the compiled optimiser step gives the eager numbers, traces the
chain's list forms (the fused Adam step included), and maps under vmap.

Most tests compile with dynamo's ``eager`` backend (the tracing is what changed; the ops
are then torch's eager ones, so the numbers are the eager path's up to the order of
float operations); one compiles with inductor, whose generated kernels round differently.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import funcmodels as fm

pytestmark = pytest.mark.slow

fnn = fm.nn
STEPS = 3


def _problem():
    g = torch.Generator().manual_seed(0)
    spec = fnn.Sequential(fnn.Linear(6, 16), fnn.ReLU(), fnn.Linear(16, 3))
    params = fm.init(fm.key(0), spec)
    return params, torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _loss(p, x, y):
    return F.cross_entropy(fm.apply(p, x), y)


def _step_for(opt):
    def step(p, s, x, y):
        loss, g = fm.value_and_grad(_loss)(p, x, y)
        updates, s = opt.update(g, s, p)
        return fm.optim.apply_updates(p, updates), s, loss

    return step


class _Count:
    """Counts the graphs dynamo hands to the backend and their call nodes."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.calls += sum(n.op == "call_function" for n in gm.graph.nodes)
        return gm.forward


def _run(step, params, state, x, y):
    for _ in range(STEPS):
        params, state, loss = step(params, state, x, y)
    return params, state, loss


OPTIMISERS = {
    # scale_by_adam, add_decayed_weights and the learning rate: the fused Adam step
    "adamw": lambda: fm.optim.adamw(1e-2, weight_decay=0.1),
    # a schedule's value is a tensor under compile: multiplied, not folded
    "adamw, scheduled": lambda: fm.optim.adamw(
        fm.optim.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10), weight_decay=0.1
    ),
    # pieces without a fused form, and a mask (its trees have holes)
    "clip, masked decay": lambda: fm.optim.chain(
        fm.optim.clip_by_global_norm(0.5),
        fm.optim.adamw(
            1e-2, weight_decay=0.1, mask=lambda p: fm.tree.map(lambda t: t.dim() > 1, p)
        ),
    ),
    "sgd, nesterov": lambda: fm.optim.sgd(0.1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_a_compiled_step_gives_the_eager_numbers_in_one_graph(name):
    params, x, y = _problem()
    opt = OPTIMISERS[name]()
    step = _step_for(opt)
    count = _Count()
    got = _run(fm.jit(step, backend=count), params, opt.init(params), x, y)
    want = _run(step, params, opt.init(params), x, y)
    assert count.graphs == 1
    # the eager ops on the traced path: only the order of float operations may differ
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_compiled_adamw_step_with_inductor_gives_the_eager_numbers():
    params, x, y = _problem()
    opt = fm.optim.adamw(1e-2, weight_decay=0.1)
    step = _step_for(opt)
    got = _run(fm.jit(step), params, opt.init(params), x, y)
    want = _run(step, params, opt.init(params), x, y)
    # inductor's kernels fuse and reorder: a few float32 roundings per step
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_chain_built_outside_the_step_traces_the_fused_adam_step():
    # Built inside the compiled function, the chain cannot read its pieces' list forms and
    # runs each piece's update; built outside, it traces the fused step, which folds the
    # learning rate into Adam's denominator: fewer ops in the graph, the same numbers.
    params, x, y = _problem()
    outside = fm.optim.adamw(1e-2, weight_decay=0.1)
    state = outside.init(params)

    def built_inside(p, s, x, y):
        return _step_for(fm.optim.adamw(1e-2, weight_decay=0.1))(p, s, x, y)

    fused, plain = _Count(), _Count()
    got = fm.jit(_step_for(outside), backend=fused)(params, state, x, y)
    want = fm.jit(built_inside, backend=plain)(params, state, x, y)
    assert fused.graphs == plain.graphs == 1
    assert fused.calls < plain.calls, (fused.calls, plain.calls)
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_vmap_of_an_optimiser_step_compiles_and_matches_a_loop():
    # An ensemble: each member's step under vmap (the per-leaf path: the multi-tensor
    # kernels have no batching rule), compiled as one graph.
    spec = fnn.Sequential(fnn.Linear(6, 8), fnn.Tanh(), fnn.Linear(8, 3))
    members = [fm.init(fm.key(i), spec) for i in (1, 2)]
    stacked = fm.tree.stack(members)
    _, x, y = _problem()
    opt = fm.optim.adamw(1e-2, weight_decay=0.1)
    step = _step_for(opt)
    batched = vmap(step, in_dims=(0, 0, None, None))
    count = _Count()
    got, got_state, _ = fm.jit(batched, backend=count)(stacked, vmap(opt.init)(stacked), x, y)
    assert count.graphs == 1
    for i, p in enumerate(members):
        want, _, _ = step(p, opt.init(p), x, y)
        for a, b in zip(fm.tree.leaves(fm.tree.index(got, i)), fm.tree.leaves(want), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
