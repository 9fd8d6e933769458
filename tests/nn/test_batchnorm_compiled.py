"""BatchNorm's one-pass train mode under ``torch.compile`` (``_batchnorm.py``,
``_check.vmap_active``): compiled outside vmap, ``F.batch_norm`` moves copies of the running
statistics itself (no second ``var_mean`` over the batch); under a compiled ``vmap`` the
two-pass rule stays.

References: the eager step (whose one-pass statistics are torch.nn's bitwise), a loop of
torch.nn modules for the vmapped ensemble. Tolerances: values, gradients, params and losses
``rtol=1e-5, atol=1e-6`` (inductor's fused kernels round differently); running statistics
``rtol=1e-5, atol=1e-6`` too: compiled, the batch variance comes from inductor's Welford
reduction and is scaled by ``n / (n - 1)``, so it may move by rounding against the eager
kernel (it is no longer the two-pass ``var_mean(correction=1)`` either). Counts exact.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels.nn._check import vmap_active
from tests.helpers import randomised, torch_twin

nn = fm.nn
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def _seen(fn):
    """Run ``fn`` and return the answers ``vmap_active()`` gave inside it."""
    seen: list[bool] = []

    def inner(x):
        seen.append(vmap_active())
        return (x * 2).sum()

    fn(inner)
    return seen


def _grad_of_vmap(f):
    return grad(lambda x: vmap(f)(x).sum())


CASES = {
    "plain": (lambda f: f, False),
    "grad": (lambda f: grad(f), False),
    "grad of grad": (lambda f: grad(lambda y: grad(f)(y).sum()), False),
    "vmap": (lambda f: vmap(f), True),
    "vmap of grad": (lambda f: vmap(grad(f)), True),
    "grad of vmap": (_grad_of_vmap, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("compiled", [False, True])
def test_vmap_active_eagerly_and_at_trace_time(case, compiled):
    transform, want = CASES[case]
    x = torch.randn(2, 3)

    def run(inner):
        fn = transform(inner)
        if compiled:
            # compiled at the top (torch.compile(vmap(f))), as a compiled vmap is written
            fn = torch.compile(fn, fullgraph=True, backend="eager")
        fn(x)

    assert _seen(run) == [want]


class _Graphs:
    """A torch.compile backend that keeps dynamo's graphs and runs them as they are."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def calls(self, target) -> list[torch.fx.Node]:
        return [n for g in self.graphs for n in g.graph.nodes if n.target is target]


def _assert_eager_step(loss, params, state, value, new_state, grads) -> None:
    """A compiled step's loss, gradients and new state against the eager step's."""
    (want_value, want_state), want_grads = fm.value_and_grad(loss, has_aux=True)(params, state)
    torch.testing.assert_close(value, want_value, **CLOSE)
    for name, t in want_grads.flat().items():
        torch.testing.assert_close(grads[name], t, **CLOSE, msg=name)
    for name, t in want_state.flat().items():
        torch.testing.assert_close(new_state[name], t, **CLOSE, msg=name)


def _loss_and_state(spec_momentum=0.1):
    spec = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=spec_momentum))
    params, state = randomised(spec)
    x = fm.random.normal(fm.key(1), (6, 2, 9, 9)) * 2 + 5

    def loss(p, s):
        out = fm.run(p, x, state=s, train=True)
        return (out.out**2).mean(), out.state

    return loss, params, state


def test_compiled_gradient_step_takes_the_one_pass_form():
    loss, params, state = _loss_and_state()
    graphs = _Graphs()
    (value, new_state), grads = fm.jit(fm.value_and_grad(loss, has_aux=True), backend=graphs)(
        params, state
    )
    norms = graphs.calls(F.batch_norm)
    assert len(norms) == 1
    assert norms[0].args[1] is not None and norms[0].args[2] is not None  # running tensors in
    assert graphs.calls(torch.var_mean) == []  # no second pass over the batch
    _assert_eager_step(loss, params, state, value, new_state, grads)
    assert int(new_state["1.num_batches_tracked"]) == 8  # randomised() starts at 7


