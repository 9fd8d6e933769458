"""MultiheadAttention (``_attention.py``, ``_attention_kernel.py``) against
torch.nn.MultiheadAttention on the same weights.

Attention here runs torch's own sequence of ops (the regular, non-fast path), but BLAS
rounds the last bit differently for tensors at other addresses, so outputs agree to a few
float32 ulps rather than exactly: ``CLOSE`` below. torch's fast path (native attention)
is another kernel: ``FAST``. Configs, files, the torch.nn round trip and compile:
tests/test_contract.py.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._spec import field_values
from funcmodels.nn import _attention as attention_module
from tests.helpers import causal, randomised, torch_run, twin

nn = fm.nn
CLOSE = {"atol": 2e-6, "rtol": 1e-5}
FAST = {"atol": 1e-5, "rtol": 1e-5}
pytestmark = [
    # torch's own warnings about its fast paths and about mixing bool and float masks
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
    pytest.mark.filterwarnings("ignore:Converting mask without torch.bool dtype"),
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


@st.composite
def attention_cases(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    e = heads * draw(st.integers(1, 3))
    separate = draw(st.booleans())
    kdim = draw(st.integers(1, 5)) if separate else None
    vdim = draw(st.integers(1, 5)) if separate else None
    spec = nn.MultiheadAttention(
        e,
        heads,
        bias=draw(st.booleans()),
        add_bias_kv=draw(st.booleans()),
        add_zero_attn=draw(st.booleans()),
        kdim=kdim,
        vdim=vdim,
        batch_first=draw(st.booleans()),
    )
    return spec, {
        "batched": draw(st.booleans()),
        "self": not separate and draw(st.booleans()),
        "sizes": (draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 3))),
        "padding": draw(st.sampled_from([None, "bool", "float"])),
        "mask": draw(st.sampled_from([None, "bool", "float", "float3d"])),
        "need_weights": draw(st.booleans()),
        "average": draw(st.booleans()),
        "train": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
    }


def attention_inputs(spec, case) -> dict:
    """torch's forward arguments for one case; masks leave key 0 of every row visible."""
    lq, s, n = case["sizes"]
    seed = case["seed"]
    e, h = spec.embed_dim, spec.num_heads
    if case["self"]:
        s = lq

    def seq(length, dim, k):
        if not case["batched"]:
            return randn(length, dim, seed=seed + k)
        return randn(*((n, length) if spec.batch_first else (length, n)), dim, seed=seed + k)

    query = seq(lq, e, 0)
    args = {"query": query}
    if not case["self"]:
        args["key"], args["value"] = seq(s, spec.kdim, 1), seq(s, spec.vdim, 2)
    batch = (n,) if case["batched"] else ()
    if case["padding"] == "bool":
        pad = torch.rand(*batch, s, generator=gen(seed + 3)) < 0.4
        args["key_padding_mask"] = pad.index_fill(-1, torch.tensor([0]), False)
    elif case["padding"] == "float":
        args["key_padding_mask"] = randn(*batch, s, seed=seed + 3)
    if case["mask"] == "bool":
        mask = torch.rand(lq, s, generator=gen(seed + 4)) < 0.4
        args["attn_mask"] = mask.index_fill(-1, torch.tensor([0]), False)
    elif case["mask"] == "float":
        args["attn_mask"] = randn(lq, s, seed=seed + 4)
    elif case["mask"] == "float3d":
        args["attn_mask"] = randn(n * h if case["batched"] else h, lq, s, seed=seed + 4)
    args["need_weights"] = case["need_weights"]
    args["average_attn_weights"] = case["average"]
    return args


