"""fm.nn.Repeat: members in sequence, Stack's tensor layout, transforms, compile, bridges.

References: a plain Python loop over the members, member ``i`` built with
``fm.init(fm.fold_in(key, i), spec)`` and run with ``fm.run`` (train-mode key
``fm.fold_in(key, i)``), and ``fm.nn.Stack``'s params for the same key. In eager mode
Repeat runs the same ops as the loop, so outputs, new state and gradients are compared
bit for bit; compiled code (inductor fuses differently) within ``atol=1e-5, rtol=1e-4``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._context import name_hash
from tests.helpers import assert_per_sample_grads_match

nn = fm.nn
CLOSE = dict(atol=1e-5, rtol=1e-4)


def block():
    return nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6), nn.Dropout(0.3))


def bn_block():
    return nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2))


def loop(key, spec, n, x, *, state=False, step_key=None):
    """The reference: members built one by one and run in a Python loop."""
    states = []
    for i in range(n):
        if state:
            p, s = fm.init_with_state(fm.fold_in(key, i), spec)
        else:
            p, s = fm.init(fm.fold_in(key, i), spec), None
        k = None if step_key is None else fm.fold_in(step_key, i)
        out = fm.run(p, x, state=s, key=k, train=step_key is not None)
        x = out.out
        states.append(out.state)
    return x, states


def test_params_are_stacks_params_and_member_i_is_init_of_the_key_with_i_folded_in():
    key = fm.key(3)
    params = fm.init(key, nn.Repeat(block(), 4))
    stack = fm.init(key, nn.Stack(block(), 4))
    assert {k: tuple(t.shape) for k, t in params.flat().items()} == {
        "0.weight": (4, 6, 6),
        "0.bias": (4, 6),
        "2.weight": (4, 6),
        "2.bias": (4, 6),
    }
    assert list(params.flat()) == list(stack.flat())
    assert all(torch.equal(params[k], stack[k]) for k in stack.flat())
    for i in range(4):
        member = fm.init(fm.fold_in(key, i), block())
        assert all(torch.equal(params[k][i], t) for k, t in member.flat().items())
    # Inside a model the Repeat's key is its parent's with its name folded in.
    outer = fm.init(key, nn.Sequential({"blocks": nn.Repeat(block(), 4)}))
    inner = fm.init(fm.fold_in(key, name_hash("blocks")), nn.Repeat(block(), 4))
    assert all(torch.equal(outer["blocks." + k], t) for k, t in inner.flat().items())


def test_stack_params_and_repeat_params_convert_by_changing_the_spec():
    stack = fm.init(fm.key(0), nn.Stack(block(), 3))
    repeat = fm.Params(nn.Repeat(block(), 3), stack.flat())
    x = fm.random.normal(fm.key(1), (5, 6))
    want, _ = loop(fm.key(0), block(), 3, x)
    assert torch.equal(fm.apply(repeat, x), want)
    back = fm.Params(nn.Stack(block(), 3), repeat.flat())
    assert all(torch.equal(back[k], t) for k, t in stack.flat().items())


def test_eval_and_train_equal_a_loop_over_the_members_bitwise():
    spec = nn.Repeat(block(), 5)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 6))
    assert torch.equal(fm.apply(params, x), loop(fm.key(0), block(), 5, x)[0])
    got = fm.apply(params, x, key=fm.key(7), train=True)
    want, _ = loop(fm.key(0), block(), 5, x, step_key=fm.key(7))
    assert torch.equal(got, want)
    # member i draws with the Repeat's key with i folded in: another key, another output
    assert not torch.equal(got, fm.apply(params, x, key=fm.key(8), train=True))
    # a single example is accepted where the member accepts one
    assert torch.equal(fm.apply(params, x[1]), fm.apply(params, x)[1])


def test_batchnorm_state_is_stacked_and_updated_per_member():
    n, key = 3, fm.key(0)
    spec = nn.Repeat(bn_block(), n)
    params, state = fm.init_with_state(key, spec)
    x = fm.random.normal(fm.key(1), (8, 6))
    out = fm.run(params, x, state=state, key=fm.key(5), train=True)
    want, states = loop(key, bn_block(), n, x, state=True, step_key=fm.key(5))
    assert torch.equal(out.out, want)
    assert out.state["1.num_batches_tracked"].tolist() == [1, 1, 1]
    for i, s in enumerate(states):
        for k, t in s.flat().items():
            assert torch.equal(out.state[k][i], t), (i, k)
    # eval mode reads each member's running statistics
    evaluated = fm.apply(params, x, state=out.state)
    h = x
    for i in range(n):
        p = fm.Params(bn_block(), {k: t[i] for k, t in params.flat().items()})
        s = fm.State(bn_block(), {k: t[i] for k, t in out.state.flat().items()})
        h = fm.apply(p, h, state=s)
    assert torch.equal(evaluated, h)


@dataclass(frozen=True)
class _SowScaled(fm.Spec):
    """Sows the mean of its input; returns the input times a per-member weight."""

    def param_shapes(self):
        return {"w": ()}

    def init_params(self, key, *, dtype, device):
        return {"w": fm.random.uniform(key, (), dtype, device, minval=0.5, maxval=1.5)}

    def forward(self, ctx, x):
        ctx.sow("mean", x.mean())
        return x * ctx.param("w")

    def out_shape(self, in_shape, path="", record=None):
        return in_shape


def test_sown_values_gain_the_leading_axis():
    spec = nn.Sequential({"deep": nn.Repeat(nn.Sequential(_SowScaled(), nn.Identity()), 3)})
    params = fm.init(fm.key(0), spec)
    x = torch.tensor([[1.0, 3.0]])
    out = fm.run(params, x)
    w = params["deep.0.w"]
    assert list(out.aux) == ["deep.0"]
    means = out.aux["deep.0"]["mean"]
    assert means.shape == (3,)
    # member i sows the mean of what member i - 1 gave it
    torch.testing.assert_close(means, torch.stack([2.0 * w[:i].prod() for i in range(3)]))


def test_per_sample_gradients_equal_a_loop_of_single_example_gradients():
    params = fm.init(fm.key(0), nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), 4))
    x = fm.random.normal(fm.key(1), (5, 6))
    y = fm.random.normal(fm.key(2), (5, 6))
    assert_per_sample_grads_match(params, x, y)


def test_gradients_equal_those_of_separate_blocks_bitwise():
    n = 3
    repeat = fm.init(fm.key(0), nn.Repeat(block(), n))
    flat = fm.to_state_dict(repeat)
    blocks, _ = fm.from_state_dict(
        nn.Sequential(*[block()] * n),
        {f"{i}.{k}": t[i] for i in range(n) for k, t in flat.items()},
    )
    x = fm.random.normal(fm.key(1), (4, 6))

    def loss(p):
        return fm.apply(p, x, key=fm.key(2), train=True).pow(2).sum()

    # the separate blocks' keys: the Sequential folds each child's name into its key,
    # where the Repeat folds in the index, so give each its member's key
    def loss_blocks(p):
        h = x
        for i in range(n):
            member = fm.Params(block(), {k: p[f"{i}.{k}"] for k in flat})
            h = fm.apply(member, h, key=fm.fold_in(fm.key(2), i), train=True)
        return h.pow(2).sum()

    got = fm.to_state_dict(grad(loss)(repeat))
    want = fm.to_state_dict(grad(loss_blocks)(blocks))
    for k, g in got.items():
        for i in range(n):
            assert torch.equal(g[i], want[f"{i}.{k}"]), (k, i)


def test_unstacked_state_dict_of_an_nn_sequential_of_members_loads():
    twins = torch.nn.Sequential(
        *(
            torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh())
            for _ in range(3)
        )
    ).eval()
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh()), 3)
    params, state = fm.from_state_dict(spec, twins.state_dict())
    x = fm.random.normal(fm.key(1), (4, 6))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, x, state=state), twins(x), **CLOSE)


def test_configs_files_summary_and_the_torch_bridge(tmp_path):
    spec = nn.Sequential({"blocks": nn.Repeat(bn_block(), 3, remat=True), "head": nn.Linear(6, 2)})
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 6))
    want = fm.apply(params, x, state=state)
    assert fm.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    fm.save(tmp_path / "deep.safetensors", params, state)
    p2, s2 = fm.load(tmp_path / "deep.safetensors")
    assert p2.spec == spec and torch.equal(fm.apply(p2, x, state=s2), want)
    table = fm.summary(params, (6,))
    row = {r.path: r for r in table.rows}["blocks"]
    one = fm.summary(bn_block())
    assert (row.type, row.params, row.state) == ("Repeat", 3 * one.trainable, 3 * one.state)
    assert row.out_shape == (6,)
    module = transforms.to_module(params, state)
    assert type(module.blocks).__name__ == "RepeatModule"
    assert list(module.state_dict()) == list(fm.to_state_dict(params, state))
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, **CLOSE)
    back_p, back_s = transforms.from_module(module)
    assert back_p.spec == spec
    assert all(torch.equal(back_p[k], t) for k, t in params.flat().items())
    assert all(torch.equal(back_s[k], t) for k, t in state.flat().items())


def test_the_torch_module_trains_as_the_functional_model():
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh()), 3)
    for remat in (False, True):
        spec = nn.Repeat(spec.spec, 3, remat=remat)
        params, state = fm.init_with_state(fm.key(0), spec)
        x = fm.random.normal(fm.key(1), (8, 6))
        module = transforms.to_module(params, state).train()
        got = module(x)
        out = fm.run(params, x, state=state, train=True)
        torch.testing.assert_close(got, out.out, **CLOSE)
        for k, t in out.state.flat().items():
            torch.testing.assert_close(module.state_dict()[k], t, atol=1e-6, rtol=1e-5)
        got.pow(2).sum().backward()
        leaves = {k: t.detach().requires_grad_() for k, t in params.flat().items()}
        loss = fm.apply(fm.Params(spec, leaves), x, state=state, train=True).pow(2).sum()
        for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True):
            torch.testing.assert_close(module.get_parameter(k).grad, g, **CLOSE)


def test_shape_inference_fills_the_member_and_refuses_a_shape_changing_member():
    spec = nn.Repeat(nn.Sequential(nn.Linear(out_features=5), nn.ReLU()), 2)
    with pytest.raises(
        ValueError,
        match=r"layer '<root>' \(Repeat\): its members run in sequence, so a member's output "
        r"must have its input's shape, but member 0 \(Sequential\) maps one example of shape "
        r"\(7,\) to \(5,\)",
    ):
        fm.init(fm.key(0), spec, input_shape=(7,))
    params = fm.init(fm.key(0), spec, input_shape=(5,))
    assert params["0.weight"].shape == (2, 5, 5)
    assert fm.shapes(spec, (5,))[""] == (5,)


def test_a_member_whose_output_shape_differs_is_a_clear_error_at_apply():
    spec = nn.Sequential({"stem": nn.Identity(), "blocks": nn.Repeat(nn.Linear(6, 3), 2)})
    params = fm.init(fm.key(0), spec)
    with pytest.raises(
        ValueError,
        match=r"layer 'blocks' \(Repeat\): its members run in sequence, so a member's output "
        r"must fit its input, but member 0 \(Linear\): it maps an input of shape \(4, 6\) "
        r"\(torch.float32\) to an output of shape \(4, 3\)",
    ):
        fm.apply(params, torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"layer 'blocks' \(Repeat\): .* the structure"):
        fm.apply(
            fm.init(fm.key(0), nn.Sequential({"blocks": nn.Repeat(nn.LSTM(6, 6), 2)})),
            torch.zeros(3, 2, 6),
        )


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((nn.Linear(2, 2), 0), ValueError, "Repeat: n must be positive, got 0"),
        ((nn.Linear(2, 2), 2.0), TypeError, "Repeat: n must be an int"),
        (("linear", 2), TypeError, "Repeat: spec must be a layer spec .* got str"),
        ((nn.Linear(2, 2), 2, 1), TypeError, "Repeat: remat must be a bool"),
    ],
)
def test_bad_arguments(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        nn.Repeat(*args)


def _ops_traced(gm: torch.fx.GraphModule, target) -> int:
    """Calls of ``target`` in a dynamo graph and the subgraphs of its higher-order ops."""
    count = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)
    return count + sum(
        _ops_traced(m, target)
        for _, m in gm.named_children()
        if isinstance(m, torch.fx.GraphModule)
    )


@pytest.mark.slow
def test_compiled_the_member_is_traced_once_whatever_the_depth():
    import torch._dynamo

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = fm.random.normal(fm.key(1), (4, 6))
    # from 3: a region called once (n = 2) is inlined by dynamo (inline_single_use_invoke_subgraph)
    for n in (3, 8):
        torch._dynamo.reset()
        graphs.clear()
        params = fm.init(fm.key(0), nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU()), n))
        out = torch.compile(lambda p, x: fm.apply(p, x), backend=backend, fullgraph=True)(params, x)
        assert len(graphs) == 1
        # member 0 inline, the others one nested compile region traced once: two members
        assert _ops_traced(graphs[0], torch._C._nn.linear) == 2, graphs[0].code
        assert torch.equal(out, fm.apply(params, x))
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    import torch._dynamo

    torch._dynamo.reset()
    spec = nn.Repeat(bn_block(), 3)
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (8, 6))

    def step(p, s):
        out = fm.run(p, x, state=s, key=fm.key(4), train=True)
        return out.out.pow(2).mean(), out.state

    def grads(fn):
        leaves = {k: t.clone().requires_grad_() for k, t in params.flat().items()}
        loss, new = fn(fm.Params(spec, leaves), state)
        return loss, new, torch.autograd.grad(loss, list(leaves.values()))

    loss, new, g = grads(step)
    c_loss, c_new, c_g = grads(torch.compile(step, fullgraph=True))
    torch.testing.assert_close(c_loss, loss, **CLOSE)
    for k, t in new.flat().items():
        torch.testing.assert_close(c_new[k], t, **CLOSE)
        assert c_new[k].dtype == t.dtype
    for a, b in zip(c_g, g, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)
    # per-sample gradients compiled (the members then run as a loop)
    small = fm.init(fm.key(0), nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), 3))

    def per_sample(p, x):
        return vmap(grad(lambda p, xi: fm.apply(p, xi).pow(2).sum()), in_dims=(None, 0))(p, x)

    want = per_sample(small, x)
    got = torch.compile(per_sample, fullgraph=True)(small, x)
    for k, t in want.flat().items():
        torch.testing.assert_close(got[k], t, **CLOSE)
    torch._dynamo.reset()
