"""One rule for every dropout mask: attention's weight dropout (``_attention_kernel.py``)
and the recurrent layers' dropout between layers (``_recurrent.py``) draw Dropout's 16-bit
``keep_mask`` from the layer's key, as ``fm.nn.Dropout`` does.

References: ``keep_mask`` itself (its stream is checked against the documented rule in
tests/random/test_keep_mask.py); the undropped values from eval mode. Tolerances: masks
exact; kept values ``atol=1e-6, rtol=1e-5`` (float32), ``1e-12`` in float64 (scaled as
``x * (mask / (1 - p))``, one rounding from ``x / (1 - p)``).
"""

from __future__ import annotations

import torch

import funcmodels as fm
from funcmodels.random._samplers import keep_mask
from tests.helpers import randomised

nn = fm.nn


def test_attention_weight_dropout_is_the_keep_mask_of_the_layer_key():
    p, key = 0.3, fm.key(5)
    params, _ = randomised(nn.MultiheadAttention(8, 2, dropout=p, batch_first=True))
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    args = {"query": x, "need_weights": True, "average_attn_weights": False}
    _, eval_w = fm.apply(params, args)
    _, w = fm.apply(params, args, key=key, train=True)  # (N, H, L, S)
    want = keep_mask(key, 1 - p, tuple(w.shape))  # the root layer's key is the call's
    assert torch.equal(w != 0, want)
    torch.testing.assert_close(w[want], eval_w[want] / (1 - p), atol=1e-6, rtol=1e-5)


def test_recurrent_dropout_is_the_keep_mask_of_the_layer_key_with_the_layer_folded_in():
    # Layer 1 passes layer 0's output through (relu(x I), no recurrence), so the output
    # shows layer 0's dropped output.
    p, key = 0.4, fm.key(3)
    spec = nn.RNN(4, 16, 2, "relu", False, False, p)
    g = torch.Generator().manual_seed(0)
    entries = {}
    for name, shape in spec.param_shapes().items():
        if name == "weight_ih_l1":
            entries[name] = torch.eye(16, dtype=torch.float64)
        elif name == "weight_hh_l1":
            entries[name] = torch.zeros(shape, dtype=torch.float64)
        else:
            entries[name] = 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)
    params, _ = fm.from_state_dict(spec, entries)
    x = torch.rand(7, 5, 4, generator=g, dtype=torch.float64)
    layer0 = fm.apply(params, x)[0]
    assert layer0.min() > 0
    out = fm.apply(params, x, key=key, train=True)[0]
    want = keep_mask(fm.fold_in(key, 0), 1 - p, tuple(out.shape))
    assert torch.equal(out != 0, want)
    torch.testing.assert_close(out[want], layer0[want] / (1 - p), atol=1e-12, rtol=1e-12)
