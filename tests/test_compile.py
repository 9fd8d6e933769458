"""torch.compile: whole models trace into one graph and compiled outputs equal eager ones.

Compilation is slow, so the models are tiny and the checks few; dynamo's caches are reset
around each test so that one test's graphs cannot hide another's breaks.
"""

import pytest
import torch
import torch._dynamo

import funcmodels as fm

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_one_graph(fn, *args, **kwargs):
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def small_cnn():
    return fm.nn.Sequential(
        fm.nn.Conv2d(1, 4, 3),
        fm.nn.BatchNorm2d(4),
        fm.nn.ReLU(),
        fm.nn.MaxPool2d(2),
        fm.nn.Flatten(),
        fm.nn.Linear(4 * 3 * 3, 10),
    )


def run_train(params, x, state, key):
    out = fm.run(params, x, state=state, key=key, train=True)
    return out.out, out.state


def test_small_cnn_in_eval_is_one_graph_and_compiles_to_eager_output():
    params, state = fm.init_with_state(fm.key(0), small_cnn())
    x = fm.random.normal(fm.key(1), (2, 1, 8, 8))
    assert_one_graph(fm.apply, params, x, state=state)
    torch._dynamo.reset()
    compiled = torch.compile(fm.apply, fullgraph=True)
    # Inductor fuses and reorders float reductions: equal to eager within 1e-5.
    torch.testing.assert_close(
        compiled(params, x, state=state), fm.apply(params, x, state=state), atol=1e-5, rtol=1e-5
    )


def test_residual_block_with_se_is_one_graph_and_compiles_train_step_to_eager():
    spec = fm.nn.ResidualBlock(4, 8, stride=2, use_se=True)
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (2, 4, 6, 6))
    assert_one_graph(fm.apply, params, x, state=state)
    torch._dynamo.reset()
    assert_one_graph(run_train, params, x, state, None)
    torch._dynamo.reset()
    out, new_state = torch.compile(run_train, fullgraph=True)(params, x, state, None)
    want_out, want_state = run_train(params, x, state, None)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    for name, t in want_state.flat().items():
        torch.testing.assert_close(new_state[name], t, atol=1e-6, rtol=1e-6, msg=name)


def test_dropout_in_train_mode_is_one_graph():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 8), fm.nn.Dropout(0.5), fm.nn.Linear(8, 2))
    params = fm.init(fm.key(0), spec)
    assert_one_graph(run_train, params, torch.ones(4, 3), None, fm.key(1))