@settings(max_examples=80, deadline=None)
@given(attention_cases())
def test_attention_matches_torch(case):
    spec, case = case
    module = torch.nn.MultiheadAttention(**field_values(spec)).train(case["train"])
    params, _ = twin(spec, case["seed"], module=module)
    args = attention_inputs(spec, case)
    q = args["query"]
    k, v = args.get("key", q), args.get("value", q)
    rest = {n: a for n, a in args.items() if n not in ("query", "key", "value")}
    got = fm.apply(params, args, train=case["train"])
    want = torch_run(module, q, k, v, **rest)
    if case["need_weights"]:
        torch.testing.assert_close(got[0], want[0], **CLOSE)
        torch.testing.assert_close(got[1], want[1], **CLOSE)
    else:
        torch.testing.assert_close(got, want[0], **CLOSE)
    if not case["train"]:
        fast = torch_run(module, q, k, v, fast=True, **rest)
        torch.testing.assert_close(got[0] if case["need_weights"] else got, fast[0], **FAST)
    if case["self"] and len(args) == 3:  # a bare tensor is self-attention
        out = fm.apply(params, q, train=case["train"])
        torch.testing.assert_close(out, got[0] if case["need_weights"] else got, **CLOSE)


def test_fast_path_is_taken_and_matches():
    # The native kernel runs for this setting (batch first, self-attention, even heads, no
    # autograd); it is another kernel, so the tolerance is FAST.
    spec = nn.MultiheadAttention(8, 2, batch_first=True)
    module = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    params, _ = twin(spec, module=module)
    x = randn(3, 5, 8)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    for weights in (False, True):
        args = {"query": x, "key_padding_mask": pad, "need_weights": weights}
        with torch.autograd.profiler.profile() as prof:
            want = torch_run(module, x, x, x, fast=True, key_padding_mask=pad, need_weights=weights)
        assert any("native_multi_head_attention" in e.name for e in prof.function_events)
        got = fm.apply(params, args)
        torch.testing.assert_close(got[0] if weights else got, want[0], **FAST)
        if weights:
            torch.testing.assert_close(got[1], want[1], **FAST)


def test_is_causal_is_torch_hint():
    spec = nn.MultiheadAttention(8, 2, batch_first=True)
    module = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    params, _ = twin(spec, module=module)
    x = randn(2, 5, 8)
    with_hint = fm.apply(params, {"query": x, "attn_mask": causal(5), "is_causal": True})
    plain = fm.apply(params, {"query": x, "attn_mask": causal(5)})
    torch.testing.assert_close(with_hint, plain, **CLOSE)
    want = torch_run(module, x, x, x, attn_mask=causal(5), is_causal=True, need_weights=False)
    torch.testing.assert_close(with_hint, want[0], **CLOSE)
    # The hint wins over a mask that is not causal, as in torch (no padding, no weights).
    other = randn(5, 5, seed=3)
    got = fm.apply(params, {"query": x, "attn_mask": other, "is_causal": True})
    torch.testing.assert_close(got, with_hint, **CLOSE)
    with pytest.raises(ValueError, match=r"\(MultiheadAttention\): is_causal=True .* needs"):
        fm.apply(params, {"query": x, "is_causal": True})


def test_ordinary_path_runs_scaled_dot_product_attention(monkeypatch):
    # The kernel is looked up on torch.nn.functional at call time, where torch's own
    # layers find it too: the torch references are computed before it is wrapped.
    spec = nn.MultiheadAttention(8, 2, batch_first=True, dropout=0.2)
    module = torch.nn.MultiheadAttention(8, 2, batch_first=True, dropout=0.2).eval()
    params, _ = twin(spec, module=module)
    x, kv = randn(3, 5, 8), randn(3, 6, 8, seed=1)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    args = {"query": x, "key": kv, "value": kv, "key_padding_mask": pad}
    want = torch_run(module, x, kv, kv, key_padding_mask=pad, need_weights=False)[0]
    want_causal = torch_run(module, x, x, x, attn_mask=causal(5), need_weights=False)[0]
    before = fm.apply(params, {**args, "need_weights": False})
    calls = []
    kernel = F.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(a[0].shape)
        return kernel(*a, **kw)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting)
    got = fm.apply(params, {**args, "need_weights": False})
    assert calls == [(3, 2, 5, 4)]  # (N, H, L, head_dim)
    assert torch.equal(got, before)
    torch.testing.assert_close(got, want, **CLOSE)
    got = fm.apply(params, {"query": x, "attn_mask": causal(5), "is_causal": True})
    assert len(calls) == 2
    torch.testing.assert_close(got, want_causal, **CLOSE)
    # the explicit softmax: weights asked for, dropout in train mode, under vmap
    torch.testing.assert_close(fm.apply(params, {**args, "need_weights": True})[0], want, **CLOSE)
    fm.apply(params, {**args, "need_weights": False}, key=fm.key(0), train=True)
    vmapped = vmap(lambda a: fm.apply(params, a))(args)  # one example each
    torch.testing.assert_close(vmapped, before, **CLOSE)
    assert len(calls) == 2
    # the transformer layers attend through it too: once per attention block
    layer, _ = randomised(nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True))
    fm.apply(layer, {"tgt": x, "memory": kv, "tgt_mask": causal(5)})
    assert len(calls) == 4


