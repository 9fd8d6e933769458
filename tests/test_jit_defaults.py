"""fm.jit's inductor defaults: which options it passes to torch.compile, that the
caller's own win, and that a compiled CNN step with them gives the eager numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import funcmodels as fm
from funcmodels import _grad

fnn = fm.nn

DEFAULTS = {
    "layout_optimization": False,
    "reorder_for_peak_memory": False,
    "reorder_for_locality": False,
}


class _Recorder:
    """Stands in for torch.compile and keeps the keyword arguments it was given."""

    def __init__(self):
        self.kwargs: dict = {}

    def __call__(self, fn, **kwargs):
        self.kwargs = kwargs
        return fn


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(torch, "compile", rec)
    return rec


def test_the_defaults_reach_torch_compile(recorder):
    fm.jit(lambda w: w * 2)
    assert recorder.kwargs == {"fullgraph": True, "options": DEFAULTS}


def test_the_callers_options_win_and_are_not_mutated(recorder):
    options = {"layout_optimization": True, "max_fusion_size": 32}
    fm.jit(lambda w: w * 2, options=options, dynamic=False)
    assert recorder.kwargs["options"] == {**DEFAULTS, **options}
    assert recorder.kwargs["dynamic"] is False
    assert options == {"layout_optimization": True, "max_fusion_size": 32}


@pytest.mark.parametrize(
    "kwargs",
    [{"backend": "eager"}, {"backend": "aot_eager"}, {"mode": "max-autotune-no-cudagraphs"}],
)
def test_no_options_for_another_backend_or_with_a_mode(recorder, kwargs):
    # torch.compile refuses mode and options together; other backends take no inductor options
    fm.jit(lambda w: w * 2, **kwargs)
    assert recorder.kwargs == {"fullgraph": True, **kwargs}


def test_the_given_kwargs_are_not_mutated():
    kwargs = {"options": {"max_fusion_size": 32}}
    out = _grad._with_defaults(kwargs)
    assert kwargs == {"options": {"max_fusion_size": 32}}
    assert out["options"] == {**DEFAULTS, "max_fusion_size": 32}


@pytest.mark.slow
def test_a_compiled_cnn_step_gives_the_eager_numbers():
    # the layout default changes where convolutions and BatchNorm read and write: a
    # conv-BN-ReLU-pool step must still match the eager step. SGD with momentum, not Adam:
    # Adam turns the rounding noise of a near-zero gradient into a full-size step.
    g = torch.Generator().manual_seed(0)
    spec = fnn.Sequential(
        fnn.Conv2d(1, 4, 3, bias=False),
        fnn.BatchNorm2d(4),
        fnn.ReLU(),
        fnn.MaxPool2d(2),
        fnn.Conv2d(4, 8, 3, bias=False),
        fnn.BatchNorm2d(8),
        fnn.ReLU(),
        fnn.Flatten(),
        fnn.Linear(8 * 2 * 2, 3),
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    x, y = torch.randn(8, 1, 10, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    opt = fm.optim.sgd(0.1, momentum=0.9)

    def loss(p, s, x, y):
        out = fm.run(p, x, state=s, train=True)
        return F.cross_entropy(out.out, y), out.state

    def step(p, o, s, x, y):
        (value, s), grads = fm.value_and_grad(loss, has_aux=True)(p, s, x, y)
        updates, o = opt.update(grads, o, p)
        return fm.optim.apply_updates(p, updates), o, s, value

    compiled = fm.jit(step)
    # two steps: the first's whole result and the second's loss (which reads the first
    # step's params and momentum) against eager
    *got, got_loss = compiled(params, opt.init(params), state, x, y)
    *want, want_loss = step(params, opt.init(params), state, x, y)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        compiled(*got, x, y)[-1], step(*want, x, y)[-1], rtol=1e-5, atol=1e-6
    )
