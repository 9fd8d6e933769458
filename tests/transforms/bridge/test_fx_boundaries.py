"""Where torch.fx meets the bridge: a GraphModule given to from_module is named as one
(with what to pass instead) rather than by the class name it borrows; a converted layer
that fx cannot trace through (an MoE's routing) is one leaf call inside a parent, and
traced as the root it names the real cause. Tolerance: the same kernels run, bitwise."""

from __future__ import annotations

import pytest
import torch

import funcmodels as fm
import transforms

nn = fm.nn


def test_a_fused_graph_is_named_as_a_graph_module(tmp_path):
    spec = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    params, state = fm.init_with_state(fm.key(0), spec)
    fused = transforms.fuse(transforms.to_module(params, state).eval())
    assert type(fused).__name__ == "Sequential"  # what the old message blamed
    p2, s2 = transforms.from_module(fused)
    assert repr(p2.spec) == "TorchModule(torch.fx.GraphModule)"
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fm.apply(p2, x, state=s2), fused(x), atol=0, rtol=0)
    with pytest.raises(
        ValueError,
        match=r"it is a torch.fx GraphModule \(traced from a Sequential, whose class name it "
        r"takes; .*transforms.from_module\(module\), then transforms.fold_batchnorm",
    ):
        fm.save(tmp_path / "graph.safetensors", p2, s2)


def moe_spec():
    expert = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    return transforms.MoE(expert=expert, num_experts=4, top_k=2)


def test_a_converted_moe_is_one_leaf_call_for_fx():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(8, 8), moe_spec(), nn.ReLU()))
    module = transforms.to_module(params).eval()
    traced = torch.fx.symbolic_trace(module)
    calls = [
        n
        for n in traced.graph.nodes
        if n.op == "call_function" and "run_functional" in str(n.target)
    ]
    assert len(calls) == 1
    assert set(traced.state_dict()) == set(module.state_dict())
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(traced(x), module(x), atol=0, rtol=0)


def test_tracing_a_converted_moe_as_the_root_names_the_cause():
    module = transforms.to_module(fm.init(fm.key(0), moe_spec())).eval()
    with pytest.raises(
        TypeError,
        match=r"torch.fx cannot trace this converted MoE as the root module: .*\(ValueError: "
        r"layer '<root>' \(MoE\): expected tokens \(..., 8\), got Proxy\)\. Inside a parent "
        r"it is one leaf call: trace torch.nn.Sequential\(module\)",
    ):
        torch.fx.symbolic_trace(module)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(module))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(traced(x), module(x), atol=0, rtol=0)
