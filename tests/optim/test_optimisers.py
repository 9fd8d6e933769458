"""Functional optimisers against torch.optim, purity, vmap ensembles, compile, bad arguments."""

import pytest
import torch
import torch.utils._pytree as pytree
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels import optim

# (ours, torch class, torch's keyword arguments): torch.optim's arithmetic written with
# optax's arguments and pieces (torch's weight_decay in SGD/Adam is an L2 term added to the
# gradient first)
CONFIGS = [
    (lambda: optim.sgd(0.1), torch.optim.SGD, {"lr": 0.1}),
    (
        lambda: optim.chain(optim.add_decayed_weights(0.1), optim.sgd(0.05)),
        torch.optim.SGD,
        {"lr": 0.05, "weight_decay": 0.1},
    ),
    (lambda: optim.sgd(0.05, momentum=0.9), torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (
        lambda: optim.chain(optim.add_decayed_weights(0.01), optim.sgd(0.05, momentum=0.8)),
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01},
    ),
    (
        lambda: optim.sgd(0.05, 0.9, nesterov=True),
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    (lambda: optim.adam(1e-3), torch.optim.Adam, {}),
    (
        lambda: optim.adam(0.01, b1=0.8, b2=0.99, eps=1e-6),
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
    ),
    (
        lambda: optim.chain(optim.add_decayed_weights(0.1), optim.adam(0.01)),
        torch.optim.Adam,
        {"lr": 0.01, "weight_decay": 0.1},
    ),
    (lambda: optim.adam(0.01, 0.0, 0.0), torch.optim.Adam, {"lr": 0.01, "betas": (0.0, 0.0)}),
    (lambda: optim.adamw(1e-3, weight_decay=1e-2), torch.optim.AdamW, {}),
    (
        lambda: optim.adamw(0.02, 0.5, 0.9, weight_decay=0.3),
        torch.optim.AdamW,
        {"lr": 0.02, "betas": (0.5, 0.9), "weight_decay": 0.3},
    ),
]
CASES = [pytest.param(*c, id=f"{c[1].__name__}-{c[2]}") for c in CONFIGS]
# one of each kind with all options in play, for the slower tests
SOME = [CASES[4], CASES[7], CASES[10]]
# Relative/absolute tolerances after STEPS steps: the same operations in a slightly
# different order (update formed before it is added), so rounding only.
TOL = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-13, 1e-15)}
STEPS = 6


def tensors(dtype):
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g, dtype=dtype),
        "b": torch.randn(3, generator=g, dtype=dtype),
        "s": torch.randn((), generator=g, dtype=dtype),
    }


def grad_sequence(params, dtype):
    g = torch.Generator().manual_seed(1)
    return [
        {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
        for _ in range(STEPS)
    ]


def torch_reference(cls, kwargs, init, grads):
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = cls(list(leaves.values()), **kwargs)
    for gs in grads:
        for k, p in leaves.items():
            p.grad = gs[k].clone()
        opt.step()
    return {k: p.detach() for k, p in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make, cls, kwargs", CASES)
def test_matches_torch_optim_fed_the_same_gradients(make, cls, kwargs, dtype):
    init = tensors(dtype)
    grads = grad_sequence(init, dtype)
    opt = make()
    params, opt_state = init, opt.init(init)
    for gs in grads:
        updates, opt_state = opt.update(gs, opt_state, params)
        params = optim.apply_updates(params, updates)
    want = torch_reference(cls, kwargs, init, grads)
    rtol, atol = TOL[dtype]
    for k in want:
        assert params[k].dtype == dtype
        torch.testing.assert_close(params[k], want[k], rtol=rtol, atol=atol, msg=k)
    adam_state = _adam_state(opt_state)
    if adam_state is not None:
        assert adam_state.count.dtype == torch.int64 and int(adam_state.count) == STEPS


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.99999)])
def test_first_adam_step_is_bias_corrected_exactly(betas):
    # After one step the bias-corrected moments are g and g**2, so the update is
    # -lr * g / (|g| + eps); the corrections 1 - beta**t must not lose digits to
    # cancellation in float32 (computed in float64 here as the reference).
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    p = torch.zeros(1000)
    lr, eps = 1e-3, 1e-8
    opt = optim.adam(lr, *betas, eps=eps)
    updates, _ = opt.update(g, opt.init(p), p)
    g64 = g.double()
    want = -lr * g64 / (g64.abs() + eps)
    torch.testing.assert_close(updates.double(), want, rtol=1e-6, atol=0)


