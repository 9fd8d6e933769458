"""LayerNorm, GroupNorm, RMSNorm and LocalResponseNorm (``_norm.py``) against torch.nn.

References: the torch.nn module with the same weights; a loop of single-sample gradients
for vmap(grad). Tolerances: outputs exact where both sides call the same kernel;
per-sample gradients ``atol=1e-5, rtol=1e-4``. Configs, files, the torch.nn round trip and
compile: tests/test_contract.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin
from tests.layer_examples import BN3D, IN1D, NORMS

nn = fm.nn
EXACT = {"atol": 0.0, "rtol": 0.0}


@pytest.mark.parametrize("shape", [4, (3, 4)])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
def test_layernorm_matches_torch(shape, affine, bias):
    spec = fm.nn.LayerNorm(shape, elementwise_affine=affine, bias=bias)
    module = torch.nn.LayerNorm(shape, elementwise_affine=affine, bias=bias)
    params, _ = randomised(spec)
    torch_twin(module, params)
    assert spec.normalized_shape == ((shape,) if isinstance(shape, int) else shape)
    x = fm.random.normal(fm.key(1), (2, 3, 4))
    torch.testing.assert_close(fm.apply(params, x), module(x), atol=0, rtol=0)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), atol=0, rtol=0)


def test_layernorm_per_sample_grads_and_errors():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.LayerNorm(4))
    params, _ = randomised(spec)
    x = fm.random.normal(fm.key(1), (5, 3))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 4)))
    with pytest.raises(ValueError, match=r"layer '1' \(LayerNorm\).*\(\*, 4\).*\(5, 3\)"):
        fm.apply(fm.init(fm.key(0), fm.nn.Sequential(fm.nn.Identity(), fm.nn.LayerNorm(4))), x)
    with pytest.raises(ValueError, match="LayerNorm: normalized_shape"):
        fm.nn.LayerNorm((3, 0))


@settings(max_examples=20, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3, 6]),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    n=st.integers(1, 3),
    affine=st.booleans(),
)
def test_groupnorm_matches_torch_batched_and_unbatched(groups, spatial, n, affine):
    assume(6 // groups * math.prod(spatial) > 1)  # torch needs 2+ values per group
    spec = fm.nn.GroupNorm(groups, 6, affine=affine)
    module = torch.nn.GroupNorm(groups, 6, affine=affine)
    params, _ = randomised(spec)
    torch_twin(module, params)
    x = fm.random.normal(fm.key(n), (n, 6, *spatial))
    want = module(x)
    torch.testing.assert_close(fm.apply(params, x), want, atol=0, rtol=0)
    torch.testing.assert_close(fm.apply(params, x[0]), want[0], atol=1e-6, rtol=1e-6)


def test_groupnorm_per_sample_grads_on_unbatched_examples():
    spec = fm.nn.GroupNorm(2, 4)
    params, _ = randomised(spec)
    x = fm.random.normal(fm.key(1), (3, 4, 5))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (3, 4, 5)))


def test_groupnorm_errors():
    with pytest.raises(ValueError, match="GroupNorm: num_groups=4 must divide num_channels=6"):
        fm.nn.GroupNorm(4, 6)
    params = fm.init(fm.key(0), fm.nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match=r"layer '<root>' \(GroupNorm\).*\(N, 4, \*\).*\(3, 5\)"):
        fm.apply(params, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"\(GroupNorm\): expected more than 1 value per group"):
        fm.apply(fm.init(fm.key(0), fm.nn.GroupNorm(4, 4)), torch.ones(3, 4))


def test_layernorm_example_with_too_few_dims_names_the_layer():
    spec = fm.nn.Sequential(fm.nn.Flatten(), fm.nn.LayerNorm((3, 4)))
    with pytest.raises(
        ValueError,
        match=r"layer '1' \(LayerNorm\): expected one example of shape \(\*, 3, 4\), got \(12,\)",
    ):
        fm.shapes(spec, (12,))
    # An inferred normalized_shape needs one dim at least.
    with pytest.raises(
        ValueError, match=r"layer '<root>' \(LayerNorm\): expected one example of shape \(\*, D\)"
    ):
        fm.init(fm.key(0), fm.nn.LayerNorm(), input_shape=())
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape must have at least one dim"):
        fm.nn.LayerNorm(())


def test_groupnorm_scalar_example_names_the_layer():
    with pytest.raises(
        ValueError,
        match=r"layer '<root>' \(GroupNorm\): expected one example of shape \(C, \*\), got \(\)",
    ):
        fm.shapes(fm.nn.GroupNorm(2, 4), ())


def test_norms_after_a_layer_of_unknown_rank_get_their_sizes_at_init():
    # Without an input shape a config knows only the last dim after a Linear: the norms
    # pass the chain check with their sizes open, and init fills them from the example.
    config = [
        {"type": "linear", "params": {"in_features": 4, "out_features": 3}},
        {"type": "batchnorm1d"},
        {"type": "layer_norm"},
        {"type": "group_norm", "params": {"num_groups": 1}},
        {"type": "layer_norm", "params": {"normalized_shape": [2, 3]}},
    ]
    spec = fm.from_config(config)
    assert spec["layer_1"].num_features is None and spec["layer_2"].normalized_shape is None
    params, _ = fm.init_with_state(fm.key(0), spec, input_shape=(2, 4))
    assert params.spec["layer_1"] == fm.nn.BatchNorm1d(2)
    assert params.spec["layer_2"] == fm.nn.LayerNorm(3)
    assert params.spec["layer_3"] == fm.nn.GroupNorm(1, 2)
    assert fm.shapes(spec, (2, 4))["layer_4"] == (2, 3)
    # A trailing dim that contradicts a stated size is caught without the input shape.
    config[-1]["params"]["normalized_shape"] = [5]
    with pytest.raises(
        ValueError, match=r"config\[4\] .*: expected the trailing dims \(5,\) \(normalized_shape\)"
    ):
        fm.from_config(config)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([4, (4,), (3, 4), (2, 3, 4)]),
    eps=st.sampled_from([None, 1e-6, 0.1]),
    affine=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_rmsnorm_matches_torch(shape, eps, affine, dtype):
    spec = nn.RMSNorm(shape, eps=eps, elementwise_affine=affine)
    module = torch.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine, dtype=dtype)
    params, _ = randomised(spec, dtype=dtype)
    torch_twin(module, params)
    assert spec.normalized_shape == module.normalized_shape
    x = fm.random.normal(fm.key(1), (2, 2, 3, 4), dtype=dtype)
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[:0]), module(x[:0]), **EXACT)


def test_rmsnorm_default_eps_is_the_machine_epsilon():
    params = fm.init(fm.key(0), nn.RMSNorm(4, elementwise_affine=False))
    x = torch.tensor([[1e-4, 0.0, 0.0, 0.0]], dtype=torch.float64)
    rms = math.sqrt(1e-8 / 4 + torch.finfo(torch.float64).eps)
    torch.testing.assert_close(fm.apply(params.to(torch.float64), x)[0, 0].item(), 1e-4 / rms)


def test_rmsnorm_per_sample_grads_inference_and_errors():
    spec = nn.Sequential(nn.Linear(3, 4), nn.RMSNorm())
    params, _ = randomised(spec.resolve((3,)))
    assert params.spec["1"] == nn.RMSNorm(4)
    x = fm.random.normal(fm.key(1), (5, 3))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 4)))
    with pytest.raises(ValueError, match=r"layer '1' \(RMSNorm\): expected input \(\*, 5\)"):
        fm.apply(fm.init(fm.key(0), nn.Sequential(nn.Identity(), nn.RMSNorm(5))), x)
    with pytest.raises(ValueError, match=r"\(RMSNorm\): expected the trailing dims \(2, 4\)"):
        fm.shapes(nn.RMSNorm((2, 4)), (3, 4))
    with pytest.raises(ValueError, match="RMSNorm: normalized_shape must have at least one"):
        nn.RMSNorm(())
    with pytest.raises(ValueError, match="RMSNorm: eps must be in"):
        nn.RMSNorm(4, eps=-1.0)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 4, 3), (2, 6, 2, 3, 2), (0, 6, 3)])
def test_local_response_norm_matches_torch(size, shape):
    spec = nn.LocalResponseNorm(size, alpha=0.5, beta=0.6, k=2.0)
    module = torch.nn.LocalResponseNorm(size, alpha=0.5, beta=0.6, k=2.0)
    params = fm.init(fm.key(0), spec)
    x = 2 * fm.random.normal(fm.key(1), shape)
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    assert fm.shapes(spec, shape[1:]) == {"": shape[1:]}


def test_local_response_norm_per_sample_grads_after_a_conv_and_errors():
    spec = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.LocalResponseNorm(3), nn.Flatten(), nn.Linear(36, 2)
    )
    params, _ = randomised(spec)
    x = fm.random.normal(fm.key(1), (4, 2, 5, 5))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (4, 2)))
    lrn = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.LocalResponseNorm(2)))
    with pytest.raises(ValueError, match=r"layer '1' \(LocalResponseNorm\): expected input \(N, C"):
        fm.apply(lrn, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(LocalResponseNorm\): expected one example of shape"):
        fm.shapes(nn.LocalResponseNorm(2), (4,))
    with pytest.raises(ValueError, match="LocalResponseNorm: size must be positive"):
        nn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match="LocalResponseNorm: beta must be a finite"):
        nn.LocalResponseNorm(2, beta=math.inf)


@pytest.mark.parametrize(
    "spec, shape", [(NORMS, (5, 2, 5, 5)), (BN3D, (5, 2, 2, 3, 2)), (IN1D, (5, 2, 7))]
)
def test_summaries_count_torchs_parameters_and_buffers(spec, shape):
    # configs, files and the torch.nn round trips (train mode too): tests/test_contract.py
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    want = fm.apply(params, fm.random.normal(fm.key(1), shape), state=state)
    summary = fm.summary(spec, shape[1:])
    assert summary.trainable == sum(p.numel() for p in module.parameters())
    assert summary.state == sum(b.numel() for b in module.buffers())
    assert summary.rows[0].out_shape == tuple(want.shape[1:])


def test_from_module_reads_torch_settings():
    module = torch.nn.Sequential(
        torch.nn.InstanceNorm1d(3, eps=1e-3, momentum=None, track_running_stats=True),
        torch.nn.RMSNorm([2, 3], eps=None, elementwise_affine=False),
        torch.nn.LocalResponseNorm(4, alpha=1e-3, beta=0.5, k=2),
    )
    params, _ = transforms.from_module(module)
    assert [s for _, s in params.spec.layers] == [
        nn.InstanceNorm1d(3, eps=1e-3, momentum=None, track_running_stats=True),
        nn.RMSNorm((2, 3), elementwise_affine=False),
        nn.LocalResponseNorm(4, alpha=1e-3, beta=0.5, k=2.0),
    ]