def test_compiled_with_momentum_none_keeps_the_two_pass_rule():
    # the kernel takes the momentum as a number; 1 / count would be read from a tensor
    loss, params, state = _loss_and_state(spec_momentum=None)
    # randomised() sets num_batches_tracked to 7: the factor is 1 / 8
    graphs = _Graphs()
    (_, new_state), _ = fm.jit(fm.value_and_grad(loss, has_aux=True), backend=graphs)(params, state)
    assert len(graphs.calls(torch.var_mean)) == 1
    (_, want_state), _ = fm.value_and_grad(loss, has_aux=True)(params, state)
    for name, t in want_state.flat().items():
        torch.testing.assert_close(new_state[name], t, **CLOSE, msg=name)


def _ensemble():
    # vmap over 3 groups of 8 samples: each call normalises a real batch of 8, and the
    # running statistics are shared, not batched: the case functorch's rule refuses for
    # the one-pass form ("were not batched")
    spec = nn.BatchNorm1d(3)
    params, state = randomised(spec)
    xs = fm.random.normal(fm.key(2), (3, 8, 3)) * 2 + 1
    return spec, params, state, xs


@pytest.mark.parametrize("how", ["eager", "torch.compile", "fm.jit"])
def test_vmapped_train_mode_keeps_the_two_pass_rule(how):
    spec, params, state, xs = _ensemble()

    def one(x):
        out = fm.run(params, x, state=state, train=True)
        return out.out, out.state["running_mean"], out.state["running_var"]

    graphs = _Graphs()
    fn = vmap(one)
    if how == "torch.compile":
        fn = torch.compile(fn, fullgraph=True, backend=graphs)
    elif how == "fm.jit":
        fn = fm.jit(fn, backend=graphs)
    out, mean, var = fn(xs)
    if how != "eager":
        assert len(graphs.calls(torch.var_mean)) == 1
    for i in range(3):
        module = torch_twin(torch.nn.BatchNorm1d(3), params, state).train()
        torch.testing.assert_close(out[i], module(xs[i]), **CLOSE)
        torch.testing.assert_close(mean[i], module.running_mean, **CLOSE)
        torch.testing.assert_close(var[i], module.running_var, **CLOSE)


def test_compiled_stack_of_batchnorm_members_matches_eager():
    # the Stack runs its members under the lifted vmap, with per-member statistics
    spec = nn.Stack(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 3)
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(3), (8, 3)) + 2

    def loss(p, s):
        out = fm.run(p, x, state=s, train=True)
        return (out.out**2).mean(), out.state

    (value, new_state), grads = fm.jit(fm.value_and_grad(loss, has_aux=True), backend="aot_eager")(
        params, state
    )
    _assert_eager_step(loss, params, state, value, new_state, grads)


def test_per_sample_gradients_in_eval_mode_compiled():
    spec = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    params, state = randomised(spec)
    xs = fm.random.normal(fm.key(4), (5, 3))

    def loss(p, x):
        return fm.run(p, x[None], state=state, train=False).out.sum()

    per_sample = vmap(fm.grad(loss), in_dims=(None, 0))
    got = fm.jit(per_sample)(params, xs)
    want = per_sample(params, xs)
    for name, t in want.flat().items():
        torch.testing.assert_close(got[name], t, **CLOSE, msg=name)


@pytest.mark.slow
def test_compiled_cnn_step_matches_eager_over_two_steps():
    # forward, loss, gradient and SGD with momentum in one inductor graph: params, momentum,
    # running statistics and loss after one step, loss and state after a second
    spec = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 3),
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 10, 10, generator=g) + 1, torch.randint(0, 3, (8,), generator=g)
    opt = fm.optim.sgd(0.1, momentum=0.9)

    def loss(p, s):
        out = fm.run(p, x, state=s, train=True)
        return F.cross_entropy(out.out, y), out.state

    def step(p, o, s):
        (value, s), grads = fm.value_and_grad(loss, has_aux=True)(p, s)
        updates, o = opt.update(grads, o, p)
        return fm.optim.apply_updates(p, updates), o, s, value

    compiled = fm.jit(step)
    got = compiled(params, opt.init(params), state)
    want = step(params, opt.init(params), state)
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, **CLOSE)
    got2, want2 = compiled(*got[:3]), step(*want[:3])
    torch.testing.assert_close(got2[3], want2[3], **CLOSE)
    for name, t in want2[2].flat().items():
        torch.testing.assert_close(got2[2][name], t, **CLOSE, msg=name)
