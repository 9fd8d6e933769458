"""One suite over every optimiser (as optax's shared ``_common_test.py``): the state keeps
its shapes and dtypes, params keep theirs (bfloat16 and 0-dim leaves included), float32
params train with bfloat16 gradients, the multi-tensor path and the leaf-by-leaf path
give the same bits, ``vmap`` over an ensemble equals a loop over its members, and a
``torch.compile``d step equals the eager one.

Tolerances: bitwise where the same ops run in the same order (the multi-tensor kernels
against leaf-by-leaf ops on the CPU; bfloat16 gradients cast to float32 first against
float32 gradients for every optimiser that keeps float32 state); ``rtol 1e-5`` for vmap
and compile (batched and fused kernels round differently); bfloat16's own ``4e-3`` where
a stateless optimiser scales bfloat16 gradients in bfloat16 (optax's rule too).
"""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch.func import vmap

from funcmodels import optim


def matrices(params):
    return pytree.tree_map(lambda p: p.dim() > 1, params)


def sched():
    return optim.warmup_cosine_decay_schedule(0.0, 0.02, 2, 8)


OPTIMISERS = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd-momentum": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optim.adam(1e-2),
    "adam-eps-root": lambda: optim.adam(sched(), eps_root=1e-8, nesterov=True),
    "adamw": lambda: optim.adamw(1e-2, weight_decay=0.1, mask=matrices),
    "nadamw": lambda: optim.nadamw(1e-2),
    "lamb": lambda: optim.lamb(1e-2, weight_decay=0.01),
    "lion": lambda: optim.lion(1e-3),
    "amsgrad": lambda: optim.amsgrad(1e-2),
    "adamaxw": lambda: optim.adamaxw(1e-2),
    "rmsprop": lambda: optim.rmsprop(1e-2, momentum=0.9),
    "rmsprop-centered": lambda: optim.rmsprop(1e-2, centered=True),
    "rmsprop-bias": lambda: optim.rmsprop(1e-2, eps_in_sqrt=False, bias_correction=True),
    "adagrad": lambda: optim.adagrad(0.1),
    "sign_sgd": lambda: optim.sign_sgd(0.01),
    "signum": lambda: optim.signum(0.01),
    "chain": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(sched())),
    "inject": lambda: optim.inject_hyperparams(optim.adamw)(sched(), weight_decay=0.1),
    "multi_transform": lambda: optim.multi_transform(
        {"a": optim.adam(1e-2), "b": optim.sgd(0.1, 0.9)}, {"w": "a", "b": "b", "s": "a"}
    ),
    "MultiSteps": lambda: optim.MultiSteps(optim.adam(1e-2), 2, accumulator_dtype=None),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.lion(1e-3), 2),
    "ema-trace": lambda: optim.chain(optim.ema(0.9), optim.trace(0.5), optim.scale(-0.1)),
}
# optimisers whose first piece works on bfloat16 gradients in bfloat16 (no float32 state:
# a plain scale, a sign, the global norm of a clip)
STATELESS = {"sgd", "sign_sgd", "chain"}


def params_of(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g).to(dtype),
        "b": torch.randn(3, generator=g).to(dtype),
        "s": torch.randn((), generator=g).to(dtype),
    }


def leaves(tree):
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def run(opt, params, grads):
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
    return params, state


def grads_of(dtype=torch.float32, steps=3):
    return [params_of(dtype, seed=10 + i) for i in range(steps)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_state_and_params_keep_their_shapes_and_dtypes(name, dtype):
    opt = OPTIMISERS[name]()
    params = params_of(dtype)
    state = opt.init(params)
    shapes = [(t.shape, t.dtype) for t in leaves(state)]
    structure = pytree.tree_structure(state)
    new_params, new_state = run(opt, params, grads_of(dtype))
    assert pytree.tree_structure(new_state) == structure
    assert [(t.shape, t.dtype) for t in leaves(new_state)] == shapes
    assert [(t.shape, t.dtype) for t in leaves(new_params)] == [
        (t.shape, t.dtype) for t in leaves(params)
    ]
    updates, _ = opt.update(grads_of(dtype)[0], state, params)
    assert {t.dtype for t in leaves(updates)} == {dtype}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_float32_params_train_with_bfloat16_gradients(name):
    opt = OPTIMISERS[name]()
    params = params_of()
    low = grads_of(torch.bfloat16)
    got, state = run(opt, params, low)
    want, want_state = run(opt, params, [pytree.tree_map(lambda t: t.float(), g) for g in low])
    assert [t.dtype for t in leaves(state)] == [t.dtype for t in leaves(want_state)]
    assert {t.dtype for t in leaves(got)} == {torch.float32}
    for k in want:
        if name in STATELESS:
            torch.testing.assert_close(got[k], want[k], rtol=4e-3, atol=4e-3 * 0.1)
        else:
            assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_multi_tensor_kernels_and_leaf_by_leaf_ops_give_the_same_bits(name):
    # Gradients autograd records through take the leaf-by-leaf path (the multi-tensor
    # kernels are for plain tensors), with the same ops in the same order.
    opt = OPTIMISERS[name]()
    params = params_of()
    fast, _ = run(opt, params, grads_of())
    with torch.enable_grad():
        recorded = [pytree.tree_map(lambda t: t.clone().requires_grad_(), g) for g in grads_of()]
        slow, _ = run(opt, params, recorded)
    for k in fast:
        assert torch.equal(fast[k], slow[k].detach()), k


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_vmap_over_an_ensemble_equals_a_loop(name):
    opt = OPTIMISERS[name]()
    members = [params_of(seed=i) for i in range(3)]
    grads = [[params_of(seed=10 * s + i) for i in range(3)] for s in range(3)]

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    stacked = pytree.tree_map(lambda *t: torch.stack(t), *members)
    states = vmap(opt.init)(stacked)
    for gs in grads:
        stacked, states = vmap(step)(
            stacked, states, pytree.tree_map(lambda *t: torch.stack(t), *gs)
        )
    for i, p in enumerate(members):
        s = opt.init(p)
        for gs in grads:
            p, s = step(p, s, gs[i])
        for k in p:
            torch.testing.assert_close(stacked[k][i], p[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_a_compiled_step_equals_the_eager_step(name):
    torch._dynamo.reset()
    opt = OPTIMISERS[name]()

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    compiled = torch.compile(step, fullgraph=True)
    params = params_of()
    eager, state = params, opt.init(params)
    cparams, cstate = params, opt.init(params)
    for g in grads_of():
        eager, state = step(eager, state, g)
        cparams, cstate = compiled(cparams, cstate, g)
    for k in eager:
        torch.testing.assert_close(cparams[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    torch._dynamo.reset()
