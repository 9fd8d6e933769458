"""The LSTM scan's cell on sigmoids only (``funcmodels/nn/_rnn_ops.py``): outputs, final
states and gradients against torch's LSTM over long sequences, where the rounding of
``2 sigmoid(2 z) - 1`` in place of ``tanh(z)`` would accumulate."""

import pytest
import torch

import funcmodels as fm
from funcmodels.nn import _recurrent
from funcmodels.nn._rnn_ops import _double_g
from tests.helpers import example_input, randomised, torch_twin, torch_twin_of

nn = fm.nn

# float64: torch's own (non-oneDNN) kernel, a few ulps apart per step; float32: oneDNN's
# kernel, whose products round differently (about 1e-7 a step).
TOL = {torch.float64: {"atol": 1e-12, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}
GRAD_TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-9},
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
}


def scan_and_module(dtype, proj_size):
    spec = nn.LSTM(3, 8, 2, bidirectional=True, proj_size=proj_size)
    params, _ = randomised(spec, 3)
    params = fm.Params(spec, {k: v.to(dtype).requires_grad_() for k, v in params.flat().items()})
    module = torch_twin(torch_twin_of(spec).to(dtype), params)
    return params, module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("proj_size", [0, 5])
def test_the_scan_matches_torch_over_150_steps(dtype, proj_size):
    params, module = scan_and_module(dtype, proj_size)
    x = example_input((150, 2, 3), dtype=dtype) * 3.0  # large gates: saturated sigmoids too
    sizes = ((2, proj_size or 8), (3, 8))
    hx = tuple(example_input((4, 2, n), seed=s, dtype=dtype) for s, n in sizes)
    saved = _recurrent._FUSED
    _recurrent._FUSED = False
    try:
        out, (h, c) = fm.apply(params, (x, hx))
        leaves = list(params.flat().values())
        got = torch.autograd.grad((out.square().sum() + c.sum()), leaves)
    finally:
        _recurrent._FUSED = saved
    want_out, (want_h, want_c) = module(x, hx)
    for a, b in ((out, want_out), (h, want_h), (c, want_c)):
        torch.testing.assert_close(a, b, **TOL[dtype])
    theirs = dict(module.named_parameters())
    wants = torch.autograd.grad(
        want_out.square().sum() + want_c.sum(), [theirs[name] for name in params.flat()]
    )
    for name, g, w in zip(params.flat(), got, wants, strict=True):
        torch.testing.assert_close(g, w, **GRAD_TOL[dtype], msg=name)


def test_double_g_doubles_the_third_quarter_only():
    t = torch.arange(8.0).reshape(4, 2) + 0.1
    assert torch.equal(
        _double_g(t), torch.tensor([[0.1, 1.1], [2.1, 3.1], [8.2, 10.2], [6.1, 7.1]])
    )
    assert torch.equal(_double_g(torch.arange(4.0)), torch.tensor([0.0, 1.0, 4.0, 3.0]))
