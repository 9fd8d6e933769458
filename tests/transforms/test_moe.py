"""transforms.MoE: fidelity to the seed article's routing, both dispatches, capacity,
aux losses, per-sample gradients, checkpoints, files and the torch bridge.

References: a per-token loop written from the seed article's semantics (gate logits, top-k,
mixing weights, the weighted sum of the chosen experts' outputs), each expert run alone
with its own params. Outputs agree within ``atol=1e-5, rtol=1e-4`` in float32 (the experts
run on groups of tokens or in one batched matmul, so sums are ordered differently), and
``1e-10`` in float64.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms

nn = fm.nn
TOL = dict(atol=1e-5, rtol=1e-4)


def expert(d=8, h=12):
    return nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))


def moe(d=8, e=4, k=2, **kw):
    return transforms.MoE(expert(d), num_experts=e, top_k=k, **kw)


def reference(params, x, *, k, normalize, capacity=None):
    """The seed article's routing, token by token; ``capacity`` drops assignments in
    priority order (every token's first choice before any second choice)."""
    spec = params.spec
    e = spec.num_experts
    gate = fm.Params(
        spec.child("gate"), {n[5:]: t for n, t in params.flat().items() if n.startswith("gate.")}
    )
    experts = fm.tree.unstack(
        fm.Params(
            spec.child("experts"),
            {n[8:]: t for n, t in params.flat().items() if n.startswith("experts.")},
        )
    )
    tokens = x.reshape(-1, x.shape[-1])
    logits = fm.apply(gate, tokens).double()
    top_v, top_i = torch.topk(logits, k, dim=-1)
    w = torch.softmax(top_v, -1) if normalize else torch.softmax(logits, -1).gather(-1, top_i)
    kept = torch.ones_like(top_i, dtype=torch.bool)
    if capacity is not None:
        used = [0] * e
        for j in range(k):
            for t in range(tokens.shape[0]):
                ex = int(top_i[t, j])
                kept[t, j] = used[ex] < capacity
                used[ex] += 1
    out = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        for j in range(k):
            if kept[t, j]:
                y = fm.apply(experts[int(top_i[t, j])], tokens[t : t + 1])[0]
                out[t] += w[t, j].to(out.dtype) * y
    return out.reshape(x.shape)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("capacity_factor", [None, 10.0])
def test_matches_the_articles_routing(normalize, capacity_factor):
    spec = moe(normalize=normalize, capacity_factor=capacity_factor)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (3, 5, 8))
    got = fm.apply(params, x)
    torch.testing.assert_close(got, reference(params, x, k=2, normalize=normalize), **TOL)


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 12),
    d=st.integers(1, 6),
    e=st.integers(1, 5),
    k_frac=st.floats(0, 1),
    normalize=st.booleans(),
    cap=st.sampled_from([None, 0.3, 1.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_eager_and_transformed_paths_agree_with_the_reference(
    t, d, e, k_frac, normalize, cap, seed
):
    k = 1 + int(k_frac * (e - 1))
    spec = transforms.MoE(
        expert(d, 3), num_experts=e, top_k=k, normalize=normalize, capacity_factor=cap
    )
    params = fm.init(fm.key(seed), spec).to(torch.float64)
    x = fm.random.normal(fm.key(seed + 1), (t, d), torch.float64)
    eager = fm.apply(params, x)
    # The same call traced by a transform takes the static-shape path.
    transformed = vmap(lambda xx: fm.apply(params, xx))(x[None])[0]
    c = None if cap is None else math.ceil(cap * t * k / e)
    want = reference(params, x, k=k, normalize=normalize, capacity=c)
    torch.testing.assert_close(eager, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(transformed, want, atol=1e-10, rtol=1e-10)


def test_capacity_overflow_drops_assignments_and_reports_it():
    spec = moe(e=4, k=1, capacity_factor=0.5)
    params = fm.init(fm.key(0), spec)
    # A gate that sends every token to expert 2 first.
    gate = torch.zeros(4, 8)
    gate[2] = 1.0
    params = fm.Params(spec, {**params.flat(), "gate.weight": gate})
    x = fm.random.uniform(fm.key(1), (8, 8)) + 0.1  # positive: expert 2's logit is largest
    out = fm.run(params, x)
    cap = math.ceil(0.5 * 8 * 1 / 4)  # 1 slot per expert
    assert out.aux[""]["expert_counts"].tolist() == [0, 0, 8, 0]
    torch.testing.assert_close(out.aux[""]["dropped_fraction"], torch.tensor(7 / 8))
    assert torch.count_nonzero(out.out.abs().sum(-1)).item() == cap  # the dropped add 0
    torch.testing.assert_close(
        out.out, reference(params, x, k=1, normalize=True, capacity=cap), **TOL
    )


def test_aux_outputs_against_a_hand_computation():
    spec = moe(e=3, k=2)
    params = fm.init(fm.key(2), spec)
    x = fm.random.normal(fm.key(3), (2, 4, 8))
    aux = fm.run(params, x).aux[""]
    logits = x.reshape(-1, 8) @ params["gate.weight"].T
    probs = torch.softmax(logits, -1)
    idx = torch.topk(logits, 2, -1).indices
    counts = torch.tensor([(idx == i).sum().item() for i in range(3)])
    f = counts.float() / (8 * 2)
    torch.testing.assert_close(aux["load_balance_loss"], 3 * (f * probs.mean(0)).sum())
    torch.testing.assert_close(aux["z_loss"], (torch.logsumexp(logits, -1) ** 2).mean())
    assert (
        aux["expert_counts"].tolist() == counts.tolist()
        and aux["expert_counts"].dtype == torch.int64
    )
    assert aux["dropped_fraction"].item() == 0.0
    total = transforms.moe_aux_loss({"a": aux, "b": aux, "other": {"x": torch.ones(())}})
    want = 2 * (1e-2 * aux["load_balance_loss"] + 1e-3 * aux["z_loss"])
    torch.testing.assert_close(total, want)
    assert transforms.moe_aux_loss({}).item() == 0.0


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_per_sample_gradients_equal_a_loop(capacity_factor):
    spec = nn.Sequential({"moe": moe(capacity_factor=capacity_factor), "head": nn.Linear(8, 2)})
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 6, 8))  # 4 examples of 6 tokens
    y = fm.random.normal(fm.key(2), (4, 6, 2))

    def loss(p, xi, yi):
        out = fm.run(p, xi)
        return ((out.out - yi) ** 2).sum() + transforms.moe_aux_loss(out.aux)

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        want = grad(loss)(params, x[i], y[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


def test_whole_batch_gradients_take_the_sorted_dispatch(monkeypatch):
    """Under ``grad`` alone the routing is not batched, so the dropless layer keeps the
    sorted dispatch (each expert on its own tokens, not on all T); its gradients equal
    those of the static path with room for every token (float64, 1e-10)."""
    params = fm.tree.map(lambda t: t.double(), fm.init(fm.key(0), moe(e=4, k=2)))
    roomy = fm.Params(dataclasses.replace(params.spec, capacity_factor=2.0), params.flat())
    x = fm.random.normal(fm.key(1), (3, 5, 8), dtype=torch.float64)

    def loss(p):
        return fm.apply(p, x).square().sum()

    want = grad(loss)(roomy)  # C = ceil(2 * T * 2 / 4) = T: nothing dropped
    jac_want = torch.func.jacrev(lambda t: fm.apply(roomy, t))(x[0])

    def refuse(*args, **kwargs):
        raise AssertionError("the static dispatch ran")

    monkeypatch.setattr(transforms.MoE, "_capacity", refuse)
    got = grad(loss)(params)
    for name, g in want.flat().items():
        torch.testing.assert_close(got[name], g, atol=1e-10, rtol=1e-10, msg=name)
    jac = torch.func.jacrev(lambda t: fm.apply(params, t))(x[0])
    torch.testing.assert_close(jac, jac_want, atol=1e-10, rtol=1e-10)


def test_jitter_draws_from_the_key_in_train_mode_only():
    spec = moe(jitter=0.3)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (16, 8))
    a = fm.run(params, x, key=fm.key(5), train=True).aux[""]["load_balance_loss"]
    b = fm.run(params, x, key=fm.key(5), train=True).aux[""]["load_balance_loss"]
    c = fm.run(params, x, key=fm.key(6), train=True).aux[""]["load_balance_loss"]
    clean = fm.run(params, x).aux[""]["load_balance_loss"]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    with pytest.raises(ValueError, match=r"layer '<root>' \(MoE\): needs a PRNG key"):
        fm.apply(params, x, train=True)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: moe(e=2, k=3), "MoE: top_k=3 exceeds num_experts=2"),
        (lambda: moe(k=0), "MoE: top_k must be positive"),
        (lambda: moe(capacity_factor=0.0), "MoE: capacity_factor must be positive"),
        (
            lambda: moe(gate=nn.Linear(8, 5, bias=False)),
            r"MoE: the gate maps \(8,\) to \(5,\), expected \(4,\)",
        ),
        (
            lambda: transforms.MoE(nn.Sequential(nn.Linear(8, 6)), num_experts=4),
            r"MoE: an expert maps \(8,\) to \(6,\), expected \(8,\)",
        ),
        (lambda: moe(gate=nn.Linear(7, 4)), r"MoE: the gate does not take tokens of width 8"),
        (lambda: moe(jitter=1.0), r"MoE: jitter must be a number in \[0, 1\)"),
    ],
)
def test_bad_settings_are_refused_before_any_tensor(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_width_inferred_from_the_input_shape():
    spec = transforms.MoE(
        nn.Sequential(nn.Linear(out_features=4), nn.ReLU(), nn.Linear(4, 6)), num_experts=2, top_k=1
    )
    assert spec.dim is None
    params = fm.init(fm.key(0), spec, input_shape=(3, 6))
    assert params.spec.dim == 6 and params["gate.weight"].shape == (2, 6)
    assert params["experts.0.weight"].shape == (2, 4, 6)
    with pytest.raises(ValueError, match=r"layer '<root>' \(MoE\): expected tokens of width 6"):
        fm.shapes(params.spec, (3, 5))


def article_module(d=8, hidden=(12, 10), e=4):
    """The seed article's DynamicRouterNetwork layout: an MLP gate, a ModuleList of experts."""
    m = torch.nn.Module()
    m.gate = torch.nn.Sequential(
        torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, e)
    )
    m.experts = torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.Linear(d, hidden[0]),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden[0], hidden[1]),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden[1], d),
        )
        for _ in range(e)
    )
    return m


