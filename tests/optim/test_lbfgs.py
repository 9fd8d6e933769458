"""fm.optim's extra update arguments, line searches and L-BFGS on their own: how chain
and the wrappers hand extra arguments on, refusals, dtypes, nothing mutated, and L-BFGS
minimising Rosenbrock (the optax comparison is in test_lbfgs_parity.py)."""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm
from funcmodels import optim


def rosenbrock(p):
    x = p["x"]
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def _recorder(seen: list):
    """A GradientTransformationExtraArgs that records the extra arguments it gets."""

    def update(updates, state, params=None, **extra_args):
        seen.append(dict(extra_args))
        return updates, state

    return optim.GradientTransformationExtraArgs(optim.init_empty_state, update)


def _grads():
    return {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}


def test_plain_transformation_in_chain_ignores_extra_arguments():
    g = _grads()
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1), optim.scale(2.0))
    state = opt.init(g)
    want, want_state = opt.update(g, state, g)
    got, got_state = opt.update(g, state, g, value=torch.tensor(3.0), data="anything")
    for k in g:
        assert torch.equal(got[k], want[k])
    assert torch.equal(got_state[1][0].mu["a"], want_state[1][0].mu["a"])


def test_chain_forwards_extra_arguments_to_members_that_take_them():
    seen_outer, seen_inner = [], []
    inner = optim.chain(optim.scale(0.5), _recorder(seen_inner))
    opt = optim.chain(optim.sgd(0.1), inner, _recorder(seen_outer), optim.scale(-1.0))
    assert isinstance(opt, optim.GradientTransformationExtraArgs)
    g = _grads()
    opt.update(g, opt.init(g), g, value=1.5, key="k")
    assert seen_outer == [{"value": 1.5, "key": "k"}]
    assert seen_inner == [{"value": 1.5, "key": "k"}]  # through the nested chain
    opt.update(g, opt.init(g), g)
    assert seen_outer[-1] == {} and seen_inner[-1] == {}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: optim.named_chain(("sgd", optim.sgd(0.1)), ("rec", t)),
        lambda t: optim.masked(t, {"a": True, "b": False}),
        lambda t: optim.multi_transform({"x": t, "y": optim.sgd(0.1)}, {"a": "x", "b": "y"}),
        lambda t: optim.partition({"x": t, "y": optim.sgd(0.1)}, {"a": "x", "b": "y"}),
        lambda t: optim.apply_if_finite(t, 2),
        lambda t: optim.inject_hyperparams(lambda learning_rate: optim.chain(t))(0.1),
        lambda t: optim.conditionally_transform(t, lambda step: step >= 0),
        lambda t: optim.conditionally_mask(t, lambda step: step >= 0),
        lambda t: optim.flatten(t),
        lambda t: optim.MultiSteps(t, 1).gradient_transformation(),
    ],
)
def test_wrappers_forward_extra_arguments(wrap):
    seen = []
    opt = wrap(_recorder(seen))
    g = _grads()
    opt.update(g, opt.init(g), g, value=2.0)
    assert seen and seen[-1] == {"value": 2.0}


def test_masked_masks_compatible_extra_arguments():
    seen = []
    g = _grads()
    tags = {"a": "tag-a", "b": "tag-b"}
    opt = optim.masked(_recorder(seen), {"a": True, "b": False}, mask_compatible_extra_args=True)
    opt.update(g, opt.init(g), g, tags=tags, value=1.0)
    assert seen[-1] == {"tags": ["tag-a"], "value": 1.0}


def test_conditional_forwards_extra_arguments_to_the_condition():
    calls = []

    def should(step, value):
        calls.append(value)
        return value > 0

    opt = optim.conditionally_mask(optim.sgd(1.0), should, forward_extra_args=True)
    g = _grads()
    out, _ = opt.update(g, opt.init(g), g, value=torch.tensor(-1.0))
    assert calls and all(torch.equal(u, torch.zeros_like(u)) for u in out.values())


def test_with_extra_args_support_keeps_a_transformation_that_takes_them():
    t = _recorder([])
    assert optim.with_extra_args_support(t) is t
    plain = optim.with_extra_args_support(optim.sgd(0.1))
    assert isinstance(plain, optim.GradientTransformationExtraArgs)


def _minimise(opt, fn, params, steps):
    state = opt.init(params)
    value_and_grad = optim.value_and_grad_from_state(fn)
    for i in range(steps):
        value, grad = value_and_grad(params, state=state)
        if i > 0 and value < 1e-8:
            return params, i
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fn)
        params = optim.apply_updates(params, updates)
    return params, steps


def test_lbfgs_minimises_rosenbrock():
    """To 1e-8 from the classic start (-1.2, 1) in 33 iterations (measured; fewer than
    40 asserted). torch.optim.LBFGS is another algorithm: not compared."""
    params, iterations = _minimise(
        optim.lbfgs(), rosenbrock, {"x": torch.tensor([-1.2, 1.0], dtype=torch.float64)}, 200
    )
    assert iterations <= 40
    assert rosenbrock(params) < 1e-8
    torch.testing.assert_close(params["x"], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-4)


