"""float16 attention under vmap: the explicit path that stands in for torch's kernel there
computes as the kernel does (in float32, rounded once), so scores past float16's range
stay finite where torch's are. Tolerance: float16 outputs against torch's, rtol 2e-3 and
atol 2e-3 of the output's scale."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

import funcmodels as fm


@pytest.mark.parametrize("scale", [1.0, 400.0])
def test_float16_attention_under_vmap_matches_torch(scale):
    e, heads = 64, 4
    params = fm.init(fm.key(0), fm.nn.MultiheadAttention(e, heads, batch_first=True))
    params = params.to(torch.float16)
    module = torch.nn.MultiheadAttention(e, heads, batch_first=True).half()
    module.load_state_dict(fm.to_state_dict(params))
    x = torch.randn(4, 30, e, generator=torch.Generator().manual_seed(0)).mul(scale).half()

    def attend(xi):
        out = fm.apply(params, {"query": xi, "key": xi, "value": xi, "need_weights": False})
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        want = module(x, x, x, need_weights=False)[0]
    got = vmap(attend)(x)
    assert want.isfinite().all()  # torch's kernel: no overflow at this scale
    assert got.isfinite().all()
    bound = 2e-3 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=bound)
    torch.testing.assert_close(attend(x), want, rtol=2e-3, atol=bound)