def test_the_articles_checkpoint_loads_and_computes_its_routing():
    torch.manual_seed(0)
    m = article_module()
    spec = transforms.MoE(
        expert=nn.Sequential(
            nn.Linear(8, 12),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(12, 10),
            nn.ReLU(),
            nn.Linear(10, 8),
        ),
        num_experts=4,
        top_k=2,
        gate=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4)),
    )
    params, _ = fm.from_state_dict(spec, m.state_dict())
    assert params["experts.0.weight"].shape == (4, 12, 8)
    x = fm.random.normal(fm.key(1), (2, 5, 8))
    m.eval()
    with torch.no_grad():
        tokens = x.reshape(-1, 8)
        top_v, top_i = torch.topk(m.gate(tokens), 2, dim=-1)
        w = F.softmax(top_v, dim=-1)
        want = torch.zeros_like(tokens)
        for t in range(tokens.shape[0]):
            for j in range(2):
                want[t] += w[t, j] * m.experts[int(top_i[t, j])](tokens[t : t + 1])[0]
    torch.testing.assert_close(fm.apply(params, x), want.reshape(x.shape), **TOL)


@pytest.mark.parametrize(
    "layer",
    [
        moe(capacity_factor=1.5, normalize=False),
        # dropless, with the article's MLP gate: nested gate and expert specs round trip
        moe(gate=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))),
    ],
    ids=["capacity", "dropless-mlp-gate"],
)
def test_config_files_and_the_torch_bridge(layer, tmp_path):
    spec = nn.Sequential({"embed": nn.Linear(4, 8), "moe": layer, "head": nn.Linear(8, 3)})
    assert fm.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    assert spec.to_config()[1]["type"] == "moe"
    params = fm.init(fm.key(0), spec)
    fm.save(tmp_path / "moe.safetensors", params)
    loaded, _ = fm.load(tmp_path / "moe.safetensors")
    x = fm.random.normal(fm.key(1), (2, 5, 4))
    assert loaded.spec == spec and torch.equal(fm.apply(loaded, x), fm.apply(params, x))
    module = transforms.to_module(params)
    assert list(module.state_dict()) == list(fm.to_state_dict(params))
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), atol=0, rtol=0)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), fm.apply(params, x), **TOL)
    back, _ = transforms.from_module(module)
    assert back.spec == spec


@pytest.mark.slow
def test_capacity_mode_compiles_to_one_graph():
    import torch._dynamo

    torch._dynamo.reset()
    params = fm.init(fm.key(0), moe(capacity_factor=1.25))
    x = fm.random.normal(fm.key(1), (16, 8))

    def f(p, xx):
        out = fm.run(p, xx)
        return out.out, transforms.moe_aux_loss(out.aux)

    explained = torch._dynamo.explain(f)(params, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(params, x)
    want = f(params, x)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    torch._dynamo.reset()