def test_lbfgs_on_params_keeps_dtypes_and_mutates_nothing():
    spec = fm.nn.Linear(3, 2)
    params = fm.init(fm.key(0), spec)
    x, y = fm.random.normal(fm.key(1), (16, 3)), fm.random.normal(fm.key(2), (16, 2))

    def loss(p, x, y):
        return ((fm.apply(p, x) - y) ** 2).mean()

    opt = optim.lbfgs(memory_size=4)
    state = opt.init(params)
    before = {k: v.clone() for k, v in params.items()}
    first = None
    for _ in range(5):
        value, grad = optim.value_and_grad_from_state(loss)(params, x, y=y, state=state)
        first = value if first is None else first
        grad_copy = {k: v.clone() for k, v in grad.items()}
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=loss, x=x, y=y
        )
        for k in grad:
            assert torch.equal(grad[k], grad_copy[k])
        params = optim.apply_updates(params, updates)
    assert isinstance(params, fm.Params)
    assert all(v.dtype == torch.float32 for v in params.values())
    assert all(v.dtype == torch.float32 for v in updates.values())
    assert state[2].value.dtype == torch.float32 and state[0].weights_memory.dtype == torch.float32
    assert loss(params, x, y) < first
    assert all(torch.equal(fm.init(fm.key(0), spec)[k], before[k]) for k in before)


def test_line_search_refusals():
    g = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    for search in (optim.scale_by_zoom_linesearch(5), optim.scale_by_backtracking_linesearch(5)):
        state = search.init(g)
        with pytest.raises(TypeError, match="not arguments of value_fn"):
            search.update(g, state, g, value=1.0, grad=g, value_fn=rosenbrock, batch=3)
        with pytest.raises(ValueError, match="needs the params"):
            search.update(g, state, value=1.0, grad=g, value_fn=rosenbrock)
        with pytest.raises(TypeError, match="expected the"):
            search.update(g, (), g, value=1.0, grad=g, value_fn=rosenbrock)

        def under_vmap(x, search=search, state=state):
            p = {"x": x}
            return search.update(p, state, p, value=1.0, grad=p, value_fn=rosenbrock)[0]["x"]

        with pytest.raises(ValueError, match="torch.func transforms"):
            torch.func.vmap(under_vmap)(torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        optim.scale_by_zoom_linesearch(5, initial_guess_strategy="two")
    with pytest.raises(ValueError, match="memory_size"):
        optim.scale_by_lbfgs(0)
    with pytest.raises(ValueError, match="no value or gradient"):
        opt = optim.chain(optim.sgd(1.0), optim.scale_by_backtracking_linesearch(5))
        optim.value_and_grad_from_state(rosenbrock)(g, state=opt.init(g))


def test_backtracking_takes_no_step_where_the_loss_is_not_finite():
    def loss(p):
        return torch.where(p["x"].abs().max() > 0.5, torch.tensor(float("nan")), p["x"].sum())

    p = {"x": torch.zeros(2, dtype=torch.float64)}
    search = optim.scale_by_backtracking_linesearch(3)
    g = {"x": -torch.ones(2, dtype=torch.float64)}
    out, state = search.update(g, search.init(p), p, value=0.0, grad=g, value_fn=loss)
    assert torch.equal(out["x"], torch.zeros(2, dtype=torch.float64))
    assert float(state.learning_rate) == 0.0 and int(state.info.num_linesearch_steps) == 4


@pytest.mark.slow
def test_lbfgs_step_under_compile_matches_eager():
    """Under torch.compile dynamo breaks the graph at the search's tests: the step runs
    and gives the eager numbers."""
    opt = optim.lbfgs()
    p = {"x": torch.tensor([-1.2, 1.0], dtype=torch.float64)}
    state = opt.init(p)

    def step(p, state):
        grad, value = torch.func.grad_and_value(rosenbrock)(p)
        return opt.update(grad, state, p, value=value, grad=grad, value_fn=rosenbrock)

    want, _ = step(p, state)
    got, _ = torch.compile(step)(p, state)
    torch.testing.assert_close(got["x"], want["x"], rtol=0, atol=0)


def test_empty_trees_and_masks_choosing_no_leaf():
    """optax's optimisers run on a tree with no leaves; so do these (a search has
    nothing to do there and needs no loss)."""
    for opt in (
        optim.scale_by_lbfgs(),
        optim.scale_by_zoom_linesearch(5),
        optim.scale_by_backtracking_linesearch(5, store_grad=True),
    ):
        state = opt.init({})
        for _ in range(2):
            updates, state = opt.update({}, state, {})
            assert updates == {}
    params = {"a": torch.ones(3), "b": torch.full((2,), 2.0)}
    grads = {"a": torch.full((3,), 0.5), "b": torch.full((2,), -1.0)}
    for piece in (optim.scale_by_lbfgs(), optim.scale_by_zoom_linesearch(5)):
        masked = optim.masked(piece, {"a": False, "b": False})
        state = masked.init(params)
        for _ in range(2):
            updates, state = masked.update(grads, state, params)
            assert all(torch.equal(updates[k], grads[k]) for k in grads)
    search = optim.scale_by_zoom_linesearch(5)
    with pytest.raises(TypeError, match="value= "):
        search.update(grads, search.init(params), params)
