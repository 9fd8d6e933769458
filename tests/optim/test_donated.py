"""fm.optim.donated_adamw: bitwise torch.optim.AdamW(fused=True), in place, eager only."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels import optim


def mlp_params():
    spec = fm.nn.Sequential(fm.nn.Linear(5, 16), fm.nn.Tanh(), fm.nn.Linear(16, 3))
    return fm.init(fm.key(0), spec)


def grads_of(params, seed):
    g = torch.Generator().manual_seed(seed)
    return fm.tree.map(lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype), params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheduled", [False, True])
def test_equals_torch_fused_adamw_bitwise(dtype, scheduled):
    params = fm.tree.map(lambda t: t.to(dtype), mlp_params())
    start = {k: v.clone() for k, v in params.flat().items()}
    sched = optim.warmup_cosine_decay_schedule(0.0, 0.05, 2, 6)
    opt = optim.donated_adamw(sched if scheduled else 0.01, 0.8, 0.95, 1e-6, weight_decay=0.1)
    state = opt.init(params)
    leaves = [torch.nn.Parameter(v.clone()) for v in start.values()]
    ref = torch.optim.AdamW(
        leaves, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, fused=True
    )
    for step in range(6):
        g = grads_of(params, step)
        before = {k: v.clone() for k, v in g.flat().items()}
        params, state = opt.step(g, state, params)
        assert all(torch.equal(v, before[k]) for k, v in g.flat().items())  # only read
        if scheduled:  # torch's learning rate set to the schedule's value, as a number
            ref.param_groups[0]["lr"] = float(sched(step))
        for p, t in zip(leaves, g.flat().values(), strict=True):
            p.grad = t.clone()
        ref.step()
        for (k, v), p in zip(params.flat().items(), leaves, strict=True):
            assert torch.equal(v, p.detach()), (step, k)
    assert float(state.step) == 6.0


def test_writes_into_the_params_and_agrees_with_the_functional_adamw():
    params = mlp_params()
    kept = list(params.flat().values())
    functional, fstate = params, optim.adamw(0.01, weight_decay=0.1).init(params)
    donor = fm.tree.map(torch.clone, params)
    opt = optim.donated_adamw(0.01, weight_decay=0.1)
    state = opt.init(donor)
    adamw = optim.adamw(0.01, weight_decay=0.1)
    for step in range(4):
        g = grads_of(params, step)
        out, state = opt.step(g, state, donor)
        assert out is donor
        updates, fstate = adamw.update(g, fstate, functional)
        functional = optim.apply_updates(functional, updates)
    assert all(a is b for a, b in zip(kept, params.flat().values(), strict=True))
    for k, v in functional.flat().items():
        torch.testing.assert_close(donor[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_refuses_torch_func_transforms_and_mismatched_inputs():
    params = mlp_params()
    opt = optim.donated_adamw(0.01)
    state = opt.init(params)
    g = grads_of(params, 0)
    with pytest.raises(ValueError, match=r"donated_adamw: writes into the params .*vmap"):
        vmap(lambda p, gg: opt.step(gg, state, p)[0], randomness="same")(
            *pytree.tree_map(lambda t: t[None], (params, g))
        )
    with pytest.raises(ValueError, match=r"eager mode only"):
        grad(lambda p: opt.step(g, state, p)[0]["0.weight"].sum())(params)
    with pytest.raises(TypeError, match=r"needs gradients of the params' dtype"):
        opt.step(fm.tree.map(lambda t: t.double(), g), state, params)
    with pytest.raises(TypeError, match=r"expected the DonatedAdamWState"):
        opt.step(g, optim.adamw(0.01).init(params), params)
    with pytest.raises(ValueError, match=r"grads do not have the structure of the params"):
        opt.step(g.flat(), state, params)