def _adam_state(state):
    """The ScaleByAdamState inside an optimiser's (chained) state, if any."""
    for s in state if isinstance(state, tuple) and not hasattr(state, "_fields") else (state,):
        if isinstance(s, optim.ScaleByAdamState):
            return s
    return None


def mlp():
    return fm.nn.Sequential(fm.nn.Linear(3, 8), fm.nn.Tanh(), fm.nn.Linear(8, 2))


def mse(params, x, y):
    return ((fm.apply(params, x) - y) ** 2).mean()


@pytest.mark.parametrize("make, cls, kwargs", SOME)
def test_training_params_matches_torch_module(make, cls, kwargs):
    spec = mlp()
    params = fm.init(fm.key(0), spec)
    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    module.load_state_dict(fm.to_state_dict(params))
    torch_opt = cls(module.parameters(), **kwargs)
    opt = make()
    opt_state = opt.init(params)
    for i in range(5):
        x = fm.random.normal(fm.key(100 + i), (16, 3))
        y = fm.random.normal(fm.key(200 + i), (16, 2))
        updates, opt_state = opt.update(grad(mse)(params, x, y), opt_state, params)
        params = optim.apply_updates(params, updates)
        torch_opt.zero_grad()
        ((module(x) - y) ** 2).mean().backward()
        torch_opt.step()
    assert isinstance(params, fm.Params) and params.spec == spec
    got, want = fm.to_state_dict(params), module.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("make, cls, kwargs", CASES)
def test_inputs_are_not_mutated(make, cls, kwargs):
    params = fm.init(fm.key(0), mlp())
    opt = make()
    state = opt.init(params)
    x, y = fm.random.normal(fm.key(1), (4, 3)), fm.random.normal(fm.key(2), (4, 2))
    grads = grad(mse)(params, x, y)
    # Take a step first so that the optimiser state is not all zeros.
    updates, state = opt.update(grads, state, params)
    trees = (params, grads, state, updates)
    before = [t.clone() for t in pytree.tree_leaves(trees)]
    ids = [id(t) for t in pytree.tree_leaves(trees)]
    new_updates, new_state = opt.update(grads, state, params)
    new_params = optim.apply_updates(params, updates)
    after = pytree.tree_leaves(trees)
    assert [id(t) for t in after] == ids
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(
        a is not b
        for a, b in zip(pytree.tree_leaves(new_params), pytree.tree_leaves(params), strict=True)
    )


@pytest.mark.parametrize("make, cls, kwargs", [CASES[3], CASES[6], CASES[10]])
def test_vmap_trains_an_ensemble_like_a_loop(make, cls, kwargs):
    spec, n = mlp(), 3
    opt = make()

    def step(params, opt_state, x, y):
        updates, opt_state = opt.update(grad(mse)(params, x, y), opt_state, params)
        return optim.apply_updates(params, updates), opt_state

    ensemble = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), n), spec)
    ens_state = vmap(opt.init)(ensemble)
    members = [pytree.tree_map(lambda t, i=i: t[i], ensemble) for i in range(n)]
    states = [opt.init(m) for m in members]
    for s in range(3):
        x = fm.random.normal(fm.key(10 + s), (n, 5, 3))
        y = fm.random.normal(fm.key(20 + s), (n, 5, 2))
        ensemble, ens_state = vmap(step)(ensemble, ens_state, x, y)
        for i in range(n):
            members[i], states[i] = step(members[i], states[i], x[i], y[i])
    assert ensemble.spec == spec
    for i in range(n):
        for k, v in fm.to_state_dict(members[i]).items():
            torch.testing.assert_close(ensemble[k][i], v, rtol=1e-5, atol=1e-6, msg=k)
    adam_state = _adam_state(ens_state)
    if adam_state is not None:
        assert adam_state.count.tolist() == [3] * n


