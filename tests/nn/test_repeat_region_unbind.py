"""fm.nn.Repeat under torch.compile: the members' params taken apart by one Function.

Under compile the params that require grad are ``unbind``-ed by one ``autograd.Function``
for all of them (its backward stacks each one's gradients); params that do not require
grad are ``unbind``-ed plainly. Reference: the same step run eagerly (a Python loop over
the members). Compiled code (``aot_eager``) is compared within ``atol=1e-5, rtol=1e-4``.
"""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm

nn = fm.nn
CLOSE = dict(atol=1e-5, rtol=1e-4)


def _grads(spec, frozen, backend=None):
    """Loss and the gradients of the params not in ``frozen`` (``None`` for those in it:
    they do not require grad), eager or compiled with ``backend``."""
    params = fm.init(fm.key(0), spec)
    assert set(frozen) <= set(params.flat())
    x = fm.random.normal(fm.key(1), (5, 6))
    leaves = {k: t.clone().requires_grad_(k not in frozen) for k, t in params.flat().items()}

    def loss(p):
        return fm.apply(p, x).pow(2).mean()

    fn = loss if backend is None else torch.compile(loss, fullgraph=True, backend=backend)
    value = fn(fm.Params(spec, leaves))
    wrt = [k for k in leaves if k not in frozen]
    got = torch.autograd.grad(value, [leaves[k] for k in wrt])
    return value, dict(zip(wrt, got, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [(), ("0.bias",), ("0.weight", "2.bias")])
def test_params_with_and_without_grad_equal_the_eager_loop(frozen):
    import torch._dynamo

    torch._dynamo.reset()
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6)), 4)
    want = _grads(spec, frozen)
    got = _grads(spec, frozen, "aot_eager")
    torch.testing.assert_close(got[0], want[0], **CLOSE)
    assert list(got[1]) == list(want[1])
    for k, g in want[1].items():
        assert got[1][k].shape == (4, *g.shape[1:]), k
        torch.testing.assert_close(got[1][k], g, **CLOSE)
    torch._dynamo.reset()


@pytest.mark.slow
def test_all_params_frozen_still_runs_the_region():
    import torch._dynamo

    torch._dynamo.reset()
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), 3)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 6)).requires_grad_()
    want = torch.autograd.grad(fm.apply(params, x).sum(), x)[0]
    compiled = torch.compile(lambda p, x: fm.apply(p, x).sum(), fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(params, x), x)[0]
    torch.testing.assert_close(got, want, **CLOSE)
    torch._dynamo.reset()