def test_train_mode_dropout_drops_attention_weights_from_the_key():
    p = 0.3
    spec = nn.MultiheadAttention(8, 2, dropout=p, batch_first=True)
    params, _ = randomised(spec)
    x = randn(16, 6, 8)
    args = {"query": x, "need_weights": True, "average_attn_weights": False}
    _, eval_w = fm.apply(params, args)
    rng = torch.get_rng_state()
    out, w = fm.apply(params, args, key=fm.key(5), train=True)
    assert torch.equal(torch.get_rng_state(), rng)
    # As torch returns them: the weights after dropout, kept ones scaled by 1 / (1 - p).
    kept = w != 0
    torch.testing.assert_close(w[kept], eval_w[kept] / (1 - p), **CLOSE)
    n = w.numel()
    assert abs((~kept).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # The output is the dropped weights applied to the values, projected.
    e, h = 8, 2
    v = F.linear(x, params["in_proj_weight"][2 * e :], params["in_proj_bias"][2 * e :])
    heads = v.reshape(16, 6, h, e // h).transpose(1, 2)
    mixed = (w @ heads).transpose(1, 2).reshape(16, 6, e)
    want = F.linear(mixed, params["out_proj.weight"], params["out_proj.bias"])
    torch.testing.assert_close(out, want, **CLOSE)
    again = fm.apply(params, args, key=fm.key(5), train=True)[1]
    other = fm.apply(params, args, key=fm.key(6), train=True)[1]
    assert torch.equal(again, w) and not torch.equal(other, w)
    # torch's module does the same with its own generator: same structure.
    module = torch.nn.MultiheadAttention(8, 2, dropout=p, batch_first=True)
    module.load_state_dict(fm.to_state_dict(params))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, tw = module(x, x, x, need_weights=True, average_attn_weights=False)
    tkept = tw != 0
    torch.testing.assert_close(tw[tkept], eval_w[tkept] / (1 - p), **CLOSE)
    assert abs((~tkept).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_attention_per_sample_gradients_match_a_loop():
    spec = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True, kdim=5, vdim=3)
    params, _ = randomised(spec)
    q, k, v = randn(4, 3, 8), randn(4, 6, 5, seed=1), randn(4, 6, 3, seed=2)
    pad = torch.zeros(4, 6, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 1] = True

    def loss(p, qi, ki, vi, mi):
        args = {"query": qi, "key": ki, "value": vi, "key_padding_mask": mi}
        out, w = fm.apply(p, {**args, "need_weights": True})
        return out.square().sum() + w[:, -1].sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0))(params, q, k, v, pad)
    for i in range(4):
        want = grad(loss)(params, q[i], k[i], v[i], pad[i])
        for name in fm.to_state_dict(params):
            torch.testing.assert_close(got[name][i], want[name], atol=1e-5, rtol=1e-4)