@pytest.mark.slow
def test_compiled_step_matches_eager():
    spec = mlp()
    opt = optim.adamw(0.01, weight_decay=0.1)

    def step(params, opt_state, x, y):
        updates, opt_state = opt.update(grad(mse)(params, x, y), opt_state, params)
        return optim.apply_updates(params, updates), opt_state

    compiled = torch.compile(step, fullgraph=True)
    params = fm.init(fm.key(0), spec)
    eager, state, cstate = params, opt.init(params), opt.init(params)
    for s in range(2):
        x, y = fm.random.normal(fm.key(10 + s), (8, 3)), fm.random.normal(fm.key(20 + s), (8, 2))
        eager, state = step(eager, state, x, y)
        params, cstate = compiled(params, cstate, x, y)
    assert int(_adam_state(cstate).count) == 2
    for k, v in fm.to_state_dict(eager).items():
        torch.testing.assert_close(params[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_structure_mismatch_is_reported():
    params = fm.init(fm.key(0), mlp())
    opt = optim.adam(1e-3)
    state = opt.init(params)
    grads = {k: torch.zeros_like(v) for k, v in params.flat().items()}
    with pytest.raises(ValueError, match=r"grads do not have the structure of the params.*dict"):
        opt.update(grads, state, params)
    with pytest.raises(TypeError, match=r"fm\.optim\.chain: expected the tuple of 2 states"):
        opt.update(params, optim.lamb(0.1).init(params), params)
    with pytest.raises(
        TypeError, match=r"fm\.optim\.scale_by_adam: expected the ScaleByAdamState .*got TraceState"
    ):
        opt.update(params, optim.sgd(0.1, momentum=0.9).init(params), params)
    other = fm.init(fm.key(0), fm.nn.Linear(3, 2))
    with pytest.raises(
        ValueError,
        match=r"updates do not .* different model: layer '<root>': expected Sequential, got Linear",
    ):
        optim.apply_updates(params, other)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (
            lambda: optim.sgd(-0.1),
            ValueError,
            r"fm\.optim\.sgd: learning_rate must be .*>= 0, got -0\.1",
        ),
        (
            lambda: optim.sgd("0.1"),
            TypeError,
            r"fm\.optim\.sgd: learning_rate must be a number, a 0-dim",
        ),
        (lambda: optim.sgd(True), TypeError, r"learning_rate must be a number, .* got bool True"),
        (
            lambda: optim.sgd(torch.ones(2)),
            TypeError,
            r"learning_rate as a tensor must be a 0-dim floating",
        ),
        (
            lambda: optim.sgd(0.1, momentum=lambda c: c),
            TypeError,
            r"fm\.optim\.sgd: momentum must be a number",
        ),
        (lambda: optim.sgd(0.1, momentum=-1), ValueError, r"momentum must be .*>= 0"),
        (lambda: optim.sgd(0.1, 0.9, nesterov=1), TypeError, r"nesterov must be a bool"),
        (lambda: optim.add_decayed_weights(-1), ValueError, r"weight_decay must be"),
        (lambda: optim.sgd(0.1, float("nan")), ValueError, r"momentum must be a finite"),
        (lambda: optim.adam(-1e-3), ValueError, r"fm\.optim\.adam: learning_rate must be"),
        (lambda: optim.adam(1e-3, b1=1.0), ValueError, r"b1 must be .* in \[0, 1\), got 1.0"),
        (lambda: optim.adam(1e-3, b2=-0.1), ValueError, r"b2 must .*\[0, 1\), got -0.1"),
        (lambda: optim.adam(1e-3, eps=-1e-8), ValueError, r"eps must be"),
        (lambda: optim.adam(1e-3, mu_dtype=torch.int32), TypeError, r"mu_dtype must be None"),
        (lambda: optim.adamw(1e-3, weight_decay=-0.1), ValueError, r"weight_decay must be"),
        (lambda: optim.adamw(1e-3, b2=1.5), ValueError, r"b2 must be"),
    ],
)
def test_bad_hyper_parameters(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
