"""The converter tables of the torch bridge, layer family by family: settings that round
trip (LayerNorm without affine, convolution and pool settings), settings the spec cannot
express and foreign children refused with the module named, the sparse layers both ways
and an ``nn.Linear`` pruned by ``torch.nn.utils.prune`` read as a SparseLinear.

References: ``fm.apply`` for outputs; round trips exact (``torch.equal``). Tolerances:
outputs within ``atol=1e-6, rtol=1e-5`` (the same float32 kernels run on both sides, so
only summation order may differ) or torch's float32 defaults (``assert_close``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import funcmodels as fm
import transforms
from tests.helpers import MODELS, example_input, randomised
from tests.transforms.bridge.reference import OUT_TOL, assert_same_tensors
from transforms.bridge import ResidualBlockModule


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_without_affine_round_trips_to_an_equal_spec(bias):
    # torch's LayerNorm has no bias flag to read back when it is not affine.
    spec = fm.nn.Sequential(fm.nn.LayerNorm(4, elementwise_affine=False, bias=bias))
    params, state = fm.init_with_state(fm.key(0), spec)
    back, _ = transforms.from_module(transforms.to_module(params, state))
    assert back.spec == spec


@settings(max_examples=20, deadline=None)
@given(
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.sampled_from([0, 1, (1, 0), "valid", "same"]),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
    padding_mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    pool=st.sampled_from(["max", "avg", "adaptive"]),
)
def test_conv_and_pool_settings_round_trip(
    kernel, stride, padding, dilation, groups, bias, padding_mode, pool
):
    if padding == "same":
        stride = 1
    conv = fm.nn.Conv2d(
        2, 4, kernel, stride, padding, dilation, groups, bias, padding_mode=padding_mode
    )
    pools = {
        "max": fm.nn.MaxPool2d(2, stride=1, padding=1, dilation=dilation, ceil_mode=True),
        "avg": fm.nn.AvgPool2d((2, 1), padding=(1, 0), divisor_override=3),
        "adaptive": fm.nn.AdaptiveAvgPool2d((2, None)),
    }
    spec = fm.nn.Sequential(conv, pools[pool])
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    back, _ = transforms.from_module(module)
    assert back.spec == spec
    assert_same_tensors(back.flat(), params.flat())
    x = example_input((2, 2, 7, 6))
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), **OUT_TOL)


@pytest.mark.parametrize(
    ("layer", "exc", "match"),
    [
        (nn.MaxPool2d(2, return_indices=True), ValueError, "return_indices"),
        (nn.BatchNorm2d(4, bias=False), ValueError, "parameters"),
        (nn.Softmax(), TypeError, "dim must be an int"),
    ],
)
def test_settings_the_spec_cannot_express_are_errors(layer, exc, match):
    module = nn.Sequential(nn.Identity(), layer)
    kind = type(layer).__name__
    with pytest.raises(exc, match=rf"module '1' \({kind}\).*{match}"):
        transforms.from_module(module)


def test_residual_module_with_foreign_child_is_an_error():
    params, state = randomised(MODELS["block"][0])
    module = transforms.to_module(params, state)
    module.activation = nn.Tanh()
    with pytest.raises(ValueError, match=r"module '<root>' \(ResidualBlockModule\).*activation"):
        transforms.from_module(module)
    assert isinstance(transforms.to_module(params, state), ResidualBlockModule)


# -- sparse layers, and a pruned nn.Linear -----------------------------------------------


def test_the_torch_bridge_both_ways():
    spec = fm.nn.Sequential(
        transforms.SparseLinear(12, 6, sparsity=0.5), fm.nn.ReLU(), fm.nn.Linear(6, 2)
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (3, 12))
    module = transforms.to_module(params, state)
    assert isinstance(module[0], transforms.bridge.SparseLinearModule)
    assert set(module.state_dict()) == set(fm.to_state_dict(params, state))
    torch.testing.assert_close(module(x), fm.apply(params, x, state=state))
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(x), module(x))
    back, back_state = transforms.from_module(module)
    assert back.spec == params.spec and torch.equal(back_state["0.mask"], state["0.mask"])

    cp, cs = transforms.compress(params, state, crossover=0.0)
    cmodule = transforms.to_module(cp, cs)
    with torch.no_grad():
        torch.testing.assert_close(cmodule(x), fm.apply(params, x, state=state))
    torch.testing.assert_close(cmodule(x.requires_grad_()), fm.apply(params, x, state=state))
    assert transforms.from_module(cmodule)[0].spec == cp.spec


def test_from_module_reads_a_torch_pruned_linear():
    torch.manual_seed(0)
    pruned = torch.nn.Linear(10, 7)
    prune.l1_unstructured(pruned, "weight", amount=0.6)
    params, state = transforms.from_module(torch.nn.Sequential(pruned, torch.nn.ReLU()))
    assert isinstance(params.spec["0"], transforms.SparseLinear)
    assert torch.equal(state["0.mask"], pruned.weight_mask.bool())
    x = torch.randn(4, 10)
    torch.testing.assert_close(fm.apply(params, x, state=state), pruned(x).relu())
    # a state_dict of a pruned model loads into a SparseLinear spec directly
    p2, s2 = fm.from_state_dict(params.spec, torch.nn.Sequential(pruned).state_dict())
    assert torch.equal(p2["0.weight"], pruned.weight_orig.detach())