def test_init_is_torch_default():
    for kwargs in ({}, {"kdim": 24, "vdim": 40, "add_bias_kv": True}):
        spec = nn.MultiheadAttention(32, 4, **kwargs)
        ours = fm.to_state_dict(fm.init(fm.key(1), spec))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            theirs = torch.nn.MultiheadAttention(32, 4, **kwargs).state_dict()
        assert list(ours) == list(theirs)
        for name, t in ours.items():
            assert t.shape == theirs[name].shape
            if not theirs[name].any():
                assert not t.any(), name  # the zero biases
                continue
            a, b = t.flatten().double().numpy(), theirs[name].flatten().double().numpy()
            assert scipy.stats.ks_2samp(a, b).pvalue > 1e-3, name


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (lambda: nn.MultiheadAttention(6, 4), ValueError, "num_heads=4 must divide embed_dim=6"),
        (lambda: nn.MultiheadAttention(8, 2, dropout=1.5), ValueError, "dropout must be in"),
        (lambda: nn.MultiheadAttention(8, 2, kdim=0), ValueError, "kdim must be positive"),
    ],
)
def test_construction_checks(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_forward_checks_name_the_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True)))
    x = randn(2, 5, 8)
    at = r"layer '0' \(MultiheadAttention\): .*"
    cases = [
        ({"query": x, "keys": x}, ValueError, at + r"unknown argument\(s\) \['keys'\]"),
        ({"key": x}, ValueError, at + r"missing argument\(s\) \['query'\]"),
        ({"query": x, "need_weights": 1}, TypeError, at + "argument 'need_weights' must be a bool"),
        (randn(2, 5, 6), ValueError, at + r"expected query with 8 features.*\(2, 5, 6\)"),
        (randn(5, 8)[0], ValueError, at + r"expected query of shape"),
        (
            {"query": x, "key": randn(2, 4, 8), "value": x},
            ValueError,
            at + "expected key and value",
        ),
        ({"query": x, "key": randn(3, 5, 8)}, ValueError, at + "same batch size"),
        (
            {"query": x, "key_padding_mask": torch.zeros(2, 4, dtype=torch.bool)},
            ValueError,
            at + r"key_padding_mask of shape \(2, 5\)",
        ),
        ({"query": x, "attn_mask": torch.zeros(5, 4)}, ValueError, at + r"attn_mask of shape"),
        ({"query": x, "attn_mask": torch.zeros(5, 5, dtype=torch.int64)}, TypeError, "bool or"),
        ([x], TypeError, at + "expected a tensor"),
    ]
    for arg, exc, message in cases:
        with pytest.raises(exc, match=message):
            fm.apply(params, arg)


def test_attention_inside_a_torch_sequential_runs_as_the_spec_does():
    """torch's layer takes (query, key, value) and returns a pair: the module to_module
    makes also takes the query alone (or fm's mapping) and returns what fm.apply does, so
    an nn.Sequential holding it runs; called torch's way it stays torch's layer."""
    spec = nn.Sequential(
        nn.Embedding(10, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)
    )
    params, _ = randomised(spec)
    module = transforms.to_module(params).eval()
    assert isinstance(module, torch.nn.Sequential)
    x = torch.randint(0, 10, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), **CLOSE)
        exported = torch.export.export(module, (x,)).module()
        torch.testing.assert_close(exported(x), fm.apply(params, x), **CLOSE)
    attn = fm.Params(spec.child("1"), {k[2:]: v for k, v in params.flat().items() if k[:2] == "1."})
    q, kv = randn(2, 4, 8, seed=1), randn(2, 6, 8, seed=2)
    mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    args = {"query": q, "key": kv, "value": kv, "key_padding_mask": mask, "need_weights": True}
    with torch.no_grad():
        got, weights = module[1](args)
        want, want_weights = fm.apply(attn, args)
        torch.testing.assert_close(got, want, **CLOSE)
        torch.testing.assert_close(weights, want_weights, **CLOSE)
        torch_way = module[1](q, kv, kv, key_padding_mask=mask)  # torch's defaults
        assert isinstance(torch_way, tuple) and torch_way[1] is not None
        torch.testing.assert_close(torch_way[0], want, **CLOSE)
    back, _ = transforms.from_module(module)
    assert back.spec == spec
