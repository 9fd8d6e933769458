"""Adamax against torch.optim.Adamax (same ops in another grouping: float32 ``rtol 1e-6``,
float64 ``1e-13`` after six steps); AMSGrad's maximum against its formula."""

from __future__ import annotations

import pytest
import torch

from funcmodels import optim

TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-13, atol=1e-15)}


def tensors(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g, dtype=dtype),
        "s": torch.randn((), generator=g, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adamax_matches_torch(dtype):
    params = tensors(dtype, 0)
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    ref = torch.optim.Adamax(leaves.values(), lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    opt = optim.adamax(0.01, 0.8, 0.95, 1e-6)
    state = opt.init(params)
    for step in range(6):
        g = tensors(dtype, 10 + step)
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        for k, p in leaves.items():
            p.grad = g[k].clone()
        ref.step()
    for k, p in leaves.items():
        torch.testing.assert_close(params[k], p.detach(), **TOL[dtype], msg=k)


def test_amsgrad_divides_by_the_largest_second_moment_so_far():
    opt = optim.scale_by_amsgrad(b1=0.0, b2=0.5, eps=0.0)
    big, small = torch.tensor([4.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    state = opt.init(big)
    _, state = opt.update(big, state)  # nu_hat = 16
    out, state = opt.update(small, state)  # nu = 0.5 * 8 + 0.5 * 1 = 4.5, nu_hat = 6 < 16
    torch.testing.assert_close(out, small / 4.0, rtol=1e-15, atol=0)
    assert float(state.nu_max) == 16.0
