"""fm.optim as a toolkit: every piece against its formula or torch, composition, freezing,
hyperparameters as state, accumulation, compile and vmap.

Tolerances: against torch's optimisers ``rtol=1e-6`` (float32) / ``1e-13`` (float64) after
six steps, the same ops in a slightly different grouping; against hand-written formulas in
float64, ``rtol=1e-12``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.utils._pytree as pytree
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels import optim

STEPS = 6
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-13, atol=1e-15)}


def tensors(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g, dtype=dtype),
        "b": torch.randn(3, generator=g, dtype=dtype),
    }


def grads(params, seed=1, steps=STEPS):
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        for _ in range(steps)
    ]


def run(opt, params, gs):
    state = opt.init(params)
    for g in gs:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
    return params, state


def torch_run(cls, groups, init, gs, scheduler=None):
    """``cls`` on parameters holding ``init``; ``groups`` is a list of (names, options)."""
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    if len(groups) == 1:  # as the constructor's defaults: torch's Adagrad reads its
        names, options = groups[0]  # initial_accumulator_value only from those
        opt = cls([leaves[n] for n in names], **options)
    else:
        opt = cls([{"params": [leaves[n] for n in names], **o} for names, o in groups])
    sched = scheduler(opt) if scheduler else None
    for g in gs:
        for k, p in leaves.items():
            p.grad = g[k].clone()
        opt.step()
        if sched:
            sched.step()
    return {k: p.detach() for k, p in leaves.items()}


def assert_trees(got, want, **tol):
    for k in want:
        torch.testing.assert_close(got[k], want[k], **tol, msg=k)


# -- the new aliases against torch ---------------------------------------------------------

# torch's RMSprop through optax's flags (eps outside the root, alpha as decay); torch's
# Adagrad adds eps outside the root, which no optax flag reaches: its twin runs with eps=0
# (the difference is eps / (2 sqrt(s)) relative otherwise), lr_decay as a schedule.
TORCH_CASES = [
    (lambda: optim.rmsprop(0.01, 0.99, eps_in_sqrt=False), torch.optim.RMSprop, {"lr": 0.01}),
    (
        lambda: optim.rmsprop(0.01, 0.9, eps_in_sqrt=False, momentum=0.5),
        torch.optim.RMSprop,
        {"lr": 0.01, "alpha": 0.9, "momentum": 0.5},
    ),
    (
        lambda: optim.chain(
            optim.add_decayed_weights(0.1),
            optim.rmsprop(0.01, 0.99, eps_in_sqrt=False, centered=True),
        ),
        torch.optim.RMSprop,
        {"lr": 0.01, "centered": True, "weight_decay": 0.1},
    ),
    (lambda: optim.adagrad(0.1, 0.0, eps=0.0), torch.optim.Adagrad, {"lr": 0.1, "eps": 0.0}),
    (
        lambda: optim.chain(
            optim.add_decayed_weights(0.1),
            optim.adagrad(lambda t: 0.1 / (1 + t.double() * 0.05), 0.0, eps=0.0),
        ),
        torch.optim.Adagrad,
        {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1, "eps": 0.0},
    ),
    (
        lambda: optim.adagrad(0.1, 0.5, eps=0.0),
        torch.optim.Adagrad,
        {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 0.0},
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "make, cls, kwargs", TORCH_CASES, ids=lambda v: str(v) if isinstance(v, dict) else ""
)
def test_aliases_match_torch(make, cls, kwargs, dtype):
    init = tensors(dtype)
    gs = grads(init)
    got, _ = run(make(), init, gs)
    want = torch_run(cls, [(list(init), kwargs)], init, gs)
    assert_trees(got, want, **TOL[dtype])


def test_adamw_with_a_weight_decay_mask_matches_torch_param_groups():
    init = tensors(torch.float64)
    gs = grads(init)
    mask = {"w": True, "b": False}
    got, _ = run(optim.adamw(0.01, weight_decay=0.3, mask=mask), init, gs)
    want = torch_run(
        torch.optim.AdamW,
        [(["w"], {"lr": 0.01, "weight_decay": 0.3}), (["b"], {"lr": 0.01, "weight_decay": 0.0})],
        init,
        gs,
    )
    assert_trees(got, want, **TOL[torch.float64])


def test_sgd_with_a_schedule_matches_torch_with_lambda_lr():
    init = tensors(torch.float64)
    gs = grads(init)
    sched = optim.linear_schedule(0.1, 0.01, 4)
    got, _ = run(optim.sgd(sched, momentum=0.9), init, gs)
    want = torch_run(
        torch.optim.SGD,
        [(list(init), {"lr": 0.1, "momentum": 0.9})],
        init,
        gs,
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: float(sched(t)) / 0.1),
    )
    assert_trees(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("lr_decay", [0.0, 0.05])
def test_adagrad_with_a_schedule_matches_torch_with_lambda_lr(lr_decay):
    init = tensors(torch.float64)
    gs = grads(init)
    sched = optim.linear_schedule(0.1, 0.01, 4)
    decayed = optim.adagrad(lambda t: sched(t) / (1 + t.double() * lr_decay), 0.0, eps=0.0)
    got, _ = run(decayed, init, gs)
    want = torch_run(
        torch.optim.Adagrad,
        [(list(init), {"lr": 0.1, "lr_decay": lr_decay, "eps": 0.0})],
        init,
        gs,
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: float(sched(t)) / 0.1),
    )
    assert_trees(got, want, **TOL[torch.float64])


def test_clip_by_global_norm_matches_clip_grad_norm_():
    # optax's rule, max_norm / norm; torch's clip_grad_norm_ divides by norm + 1e-6, a
    # relative difference of 1e-6 / norm (at most 1e-6 where clipping happens)
    for scale in (0.01, 100.0):
        g = {k: v * scale for k, v in tensors(torch.float64, seed=3).items()}
        got, _ = optim.clip_by_global_norm(1.0).update(g, optim.EmptyState())
        params = [torch.nn.Parameter(torch.zeros_like(v)) for v in g.values()]
        for p, v in zip(params, g.values(), strict=True):
            p.grad = v.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        for p, k in zip(params, g, strict=True):
            torch.testing.assert_close(got[k], p.grad, rtol=1e-6, atol=0)
            want = g[k] / norm if norm >= 1.0 else g[k]
            torch.testing.assert_close(got[k], want, rtol=1e-14, atol=0)
    total = optim.global_norm(g)
    torch.testing.assert_close(
        total, torch.cat([t.flatten() for t in g.values()]).norm(), rtol=1e-12, atol=0
    )


# -- pieces against their formulas ------------------------------------------------------------


def test_lion_matches_its_formula():
    init = tensors(torch.float64)
    gs = grads(init)
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
    got, _ = run(optim.lion(lr, b1, b2, weight_decay=wd), init, gs)
    p = {k: v.clone() for k, v in init.items()}
    m = {k: torch.zeros_like(v) for k, v in init.items()}
    for g in gs:
        for k in p:
            direction = torch.sign(b1 * m[k] + (1 - b1) * g[k])
            m[k] = b2 * m[k] + (1 - b2) * g[k]
            p[k] = p[k] - lr * (direction + wd * p[k])
    assert_trees(got, p, rtol=1e-12, atol=1e-14)


def test_lamb_matches_its_formula():
    init = tensors(torch.float64)
    gs = grads(init)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.1
    got, _ = run(optim.lamb(lr, b1, b2, eps, weight_decay=wd), init, gs)
    p = {k: v.clone() for k, v in init.items()}
    m = {k: torch.zeros_like(v) for k, v in init.items()}
    v = {k: torch.zeros_like(t) for k, t in init.items()}
    for t, g in enumerate(gs, start=1):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m[k] / (1 - b1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps) + wd * p[k]
            ratio = p[k].norm() / u.norm()
            p[k] = p[k] - lr * ratio * u
    assert_trees(got, p, rtol=1e-10, atol=1e-12)


def test_clip_and_scale_and_trace():
    g = {"a": torch.tensor([-3.0, 0.5, 2.0])}
    out, _ = optim.clip(1.0).update(g, optim.EmptyState())
    assert out["a"].tolist() == [-1.0, 0.5, 1.0]
    out, _ = optim.scale(-2.0).update(g, optim.EmptyState())
    assert out["a"].tolist() == [6.0, -1.0, -4.0]
    t = optim.trace(0.5, nesterov=True)
    state = t.init(g)
    out, state = t.update(g, state)
    out, state = t.update(g, state)  # buffer 1.5 g, update g + 0.5 * 1.5 g
    torch.testing.assert_close(out["a"], 1.75 * g["a"])


# -- composition ---------------------------------------------------------------------------


def test_chain_of_pieces_equals_the_alias():
    init = tensors(torch.float64)
    gs = grads(init)
    a, _ = run(optim.adamw(0.01, weight_decay=0.1), init, gs)
    b, _ = run(
        optim.chain(
            optim.scale_by_adam(),
            optim.add_decayed_weights(0.1),
            optim.scale_by_learning_rate(0.01),
        ),
        init,
        gs,
    )
    assert_trees(a, b, rtol=0, atol=0)


def test_clip_then_adamw_with_warmup_cosine_matches_torch():
    init = tensors(torch.float64)
    gs = [{k: v * 10 for k, v in g.items()} for g in grads(init)]
    sched = optim.warmup_cosine_decay_schedule(0.0, 0.01, 2, 6)
    got, _ = run(
        optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(sched, weight_decay=0.1)), init, gs
    )
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = torch.optim.AdamW(leaves.values(), lr=0.01, weight_decay=0.1)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: float(sched(t)) / 0.01)
    for g in gs:
        for k, p in leaves.items():
            p.grad = g[k].clone()
        # optax's clipping rule (clip_grad_norm_ divides by norm + 1e-6, tested above)
        norm = torch.nn.utils.get_total_norm([p.grad for p in leaves.values()])
        if norm >= 1.0:
            for p in leaves.values():
                p.grad.mul_(1.0 / norm)
        opt.step()
        lr_sched.step()
    assert_trees(got, {k: p.detach() for k, p in leaves.items()}, **TOL[torch.float64])


def test_masked_leaves_pass_the_others_unchanged():
    g = {"w": torch.ones(2), "b": torch.ones(2)}
    m = optim.masked(optim.scale(3.0), {"w": True, "b": False})
    out, _ = m.update(g, m.init(g))
    assert out["w"].tolist() == [3.0, 3.0] and out["b"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="must have the structure of the params"):
        optim.masked(optim.scale(3.0), {"w": True}).init(g)
    with pytest.raises(TypeError, match="mask leaves must be bools"):
        optim.masked(optim.scale(3.0), {"w": 1, "b": 0}).init(g)


def mlp():
    return fm.nn.Sequential(fm.nn.Linear(3, 8), fm.nn.Tanh(), fm.nn.Linear(8, 2))


def mse(params, x, y):
    return ((fm.apply(params, x) - y) ** 2).mean()


def data(seed=0):
    return fm.random.normal(fm.key(seed), (16, 3)), fm.random.normal(fm.key(seed + 1), (16, 2))


def train(opt, params, steps=5):
    state = opt.init(params)
    x, y = data()
    for _ in range(steps):
        updates, state = opt.update(grad(mse)(params, x, y), state, params)
        params = optim.apply_updates(params, updates)
    return params


def test_multi_transform_freezes_parts_bit_identically():
    params = fm.init(fm.key(0), mlp())
    labels = fm.tree.map_with_path(
        lambda path, t: "frozen" if path.startswith("0.") else "train", params
    )
    opt = optim.multi_transform({"train": optim.adam(0.05), "frozen": optim.set_to_zero()}, labels)
    trained = train(opt, params)
    for k in ("0.weight", "0.bias"):
        assert torch.equal(trained[k], params[k])
    assert not torch.equal(trained["2.weight"], params["2.weight"])
    # The trained part equals Adam on the head alone, the stem fixed.
    head, stem = fm.tree.partition(params, lambda path, t: path.startswith("2."))
    opt_head = optim.adam(0.05)
    state = opt_head.init(head)
    x, y = data()
    for _ in range(5):
        g = grad(lambda h: mse(fm.tree.combine(h, stem), x, y))(head)
        updates, state = opt_head.update(g, state, head)
        head = optim.apply_updates(head, updates)
    for k in ("2.weight", "2.bias"):
        torch.testing.assert_close(trained[k], head[k], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"labels 'other' have no transformation"):
        optim.multi_transform(
            {"train": optim.sgd(0.1)}, fm.tree.map(lambda t: "other", params)
        ).init(params)


def test_inject_hyperparams_changes_the_learning_rate_without_a_new_optimiser():
    params = fm.init(fm.key(0), mlp())
    x, y = data()
    opt = optim.inject_hyperparams(optim.adam)(learning_rate=0.01, b2=0.99)
    state = opt.init(params)
    # as optax: every numeric argument, defaults included, in the params' dtype
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    assert all(v.dtype == torch.float32 for v in state.hyperparams.values())
    plain = optim.adam(0.01, b2=0.99)
    plain_state = plain.init(params)
    g = grad(mse)(params, x, y)
    u1, state = opt.update(g, state, params)
    u2, plain_state = plain.update(g, plain_state, params)
    assert_trees(u1, u2, rtol=1e-6, atol=1e-9)
    state.hyperparams["learning_rate"] = 0.0  # optax's idiom: a number into the dict
    u3, state = opt.update(g, state, params)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in fm.tree.leaves(u3))
    scheduled = optim.inject_hyperparams(optim.sgd)(
        learning_rate=optim.linear_schedule(1.0, 0.0, 2)
    )
    s = scheduled.init(params)
    for want in (1.0, 0.5, 0.0):
        _, s = scheduled.update(g, s, params)
        assert float(s.hyperparams["learning_rate"]) == want
    with pytest.raises(TypeError, match="b1 must be a number"):
        optim.inject_hyperparams(optim.adam)(0.1, b1="0.9")
    with pytest.raises(ValueError, match=r"static_args \['masks'\] must name arguments"):
        optim.inject_hyperparams(optim.adamw, static_args="masks")


def test_multi_steps_accumulates_then_steps_once():
    params = fm.init(fm.key(0), mlp())
    batches = [data(s) for s in (0, 2, 4)]
    opt = optim.multi_steps(optim.adam(0.05), every_k_schedule=3)
    state = opt.init(params)
    p = params
    for i, (x, y) in enumerate(batches):
        updates, state = opt.update(grad(mse)(p, x, y), state, p)
        if i < 2:
            assert all(torch.equal(t, torch.zeros_like(t)) for t in fm.tree.leaves(updates))
        p = optim.apply_updates(p, updates)
    mean = fm.tree.map(lambda *gs: sum(gs) / 3, *[grad(mse)(params, x, y) for x, y in batches])
    ref = optim.adam(0.05)
    u, _ = ref.update(mean, ref.init(params), params)
    assert_trees(p, optim.apply_updates(params, u), rtol=1e-6, atol=1e-7)
    assert int(state.mini_step) == 0


def test_apply_every_sums_k_updates():
    t = optim.apply_every(2)
    g = {"a": torch.tensor([1.0])}
    state = t.init(g)
    out = []
    for _ in range(4):
        u, state = t.update(g, state)
        out.append(u["a"].item())
    assert out == [0.0, 2.0, 0.0, 2.0]


# -- compile and vmap ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_compiled_step_with_a_changing_learning_rate_compiles_once():
    torch._dynamo.reset()
    params = fm.init(fm.key(0), mlp())
    x, y = data()
    opt = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.inject_hyperparams(optim.adamw)(
            learning_rate=optim.warmup_cosine_decay_schedule(0.0, 0.01, 2, 8), weight_decay=0.1
        ),
    )

    def step(p, s):
        updates, s = opt.update(grad(mse)(p, x, y), s, p)
        return optim.apply_updates(p, updates), s

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(step, backend=counter)
    eager_p, eager_s = params, opt.init(params)
    p, s = params, opt.init(params)
    for i in range(5):
        if i == 3:  # a new weight decay by hand, too: a tensor of the same dtype, no recompile
            inner = s[1]._replace(
                hyperparams={**s[1].hyperparams, "weight_decay": torch.tensor(0.5)}
            )
            s = (s[0], inner)
            eager_s = (eager_s[0], eager_s[1]._replace(hyperparams=inner.hyperparams))
        p, s = compiled(p, s)
        eager_p, eager_s = step(eager_p, eager_s)
    assert counter.frame_count == 1, counter.frame_count
    assert_trees(p, eager_p, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# vmap falling back to a loop over the members (an op without a batching rule) is an error
@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")
def test_vmap_trains_an_ensemble_with_a_chained_optimiser():
    n = 3
    ens = fm.init(fm.key(0), fm.nn.Stack(mlp(), n))
    members = fm.tree.unstack(ens)
    opt = optim.chain(
        optim.clip_by_global_norm(0.5), optim.adam(optim.linear_schedule(0.05, 0.01, 3))
    )
    x = fm.random.normal(fm.key(3), (n, 16, 3))
    y = fm.random.normal(fm.key(4), (n, 16, 2))

    def step(p, s, xi, yi):
        updates, s = opt.update(grad(mse)(p, xi, yi), s, p)
        return optim.apply_updates(p, updates), s

    stacked = fm.tree.stack(members)  # the members' params, one leading axis
    states = vmap(opt.init)(stacked)
    for _ in range(3):
        stacked, states = vmap(step)(stacked, states, x, y)
    for i, m in enumerate(members):
        s = opt.init(m)
        for _ in range(3):
            m, s = step(m, s, x[i], y[i])
        assert_trees(fm.tree.index(stacked, i), m, rtol=1e-5, atol=1e-6)


# -- in-place writes inside a chain ---------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.adamw(optim.linear_schedule(0.1, 0.01, 3), weight_decay=0.1),
        lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(0.1, weight_decay=0.1)),
        lambda: optim.chain(optim.identity(), optim.scale(2.0), optim.scale(-0.5)),
        lambda: optim.chain(optim.add_decayed_weights(0.1), optim.scale(-1.0)),
        lambda: optim.chain(optim.scale(2.0), optim.add_decayed_weights(0.1)),
        lambda: optim.chain(
            optim.masked(optim.scale(3.0), {"w": True, "b": False}), optim.scale(-1.0)
        ),
    ],
    ids=[
        "adamw-schedule",
        "clip-adamw",
        "identity-first",
        "decay-scale",
        "scale-decay",
        "masked-first",
    ],
)
def test_a_chain_never_writes_into_what_it_was_given(make):
    """A chain writes only into updates one of its pieces made (eager, for speed): the
    caller's gradients, the params and the optimiser state stay as they were, and the
    result equals the same chain run out of place (under no eager: inside vmap)."""
    params = tensors(torch.float64)
    opt = make()
    state = opt.init(params)
    for g in grads(params, steps=3):
        before = {k: v.clone() for k, v in g.items()}
        kept_params = {k: v.clone() for k, v in params.items()}
        kept_state = pytree.tree_map(lambda t: t.clone(), state)
        updates, new_state = opt.update(g, state, params)
        # the same step where nothing may be written in place: a one-member vmap
        want, want_state = vmap(lambda gg, ss, pp: opt.update(gg, ss, pp))(
            *pytree.tree_map(lambda t: t[None], (g, state, params))
        )
        assert all(torch.equal(g[k], before[k]) for k in g)
        assert all(torch.equal(params[k], kept_params[k]) for k in params)
        assert all(
            torch.equal(a, b)
            for a, b in zip(pytree.tree_leaves(state), pytree.tree_leaves(kept_state), strict=True)
        )
        for k in updates:
            assert updates[k] is not g[k]
            torch.testing.assert_close(updates[k], want[k][0], rtol=1e-12, atol=1e-14)
        params = optim.apply_updates(params, updates)
        state = new_state


def test_in_place_writes_keep_autograd_forward_ad_and_dtypes_as_out_of_place():
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    g = {k: torch.randn_like(v) for k, v in params.items()}
    # a hyperparameter being differentiated (meta-learning): no out= on recorded tensors
    b1 = torch.tensor(0.9, requires_grad=True)
    adam = optim.scale_by_adam(b1=b1)
    u, _ = adam.update(g, adam.init(params))
    (d_b1,) = torch.autograd.grad(u["w"].sum(), b1)
    assert torch.isfinite(d_b1)
    # forward-mode AD through a chain
    import torch.autograd.forward_ad as fwAD

    opt = optim.adamw(0.1, weight_decay=0.1)
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(v, torch.ones_like(v)) for k, v in g.items()}
        out, _ = opt.update(dual, opt.init(params), params)
        assert fwAD.unpack_dual(out["w"]).tangent is not None
    # a wider param dtype promotes the updates in eager mode as under vmap
    chain = optim.chain(
        optim.clip_by_global_norm(1.0), optim.add_decayed_weights(0.1), optim.scale(-0.1)
    )
    low = {k: v.to(torch.bfloat16) for k, v in g.items()}
    eager, _ = chain.update(low, chain.init(params), params)
    batched, _ = vmap(lambda gg, pp: chain.update(gg, chain.init(pp), pp))(
        *pytree.tree_map(lambda t: t[None], (low, params))
    )
    assert eager["w"].dtype == batched["w"].dtype == torch.float32
    torch.testing.assert_close(eager["w"], batched["w"][0])


def test_a_wrapped_piece_is_not_taken_for_the_library_piece():
    """functools.wraps copies a function's attributes: ownership is not an attribute, so
    a user's wrapper that returns its input is not written into by the next piece."""
    import functools

    inner = optim.scale(2.0)

    @functools.wraps(inner.update)
    def skip(updates, state, params=None):
        return updates, state  # this step passes the gradients through

    opt = optim.chain(optim.GradientTransformation(inner.init, skip), optim.scale(-1.0))
    g = {"w": torch.ones(3)}
    out, _ = opt.update(g, opt.init(g))
    assert torch.equal(g["w"], torch.ones(3)) and torch.equal(out["w"], -torch.ones(3))
