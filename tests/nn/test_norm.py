"""BatchNorm1d/2d, LayerNorm and GroupNorm against their torch.nn counterparts."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin


def copy_state(state):
    return {k: v.clone() for k, v in state.flat().items()}


BN_CASES = [
    (fm.nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3)),
    (fm.nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3, 5)),
    (fm.nn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5)),
]


@pytest.mark.parametrize("ours, theirs, shape", BN_CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_torch_over_train_steps_and_eval(ours, theirs, shape, momentum, affine):
    spec = ours(3, momentum=momentum, affine=affine)
    module = theirs(3, momentum=momentum, affine=affine)
    params, state = randomised(spec)
    torch_twin(module, params, state)
    assert list(fm.to_state_dict(params, state)) == list(module.state_dict())
    for step in range(3):
        x = fm.random.normal(fm.key(10 + step), shape) * 2 + 1
        x_before = x.clone()
        before = copy_state(state)
        out = fm.run(params, x, state=state, train=True)
        module.train()
        # Output: the same kernel as torch; running stats: same formula, reduction order
        # may differ by a rounding step.
        torch.testing.assert_close(out.out, module(x), atol=0, rtol=0)
        for name, buf in module.state_dict().items():
            got = fm.to_state_dict(params, out.state)[name]
            assert got.dtype == buf.dtype, name
            torch.testing.assert_close(got, buf, atol=1e-6, rtol=1e-6, msg=name)
        for name, t in state.flat().items():
            assert torch.equal(t, before[name]), f"input state {name} was mutated"
        assert torch.equal(x, x_before)
        state = out.state
    module.eval()
    x = fm.random.normal(fm.key(20), shape)
    # The running stats agree to a rounding step, so eval outputs do too.
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=1e-6, rtol=1e-6)
    torch_twin(module, params, state)
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=0, rtol=0)


@pytest.mark.parametrize("ours, theirs, shape", BN_CASES)
def test_batchnorm_without_running_stats_uses_batch_stats_in_both_modes(ours, theirs, shape):
    spec = ours(3, track_running_stats=False)
    module = theirs(3, track_running_stats=False)
    params, state = randomised(spec)
    assert state.flat() == {}
    torch_twin(module, params)
    x = fm.random.normal(fm.key(1), shape)
    for train in (True, False):
        module.train(train)
        torch.testing.assert_close(fm.apply(params, x, train=train), module(x), atol=0, rtol=0)


def test_batchnorm_state_names_dtypes_and_round_trip():
    spec = fm.nn.BatchNorm2d(4)
    params, state = fm.init_with_state(fm.key(0), spec, dtype=torch.float64)
    module = torch.nn.BatchNorm2d(4).double()
    sd = fm.to_state_dict(params, state)
    assert {k: (v.dtype, v.shape) for k, v in sd.items()} == {
        k: (v.dtype, v.shape) for k, v in module.state_dict().items()
    }
    for k, v in module.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert list(params) == ["weight", "bias"]


def test_batchnorm_train_step_under_grad_matches_torch_autograd():
    spec = fm.nn.BatchNorm2d(3)
    module = torch.nn.BatchNorm2d(3)
    params, state = randomised(spec)
    torch_twin(module, params, state)
    x = fm.random.normal(fm.key(1), (4, 3, 2, 2))

    def loss(p):
        out = fm.run(p, x, state=state, train=True)
        return (out.out**3).sum(), out.state

    grads, new_state = grad(loss, has_aux=True)(params)
    (module(x) ** 3).sum().backward()
    torch.testing.assert_close(grads["weight"], module.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["bias"], module.bias.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state["running_mean"], module.running_mean, atol=1e-6, rtol=0)


def test_batchnorm2d_single_example_in_eval():
    spec = fm.nn.BatchNorm2d(3)
    params, state = randomised(spec)
    x = fm.random.normal(fm.key(1), (2, 3, 4, 4))
    batched = fm.apply(params, x, state=state)
    torch.testing.assert_close(fm.apply(params, x[1], state=state), batched[1], atol=0, rtol=0)


def test_batchnorm_eval_per_sample_grads_match_loop():
    spec = fm.nn.Sequential(fm.nn.Conv2d(2, 3, 3), fm.nn.BatchNorm2d(3), fm.nn.ReLU())
    params, state = fm.init_with_state(fm.key(0), spec)
    state = fm.State(spec, {**state.flat(), "1.running_var": torch.tensor([0.5, 1.0, 2.0])})
    x = fm.random.normal(fm.key(1), (4, 2, 5, 5))
    y = fm.random.normal(fm.key(2), (4, 3, 3, 3))
    assert_per_sample_grads_match(params, x, y, state=state)


def test_batchnorm_train_under_vmap_raises_recommending_groupnorm():
    spec = fm.nn.Sequential(fm.nn.Conv2d(2, 3, 3), fm.nn.BatchNorm2d(3))
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 2, 5, 5))

    def loss(p, xi):
        return fm.apply(p, xi, state=state, train=True).sum()

    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm2d\).*GroupNorm.*eval mode"):
        vmap(grad(loss), in_dims=(None, 0))(params, x)
    with pytest.raises(ValueError, match="per-sample statistics are ill-defined"):
        vmap(lambda xi: fm.apply(params, xi, state=state, train=True))(x)


def test_batchnorm_train_over_an_ensemble_is_allowed():
    # vmap over models, not samples: each model's BatchNorm sees the whole real batch.
    spec = fm.nn.Sequential(fm.nn.Linear(2, 3), fm.nn.BatchNorm1d(3))
    params = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 2), spec)
    _, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 2))
    out = vmap(lambda p: fm.run(p, x, state=state, train=True))(params)
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    for i in range(2):
        torch_twin(module, fm.Params(spec, {k: v[i] for k, v in params.flat().items()}), state)
        torch.testing.assert_close(out.out[i], module(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.state["1.running_var"][i], module[1].running_var)


def test_batchnorm_errors_name_the_layer():
    spec = fm.nn.Sequential(fm.nn.Linear(2, 3), fm.nn.BatchNorm1d(3))
    params, state = fm.init_with_state(fm.key(0), spec)
    x = torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\).*has state"):
        fm.apply(params, x)
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\).*more than 1 value"):
        fm.apply(params, x[:1], state=state, train=True)
    bn2d, bn2d_state = fm.init_with_state(fm.key(0), fm.nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"layer '<root>' \(BatchNorm2d\).*C=3.*\(2, 4, 5, 5\)"):
        fm.apply(bn2d, torch.ones(2, 4, 5, 5), state=bn2d_state)
    with pytest.raises(ValueError, match="BatchNorm1d: momentum"):
        fm.nn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(TypeError, match="BatchNorm2d: num_features"):
        fm.nn.BatchNorm2d(3.0)
    with pytest.raises(TypeError, match="BatchNorm2d: affine"):
        fm.nn.BatchNorm2d(3, affine=1)


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


# -- shape checks ------------------------------------------------------------------------


def test_batchnorm_example_of_the_wrong_rank_names_the_layer():
    # fm.shapes, and fm.init inferring num_features, check the rank before any tensor.
    after_linear = fm.nn.Sequential(fm.nn.Linear(2, 3), fm.nn.BatchNorm2d(3))
    with pytest.raises(
        ValueError,
        match=r"layer '1' \(BatchNorm2d\): expected one example of shape \(C, H, W\), got \(3,\)",
    ):
        fm.shapes(after_linear, (2,))
    inferred = fm.nn.Sequential(fm.nn.Linear(2, 3), fm.nn.BatchNorm2d())
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm2d\): expected one example"):
        fm.init_with_state(fm.key(0), inferred, input_shape=(2,))
    with pytest.raises(
        ValueError,
        match=r"layer '<root>' \(BatchNorm1d\): expected one example of shape \(C,\) or "
        r"\(C, L\), got \(3, 4, 5\)",
    ):
        fm.shapes(fm.nn.BatchNorm1d(3), (3, 4, 5))


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
