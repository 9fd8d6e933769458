"""The Stack's direct path in eager mode: ReLU in place on a Linear's batched product, and a
chain of Linears and ReLUs as one autograd node, against the same path out of place.

References: the same Stack under a ``torch.func`` transform, where the direct path runs
layer by layer with nothing in place (the kernels are the same, so values agree bit for
bit: ``torch.equal``), and for second derivatives and forward-mode AD ``torch.func``'s
own, within ``atol=1e-6, rtol=1e-5`` (another order of the same sums).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, jvp

import funcmodels as fm
from funcmodels._tap import tapping
from funcmodels.nn import _stack_mlp

nn = fm.nn
TOL = dict(atol=1e-6, rtol=1e-5)


def linear_relu(*sizes, end_relu=False, bias=True):
    layers = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*(layers if end_relu else layers[:-1]))


MEMBERS = {
    "mlp": (linear_relu(4, 8, 8, 3), None, True),
    "relu-last": (linear_relu(4, 8, 3, end_relu=True), None, True),
    "no-bias": (linear_relu(4, 8, 3, bias=False), None, True),
    "members-first": (linear_relu(4, 8, 3), 0, True),
    "linear-linear": (nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), None, True),
    # chains the one node does not take: ReLU in place after a Linear only, or nowhere
    "relu-relu": (
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.ReLU(), nn.Linear(8, 3)),
        None,
        False,
    ),
    "tanh-relu": (
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.ReLU(), nn.Linear(8, 3)),
        None,
        False,
    ),
    "identity-relu": (nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(4, 3)), 0, False),
    "gelu": (nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU()), None, False),
}


def setup(name):
    member, in_axis, _ = MEMBERS[name]
    spec = nn.Stack(member, 5, in_axis=in_axis)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (6, 4) if in_axis is None else (5, 6, 4))
    return spec, params, x


def count_nodes(monkeypatch):
    calls = []
    real = _stack_mlp.StackedMLP.apply
    monkeypatch.setattr(
        _stack_mlp.StackedMLP, "apply", lambda *a: calls.append(1) or real(*a), raising=True
    )
    return calls


@pytest.mark.parametrize("loss", ["square", "sum"])
@pytest.mark.parametrize("name", list(MEMBERS))
def test_gradients_equal_the_out_of_place_path_bitwise(name, loss, monkeypatch):
    """``'sum'`` hands the last layer an expanded gradient that is not the node's own:
    masking it in place would fail or change it."""
    spec, params, x = setup(name)
    x_before = x.clone()

    def f(p, x):
        out = fm.apply(p, x)
        return out.square().sum() if loss == "square" else out.sum()

    nodes = count_nodes(monkeypatch)
    got = fm.grad(f, argnums=(0, 1))(params, x)
    assert bool(nodes) == MEMBERS[name][2]
    want = grad(f, argnums=(0, 1))(params, x)  # a transform: out of place
    assert len(nodes) == MEMBERS[name][2]  # not under the transform
    for k in want[0].flat():
        assert torch.equal(got[0][k], want[0][k]), k
    assert torch.equal(got[1], want[1])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_outputs_equal_the_out_of_place_path_bitwise(name):
    spec, params, x = setup(name)
    want = grad(lambda p: (fm.apply(p, x).sum(), fm.apply(p, x)), has_aux=True)(params)[1]
    with torch.no_grad():
        assert torch.equal(fm.apply(params, x), want)
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    assert torch.equal(fm.apply(leaves, x).detach(), want)


def test_a_tap_sees_the_relu_input_before_the_relu():
    """The ReLU that opens the member reads the Stack's input, which the tap holds (the
    outer Linear's output, with negative entries): it must still hold the values the tap
    saw when the call is over, in a forward and in a gradient step."""
    member = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))
    model = nn.Sequential(nn.Linear(4, 8), nn.Stack(member, 5, in_axis=0))
    params = fm.init(fm.key(0), model)
    x = fm.random.normal(fm.key(1), (5, 6, 4))
    seen = []

    def tap(ctx, x_in, out):
        seen.append((ctx.path, out, out.clone()))
        return out

    def step():
        return fm.grad(lambda p: fm.apply(p, x).sum())(params)

    for run in (lambda: fm.apply(params, x), step):
        seen.clear()
        with tapping(tap):
            run()
        held = {path: (out, copy) for path, out, copy in seen}
        assert (held["0"][1] < 0).any()  # a ReLU in place would change these
        for path, (out, copy) in held.items():
            assert torch.equal(out, copy), path


def test_a_gradient_of_a_gradient_through_the_node(monkeypatch):
    spec, params, x = setup("relu-last")
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)

    def penalty(p):
        out = fm.apply(p, x).square().sum()
        (g,) = torch.autograd.grad(out, [p["0.weight"]], create_graph=True)
        return g.square().sum()

    nodes = count_nodes(monkeypatch)
    got = torch.autograd.grad(penalty(leaves), leaves["2.weight"])[0]
    assert nodes

    def penalty_func(p):
        g = grad(lambda q: fm.apply(q, x).square().sum())(p)["0.weight"]
        return g.square().sum()

    want = grad(penalty_func)(params)["2.weight"]
    torch.testing.assert_close(got, want, **TOL)


def test_forward_mode_ad_takes_the_op_by_op_path():
    spec, params, x = setup("mlp")
    tangent = fm.random.normal(fm.key(2), x.shape)
    with fwAD.dual_level():
        with torch.enable_grad():
            dual = fwAD.make_dual(x, tangent)
            got = fwAD.unpack_dual(fm.apply(params, dual)).tangent
    want = jvp(lambda x: fm.apply(params, x), (x,), (tangent,))[1]
    torch.testing.assert_close(got, want, **TOL)


def test_a_second_backward_of_a_retained_graph_gives_the_same_gradients(monkeypatch):
    spec, params, x = setup("mlp")
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    nodes = count_nodes(monkeypatch)
    flat = [leaves[k] for k in leaves.flat()]
    loss = fm.apply(leaves, x).square().sum()
    assert nodes
    first = torch.autograd.grad(loss, flat, retain_graph=True)
    second = torch.autograd.grad(loss, flat)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_autocast_takes_the_op_by_op_path():
    """Under autocast each op casts on its own (the node's backward would not mirror
    those casts): the gradients are the op-by-op path's, bit for bit."""
    spec, params, x = setup("mlp")

    def f(p):
        return fm.apply(p, x).float().square().sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fm.grad(f)(params)
        want = grad(f)(params)
    for k in want.flat():
        assert torch.equal(got[k], want[k]), k


def test_the_node_under_remat_recomputes_to_the_same_gradients(monkeypatch):
    member = MEMBERS["mlp"][0]
    spec = nn.Sequential(nn.Remat(nn.Stack(member, 5)))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (6, 4))

    def f(p):
        return fm.apply(p, x).square().sum()

    nodes = count_nodes(monkeypatch)
    got = fm.grad(f)(params)
    assert len(nodes) == 2  # the forward, and its recomputation in the backward
    want = grad(f)(params)
    for k in want.flat():
        assert torch.equal(got[k], want[k]), k
