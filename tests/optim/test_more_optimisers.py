"""The rules every fm.optim optimiser keeps, for the optimisers and transforms added after
the first parity suite: leaf dtypes kept (bfloat16 gradients on float32 params give the
bits float32 gradients give), tensor hyperparameters never promote a leaf, ``vmap`` over an
ensemble equals a loop over its members, bad input is refused naming the entry, and
``scale_gradient`` scales gradients only.

Tolerances: bitwise where the same ops run on the same values; ``1e-12`` (float64) for
vmap against a loop, where batched kernels may round differently.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch.func import vmap

import funcmodels as fm
from funcmodels import optim


def _params(dtype=torch.float32, scalar=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (4, 3), "b": (3,)} | ({"s": ()} if scalar else {})
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


OPTIMISERS = {
    "radam": lambda: optim.radam(1e-2, b2=0.5),
    "adabelief": lambda: optim.adabelief(1e-2, nesterov=True),
    "yogi": lambda: optim.yogi(1e-2),
    "adan": lambda: optim.adan(1e-2, weight_decay=0.1),
    "adadelta": lambda: optim.adadelta(1.0, weight_decay=0.1),
    "novograd": lambda: optim.novograd(1e-2, weight_decay=0.1),
    "rprop": lambda: optim.rprop(1e-2),
    "lars": lambda: optim.lars(0.1, 0.01),
    "fromage": lambda: optim.fromage(0.1),
    "sm3": lambda: optim.sm3(0.1),
    "optimistic_gradient_descent": lambda: optim.optimistic_gradient_descent(0.1),
    "optimistic_adam_v2": lambda: optim.optimistic_adam_v2(1e-2),
    "adafactor": lambda: optim.adafactor(1e-2, min_dim_size_to_factor=2, momentum=0.9),
    "zero_nans-adam": lambda: optim.chain(optim.zero_nans(), optim.radam(1e-2)),
    "partition": lambda: optim.partition(
        {"a": optim.yogi(1e-2), "b": optim.adan(1e-2)},
        lambda p: {k: "a" if v.dim() > 1 else "b" for k, v in p.items()},
    ),
    "flatten": lambda: optim.flatten(optim.adabelief(1e-2)),
    "conditionally_transform": lambda: optim.conditionally_transform(
        optim.adam(1e-2), lambda step: step % 2 == 0
    ),
}
NO_SCALAR = {"sm3"}
# stateless first pieces scale bfloat16 gradients in bfloat16 (optax's rule too): only
# close to the float32 run, at bfloat16's 4e-3
STATELESS = {"fromage"}


def _grads(params, step, dtype=None):
    g = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=g).to(dtype or v.dtype) for k, v in params.items()}


def _run(opt, params, grads_dtype=None, steps=4):
    state = opt.init(params)
    for step in range(steps):
        grads = _grads(params, step, grads_dtype)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return updates, state, params


def _float_leaves(tree):
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_bfloat16_gradients_on_float32_params_give_float32_bits(name):
    params = _params(scalar=name not in NO_SCALAR)
    want = _run(OPTIMISERS[name](), params, torch.bfloat16)
    # the same bfloat16 values, cast up by the caller first
    opt = OPTIMISERS[name]()
    state, p = opt.init(params), params
    for step in range(4):
        grads = {k: v.float() for k, v in _grads(params, step, torch.bfloat16).items()}
        updates, state = opt.update(grads, state, p)
        p = optim.apply_updates(p, updates)
    for a, b in zip(_float_leaves(want), _float_leaves((updates, state, p)), strict=True):
        assert a.dtype == b.dtype, name
        if name in STATELESS:
            torch.testing.assert_close(a, b, rtol=4e-3, atol=4e-3)
        else:
            assert torch.equal(a, b), name
    assert all(u.dtype == torch.float32 for u in want[0].values())


@pytest.mark.parametrize("name", ["radam", "yogi", "adan", "novograd", "rprop", "fromage"])
def test_tensor_hyperparameters_never_promote_a_leaf(name):
    h = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    make = {
        "radam": lambda: optim.radam(h(1e-2), h(0.9), h(0.5)),
        "yogi": lambda: optim.yogi(h(1e-2), h(0.9), h(0.999), h(1e-3)),
        "adan": lambda: optim.adan(h(1e-2), h(0.98), weight_decay=h(0.1)),
        "novograd": lambda: optim.novograd(h(1e-2), h(0.9), weight_decay=h(0.1)),
        "rprop": lambda: optim.rprop(h(1e-2), h(0.5), h(1.2)),
        "fromage": lambda: optim.fromage(h(0.1)),
    }[name]
    params = _params()  # float32, with a 0-dim leaf (which a float64 0-dim would promote)
    updates, state, new = _run(make(), params)
    for leaf in _float_leaves((updates, new)):
        assert leaf.dtype == torch.float32, name
    floating = [x for x in _float_leaves(state) if x.dtype.is_floating_point]
    assert all(x.dtype == torch.float32 for x in floating), name
    assert floating or name == "fromage", name  # (fromage keeps no state)
    # and the numbers are those of plain numbers
    plain = {
        "radam": lambda: optim.radam(1e-2, 0.9, 0.5),
        "yogi": lambda: optim.yogi(1e-2, 0.9, 0.999, 1e-3),
        "adan": lambda: optim.adan(1e-2, 0.98, weight_decay=0.1),
        "novograd": lambda: optim.novograd(1e-2, 0.9, weight_decay=0.1),
        "rprop": lambda: optim.rprop(1e-2, 0.5, 1.2),
        "fromage": lambda: optim.fromage(0.1),
    }[name]
    want = _run(plain(), params)[2]
    for a, b in zip(new.values(), want.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(set(OPTIMISERS) - {"flatten"}))
def test_vmap_over_an_ensemble_equals_a_loop(name):
    members = [_params(torch.float64, name not in NO_SCALAR, seed) for seed in range(3)]
    stacked = pytree.tree_map(lambda *xs: torch.stack(xs), *members)
    grads = [_grads(m, 0) for m in members]
    stacked_grads = pytree.tree_map(lambda *xs: torch.stack(xs), *grads)
    opt = OPTIMISERS[name]()

    def two_steps(p, g):
        state = opt.init(p)
        u, state = opt.update(g, state, p)
        p = optim.apply_updates(p, u)
        u, state = opt.update(pytree.tree_map(lambda x: 0.5 * x, g), state, p)
        return optim.apply_updates(p, u)

    batched = vmap(two_steps)(stacked, stacked_grads)
    for i, (p, g) in enumerate(zip(members, grads, strict=True)):
        one = two_steps(p, g)
        for k in one:
            torch.testing.assert_close(batched[k][i], one[k], rtol=1e-12, atol=1e-12)


def test_bad_input_is_refused_naming_the_entry():
    params = _params()
    with pytest.raises(TypeError, match="ScaleByBeliefState"):
        optim.adabelief(0.1).update(params, optim.radam(0.1).init(params), params)
    with pytest.raises(ValueError, match="at least one dimension"):
        optim.sm3(0.1).init(params)
    with pytest.raises(ValueError, match="LookaheadParams"):
        opt = optim.lookahead(optim.sgd(0.1), 2, 0.5)
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="sync_period"):
        optim.lookahead(optim.sgd(0.1), 0, 0.5)
    with pytest.raises(ValueError, match="unique names"):
        optim.named_chain(("a", optim.sgd(0.1)), ("a", optim.sgd(0.1)))
    with pytest.raises(ValueError, match="variant"):
        optim.polyak_sgd(variant="sgd")
    with pytest.raises(ValueError, match="learning_rate"):
        optim.radam(-1.0)
    with pytest.raises(ValueError, match="b1"):
        optim.yogi(0.1, b1=1.5)
    with pytest.raises(ValueError, match="needs the params"):
        optim.novograd(0.1).update(params, optim.novograd(0.1).init(params))
    with pytest.raises(ValueError, match="schedule"):
        with pytest.warns(DeprecationWarning):
            optim.optimistic_adam(lambda t: 0.1)
    with pytest.raises(ValueError, match="5 dimensions"):
        big = {"x": torch.ones(2, 1, 1, 1, 1, 2)}
        clip = optim.adaptive_grad_clip(0.1)
        clip.update(big, clip.init(big), big)
    with pytest.raises(TypeError, match="int32"):
        optim.safe_int32_increment(torch.tensor(1.0))
    with pytest.raises(ValueError, match="different model|structure"):
        optim.radam(0.1).update(params, optim.radam(0.1).init({"w": params["w"]}), params)


def test_scale_gradient_scales_gradients_only():
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)

    def loss(x, scale):
        y = optim.scale_gradient({"a": x}, scale)["a"]
        assert torch.equal(y, x)
        return (y**2).sum()

    for scale in (0.0, 0.5, 1.0, -2.0):
        grad = torch.func.grad(loss)(x, scale)
        assert torch.equal(grad, scale * 2 * x)
        eager = x.clone().requires_grad_()
        out = loss(eager, scale)
        assert out.requires_grad == (scale != 0.0)  # scale 0: detached
        if scale != 0.0:
            (g,) = torch.autograd.grad(out, eager)
            assert torch.equal(g, scale * 2 * x)


def test_noisy_sgd_draws_from_fm_keys():
    params = _params(torch.float64)
    a = _run(optim.noisy_sgd(0.1, key=fm.key(0)), params)[2]
    b = _run(optim.noisy_sgd(0.1, key=0), params)[2]
    c = _run(optim.noisy_sgd(0.1, key=1), params)[2]
    quiet = _run(optim.noisy_sgd(0.1, eta=0.0), params)[2]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["w"], c["w"]) and not torch.equal(a["w"], quiet["w"])
    assert all(torch.equal(quiet[k], _run(optim.sgd(0.1), params)[2][k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["radam", "adan", "novograd", "sm3", "adafactor", "rprop"])
def test_a_compiled_step_is_one_graph_and_equals_the_eager_one(name):
    params = _params(torch.float64, name not in NO_SCALAR)
    opt = OPTIMISERS[name]()

    def step(p, g, s):
        u, s = opt.update(g, s, p)
        return optim.apply_updates(p, u), s

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    s_eager = s_compiled = opt.init(params)
    p_eager = p_compiled = params
    for i in range(3):
        g = _grads(params, i)
        p_eager, s_eager = step(p_eager, g, s_eager)
        p_compiled, s_compiled = compiled(p_compiled, g, s_compiled)
    for k in p_eager:
        torch.testing.assert_close(p_compiled[k], p_eager[k], rtol=1e-12, atol=1e-12)
