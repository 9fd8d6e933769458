"""fm.nn.Stack: members equal separate models, BatchNorm and Dropout inside, aux, layouts.

References: a loop over the members, each built with ``fm.init(fm.fold_in(key, i), spec)``
and run with ``fm.run``. Outputs agree within ``atol=1e-6, rtol=1e-5`` (vmap turns the
members' matmuls into one batched matmul, which may sum in another order); params, state
counts and dropout masks exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._context import name_hash

nn = fm.nn
TOL = dict(atol=1e-6, rtol=1e-5)


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(3 * 3 * 3, 2),
    )


def members(key, spec, n):
    return [fm.init_with_state(fm.fold_in(key, i), spec) for i in range(n)]


def test_member_i_is_init_of_the_key_with_i_folded_in():
    spec = nn.Stack(mlp(), 5)
    key = fm.key(3)
    params = fm.init(key, spec)
    assert {k: tuple(t.shape) for k, t in params.flat().items()} == {
        "0.weight": (5, 8, 4),
        "0.bias": (5, 8),
        "2.weight": (5, 3, 8),
        "2.bias": (5, 3),
    }
    for i, (p, _) in enumerate(members(key, mlp(), 5)):
        for k, t in p.flat().items():
            assert torch.equal(params[k][i], t), (i, k)
    # Inside a model the Stack's own key is the parent key with its name folded in.
    outer = fm.init(key, nn.Sequential({"ens": spec}))
    inner = fm.init(fm.fold_in(key, name_hash("ens")), spec)
    assert all(torch.equal(outer["ens." + k], t) for k, t in inner.flat().items())


def test_shared_input_equals_a_loop_and_single_examples_work():
    spec = nn.Stack(mlp(), 4)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (6, 4))
    out = fm.apply(params, x)
    assert out.shape == (4, 6, 3)
    for i, (p, _) in enumerate(members(fm.key(0), mlp(), 4)):
        torch.testing.assert_close(out[i], fm.apply(p, x), **TOL)
    torch.testing.assert_close(fm.apply(params, x[2]), out[:, 2], **TOL)


def test_in_axis_0_gives_member_i_its_own_input():
    spec = nn.Stack(mlp(), 3, in_axis=0)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (3, 5, 4))
    out = fm.apply(params, x)
    for i, (p, _) in enumerate(members(fm.key(0), mlp(), 3)):
        torch.testing.assert_close(out[i], fm.apply(p, x[i]), **TOL)
    with pytest.raises(
        ValueError,
        match=r"layer '<root>' \(Stack\): in_axis=0: expected an input with the 3 members on "
        r"dim 0, got shape \(2, 5, 4\)",
    ):
        fm.apply(params, x[:2])


def test_batchnorm_and_dropout_inside_train_like_separate_models():
    n, key, step_key = 3, fm.key(0), fm.key(9)
    spec = nn.Stack(bn_net(), n)
    params, state = fm.init_with_state(key, spec)
    x = fm.random.normal(fm.key(1), (8, 1, 5, 5))
    out = fm.run(params, x, state=state, key=step_key, train=True)
    assert out.state["1.num_batches_tracked"].tolist() == [1] * n
    for i, (p, s) in enumerate(members(key, bn_net(), n)):
        # Member i draws from the Stack's key with i folded in.
        want = fm.run(p, x, state=s, key=fm.fold_in(step_key, i), train=True)
        torch.testing.assert_close(out.out[i], want.out, **TOL)
        for k, t in want.state.flat().items():
            torch.testing.assert_close(out.state[k][i], t, **TOL)
    # The keys matter: member 0 with member 1's key gives another output (dropout).
    p0, s0 = members(key, bn_net(), 1)[0]
    other = fm.run(p0, x, state=s0, key=fm.fold_in(step_key, 1), train=True)
    assert not torch.allclose(out.out[0], other.out)
    # Eval mode uses each member's running statistics.
    evaluated = fm.apply(params, x, state=out.state)
    for i in range(n):
        member_state = fm.State(bn_net(), {k: t[i] for k, t in out.state.flat().items()})
        member = fm.Params(bn_net(), {k: t[i] for k, t in params.flat().items()})
        torch.testing.assert_close(evaluated[i], fm.apply(member, x, state=member_state), **TOL)


@dataclass(frozen=True)
class _SowMean(fm.Spec):
    """Sows the mean of its input times a per-member weight; returns the input."""

    def param_shapes(self):
        return {"w": ()}

    def init_params(self, key, *, dtype, device):
        return {"w": fm.random.uniform(key, (), dtype, device)}

    def forward(self, ctx, x):
        ctx.sow("mean", x.mean() * ctx.param("w"))
        return x


def test_members_sow_with_a_leading_axis():
    spec = nn.Sequential({"ens": nn.Stack(nn.Sequential(_SowMean(), nn.Linear(2, 2)), 3)})
    params = fm.init(fm.key(0), spec)
    x = torch.tensor([[1.0, 3.0]])
    out = fm.run(params, x)
    assert list(out.aux) == ["ens.0"]
    torch.testing.assert_close(out.aux["ens.0"]["mean"], 2.0 * params["ens.0.w"])
    assert out.aux["ens.0"]["mean"].shape == (3,)


def test_per_sample_gradients_of_an_ensemble_equal_a_loop():
    spec = nn.Stack(mlp(), 3)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    y = fm.random.normal(fm.key(2), (5, 3))

    def loss(p, xi, yi):
        return ((fm.apply(p, xi) - yi) ** 2).sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for j in range(5):
        want = grad(loss)(params, x[j], y[j])
        for k, t in want.flat().items():
            torch.testing.assert_close(got[k][j], t, atol=1e-5, rtol=1e-4, msg=k)


def test_an_ensemble_trains_with_one_optimiser():
    spec = nn.Stack(mlp(), 4)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (16, 4))
    y = fm.random.normal(fm.key(2), (16, 3))
    opt = fm.optim.sgd(0.1)
    opt_state = opt.init(params)

    def loss(p):
        return ((fm.apply(p, x) - y) ** 2).mean(dim=(1, 2)).sum()  # members are independent

    before = loss(params)
    for _ in range(5):
        updates, opt_state = opt.update(grad(loss)(params), opt_state, params)
        params = fm.optim.apply_updates(params, updates)
    assert loss(params) < before
    # Each member took the steps it would alone (the sum decouples them).
    member = fm.Params(mlp(), {k: t[1] for k, t in fm.init(fm.key(0), spec).flat().items()})
    alone = fm.optim.sgd(0.1)
    alone_state = alone.init(member)
    for _ in range(5):
        g = grad(lambda p: ((fm.apply(p, x) - y) ** 2).mean())(member)
        updates, alone_state = alone.update(g, alone_state, member)
        member = fm.optim.apply_updates(member, updates)
    for k, t in member.flat().items():
        torch.testing.assert_close(params[k][1], t, atol=1e-6, rtol=1e-5)


def test_unstacked_state_dict_loads():
    spec = nn.Stack(bn_net(), 2)
    params, state = fm.init_with_state(fm.key(0), spec)
    # The layout of an nn.ModuleList of the members: '{i}.<name>'.
    unstacked = {
        f"{i}.{k}": t[i].clone()
        for k, t in fm.to_state_dict(params, state).items()
        for i in range(2)
    }
    assert "0.0.weight" in unstacked and "1.1.running_mean" in unstacked
    p2, s2 = fm.from_state_dict(spec, unstacked)
    for k, t in fm.to_state_dict(params, state).items():
        assert torch.equal(fm.to_state_dict(p2, s2)[k], t), k
    # An nn.ModuleList of torch twins gives that layout.
    twins = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        for _ in range(3)
    )
    p3, _ = fm.from_state_dict(nn.Stack(mlp(), 3), twins.state_dict())
    x = fm.random.normal(fm.key(1), (2, 4))
    with torch.no_grad():
        for i in range(3):
            torch.testing.assert_close(fm.apply(p3, x)[i], twins[i](x), **TOL)
    # A partial unstacked layout is reported, entry by entry.
    del unstacked["1.0.weight"]
    with pytest.raises(ValueError, match=r"missing entries: \['0.weight'"):
        fm.from_state_dict(spec, unstacked)


def test_config_name_and_summary():
    # configs, files and the torch.nn round trip of this model: tests/test_contract.py
    spec = nn.Sequential({"ens": nn.Stack(bn_net(), 3), "out": nn.Identity()})
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 1, 5, 5))
    want = fm.apply(params, x, state=state)
    assert spec.to_config()[0]["type"] == "stack"
    table = fm.summary(params, (1, 5, 5))
    row = {r.path: r for r in table.rows}["ens"]
    one = fm.summary(bn_net())
    assert (row.params, row.state) == (3 * one.trainable, 3 * one.state)
    assert table.trainable == 3 * one.trainable
    assert table.param_bytes == sum(t.numel() * t.element_size() for t in params.flat().values())
    assert row.out_shape == (3, 2)
    # the table shows the batch dim where the tensor has it: second, after the members
    assert want.shape == (3, 4, 2)
    shown = {line.split()[0]: line for line in str(table).splitlines()[2:]}
    assert "(3, N, 2)" in shown["ens"] and "(3, N, 2)" in shown["out"], str(table)


def test_shape_inference_resolves_the_member():
    spec = nn.Stack(nn.Sequential(nn.Linear(out_features=5), nn.ReLU()), 2)
    params = fm.init(fm.key(0), spec, input_shape=(7,))
    assert params["0.weight"].shape == (2, 5, 7)
    assert fm.shapes(spec, (7,))[""] == (2, 5)
    with pytest.raises(ValueError, match=r"spec.0.in_features omitted"):
        fm.init(fm.key(0), spec)
    stacked_in = nn.Stack(nn.Linear(3, 2), 4, in_axis=0)
    assert fm.shapes(stacked_in, (4, 3))[""] == (4, 2)
    with pytest.raises(ValueError, match=r"in_axis=0: expected one example of shape \(4, ...\)"):
        fm.shapes(stacked_in, (5, 3))


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((nn.Linear(2, 2), 0), ValueError, "Stack: n must be positive"),
        ((nn.Linear(2, 2), 2.0), TypeError, "Stack: n must be an int"),
        (("linear", 2), TypeError, "Stack: spec must be a layer spec"),
        ((nn.Linear(2, 2), 2, 1), ValueError, "Stack: in_axis must be None .* or 0"),
    ],
)
def test_bad_arguments(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        nn.Stack(*args)


def test_stacked_tensors_are_not_sub_layers():
    params = fm.init(fm.key(0), nn.Stack(mlp(), 2))
    assert params["0.weight"].shape == (2, 8, 4)
    with pytest.raises(KeyError, match="index a tensor with its full name, such as '0.weight'"):
        params["0"]


def test_vmap_of_init_still_makes_an_ensemble_equal_to_stack():
    # The two ways to build an ensemble give the same tensors when the keys agree.
    key = fm.key(4)
    keys = torch.stack([fm.fold_in(key, i) for i in range(3)])
    ens = vmap(fm.init, in_dims=(0, None))(keys, mlp())
    stacked = fm.init(key, nn.Stack(mlp(), 3))
    for k, t in ens.flat().items():
        assert torch.equal(stacked[k], t)


# -- the direct batched path (Linear's baddbmm) against the lifted vmap ---------------------


def _vmap_only(monkeypatch):
    """Switch the direct path off: every Stack runs its members through the lifted vmap."""
    from funcmodels.nn._activation import _Elementwise

    for cls in (fm.Spec, nn.Linear, nn.Sequential, _Elementwise):
        monkeypatch.setattr(cls, "stacked", lambda self, ctx, params, x, axis: NotImplemented)


STACKED = {
    "mlp": (nn.Stack(mlp(), 5), (6, 4)),
    "mlp-sequence": (nn.Stack(mlp(), 5), (2, 7, 4)),
    "members-first": (nn.Stack(mlp(), 5, in_axis=0), (5, 6, 4)),
    "no-bias": (nn.Stack(nn.Linear(4, 3, bias=False), 3), (6, 4)),
    "single-example": (nn.Stack(mlp(), 5), (4,)),
    "deep": (
        nn.Stack(
            nn.Sequential(
                nn.Linear(4, 8),
                nn.GELU(),
                nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
                nn.Linear(8, 2),
            ),
            4,
        ),
        (6, 4),
    ),
}


@pytest.mark.parametrize("name", list(STACKED))
def test_the_direct_path_equals_the_lifted_vmap(name, monkeypatch):
    spec, shape = STACKED[name]
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), shape)
    calls = []
    real = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = fm.apply(params, x)
    g = grad(lambda p: fm.apply(p, x).square().sum())(params)
    per = vmap(lambda xi: fm.apply(params, xi))(x[None])[0]  # under an outer transform
    monkeypatch.undo()
    assert calls or name == "no-bias"  # the direct path ran (bmm where there is no bias)
    _vmap_only(monkeypatch)
    want = fm.apply(params, x)
    want_g = grad(lambda p: fm.apply(p, x).square().sum())(params)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(per, want, **TOL)
    for n in want_g.flat():
        torch.testing.assert_close(g[n], want_g[n], **TOL, msg=n)
    # and the members are the separate models
    for i, (p_i, _) in enumerate(members(fm.key(0), spec.spec, spec.n)):
        xi = x[i] if spec.in_axis == 0 else x
        torch.testing.assert_close(out[i], fm.apply(p_i, xi), **TOL)


def test_members_without_a_direct_form_keep_the_lifted_vmap():
    """A subclass of Linear that computes otherwise (SparseLinear's mask), a parametrised
    pointwise layer (PReLU) and a layer with a dim (Softmax(dim=1)) are not taken for
    Linear or a pointwise activation."""
    sparse = transforms.SparseLinear(4, 6, sparsity=0.5)
    for member in (
        nn.Sequential(sparse, nn.ReLU()),
        nn.Sequential(nn.Linear(4, 6), nn.PReLU(6)),
        nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=1)),
    ):
        spec = nn.Stack(member, 3)
        params, state = fm.init_with_state(fm.key(0), spec)
        x = fm.random.normal(fm.key(1), (5, 4))
        out = fm.apply(params, x, state=state)
        for i, (p_i, s_i) in enumerate(members(fm.key(0), member, 3)):
            torch.testing.assert_close(out[i], fm.apply(p_i, x, state=s_i), **TOL)
