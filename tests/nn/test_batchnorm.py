"""BatchNorm1d/2d/3d and InstanceNorm1d/2d/3d (``_batchnorm.py``) against torch.nn, and
BatchNorm on an empty batch.

References: the torch.nn module with the same weights and buffers, stepped in train mode
alongside and compared in eval mode; torch's autograd; a loop of single-sample gradients
for vmap(grad). Tolerances: outputs exact where both sides call the same kernel
(``atol=1e-6, rtol=1e-6`` where eval follows train-mode statistics); BatchNorm's running
statistics in eager mode exact (the same kernel updates them), InstanceNorm's ``atol=1e-6,
rtol=1e-6`` (same formula, the reduction order may differ by a rounding step);
per-sample gradients ``atol=1e-5, rtol=1e-4``. Configs, files, the torch.nn round trip
and compile: tests/test_contract.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin

nn = fm.nn
EXACT = {"atol": 0.0, "rtol": 0.0}
STATS = {"atol": 1e-6, "rtol": 1e-6}


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
        # Output and running stats: the same kernel as torch, in one pass (eager).
        torch.testing.assert_close(out.out, module(x), atol=0, rtol=0)
        for name, buf in module.state_dict().items():
            got = fm.to_state_dict(params, out.state)[name]
            assert got.dtype == buf.dtype, name
            torch.testing.assert_close(got, buf, atol=0, rtol=0, msg=name)
        for name, t in state.flat().items():
            assert torch.equal(t, before[name]), f"input state {name} was mutated"
        assert torch.equal(x, x_before)
        state = out.state
    module.eval()
    x = fm.random.normal(fm.key(20), shape)
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=0, rtol=0)
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


def assert_state_matches(params, state, module):
    """Every buffer and parameter of ``module`` equals ours (buffers within STATS)."""
    ours = fm.to_state_dict(params, state)
    assert list(ours) == list(module.state_dict())
    for name, t in module.state_dict().items():
        assert ours[name].dtype == t.dtype, name
        torch.testing.assert_close(ours[name], t, **STATS, msg=name)


def step_alongside(spec, module, shape, steps=3, seed=10):
    """Train steps of ours and torch's on the same batches; returns the final state."""
    params, state = randomised(spec)
    torch_twin(module, params, state)
    for step in range(steps):
        x = fm.random.normal(fm.key(seed + step), shape) * 2 + 1
        x_before = x.clone()
        out = fm.run(params, x, state=state, train=True)
        module.train()
        torch.testing.assert_close(out.out, module(x), **EXACT)
        assert_state_matches(params, out.state, module)
        assert torch.equal(x, x_before)
        state = out.state
    return params, state


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm3d_matches_torch_over_train_steps_and_eval(momentum, affine):
    spec = nn.BatchNorm3d(3, momentum=momentum, affine=affine)
    module = torch.nn.BatchNorm3d(3, momentum=momentum, affine=affine)
    params, state = step_alongside(spec, module, (4, 3, 2, 3, 2))
    module.eval()
    x = fm.random.normal(fm.key(20), (2, 3, 2, 3, 2))
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), **STATS)
    torch_twin(module, params, state)
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), **EXACT)
    # one example (C, D, H, W): batched on the way in, as the eval output of its batch
    torch.testing.assert_close(fm.apply(params, x[1], state=state), module(x)[1], **EXACT)


def test_batchnorm3d_without_running_stats_and_inferred_size():
    params, state = fm.init_with_state(
        fm.key(0), nn.BatchNorm3d(track_running_stats=False), input_shape=(5, 2, 2, 2)
    )
    assert params.spec == nn.BatchNorm3d(5, track_running_stats=False)
    assert state.flat() == {}
    module = torch_twin(torch.nn.BatchNorm3d(5, track_running_stats=False), params)
    x = fm.random.normal(fm.key(1), (3, 5, 2, 2, 2))
    for train in (True, False):
        module.train(train)
        torch.testing.assert_close(fm.apply(params, x, train=train), module(x), **EXACT)


def test_batchnorm3d_eval_per_sample_grads_and_train_under_vmap_raises():
    params, state = randomised(nn.BatchNorm3d(2))
    x = fm.random.normal(fm.key(1), (4, 2, 2, 3, 2))
    y = fm.random.normal(fm.key(2), (4, 2, 2, 3, 2))
    assert_per_sample_grads_match(params, x, y, state=state)
    with pytest.raises(ValueError, match=r"\(BatchNorm3d\).*per-sample statistics"):
        vmap(lambda xi: fm.apply(params, xi, state=state, train=True))(x)


EMPTY_CASES = [
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (0, 3)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (0, 3, 5)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (2, 3, 0)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (0, 3, 4, 4)),
    (nn.BatchNorm3d, torch.nn.BatchNorm3d, (0, 3, 2, 2, 2)),
]


@pytest.mark.parametrize("ours, theirs, shape", EMPTY_CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_on_an_empty_batch_matches_torch(ours, theirs, shape, momentum):
    # torch returns an empty output, keeps the running statistics and counts the batch.
    spec, module = ours(3, momentum=momentum), theirs(3, momentum=momentum)
    params, state = randomised(spec)
    torch_twin(module, params, state)
    x = torch.zeros(shape)
    out = fm.run(params, x, state=state, train=True)
    want = module.train()(x)
    assert out.out.shape == want.shape == shape
    assert_state_matches(params, out.state, module)
    assert int(out.state["num_batches_tracked"]) == 8  # randomised starts at 7
    for name in ("running_mean", "running_var"):
        assert torch.equal(out.state[name], state[name])
    # gradients through an empty batch are zeros, as torch's
    g = grad(lambda p: fm.run(p, x, state=state, train=True).out.sum())(params)
    module.zero_grad()
    module(x).sum().backward()
    torch.testing.assert_close(g["weight"], module.weight.grad, **EXACT)
    # eval mode, and no running statistics at all
    module.eval()
    assert fm.apply(params, x, state=state).shape == module(x).shape
    untracked = fm.init(fm.key(0), ours(3, track_running_stats=False))
    assert fm.apply(untracked, x, train=True).shape == shape


def test_batchnorm_one_value_per_channel_is_still_an_error():
    for spec, shape in [(nn.BatchNorm1d(3), (1, 3)), (nn.BatchNorm3d(3), (1, 3, 1, 1, 1))]:
        params, state = fm.init_with_state(fm.key(0), spec)
        with pytest.raises(ValueError, match=r"more than 1 value per channel"):
            fm.apply(params, torch.ones(shape), state=state, train=True)
        with pytest.raises(ValueError):
            torch.nn.BatchNorm1d(3)(torch.ones(1, 3))  # as torch


INSTANCE = {
    1: (nn.InstanceNorm1d, torch.nn.InstanceNorm1d),
    2: (nn.InstanceNorm2d, torch.nn.InstanceNorm2d),
    3: (nn.InstanceNorm3d, torch.nn.InstanceNorm3d),
}


@settings(max_examples=40, deadline=None)
@given(
    n=st.sampled_from([1, 2, 3]),
    affine=st.booleans(),
    track=st.booleans(),
    momentum=st.sampled_from([0.1, 0.5, None, 1.0]),
    batch=st.integers(1, 3),
    spatial=st.integers(2, 4),
)
def test_instancenorm_matches_torch(n, affine, track, momentum, batch, spatial):
    ours, theirs = INSTANCE[n]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track)
    spec, module = ours(3, **kw), theirs(3, **kw)
    shape = (batch, 3, *[spatial + i for i in range(n)])
    params, state = step_alongside(spec, module, shape, steps=2)
    if track:
        # torch never increments num_batches_tracked for InstanceNorm
        assert int(state["num_batches_tracked"]) == 7
    module.eval()
    x = fm.random.normal(fm.key(30), shape)
    want = module(x)
    torch.testing.assert_close(fm.apply(params, x, state=state), want, **STATS)
    # the unbatched form (C, *) of torch, at the root and behind a layer of unknown rank
    torch.testing.assert_close(fm.apply(params, x[0], state=state), module(x[0]), **STATS)
    entries = fm.to_state_dict(params, state)
    behind = nn.Sequential(nn.Identity(), spec)
    p2, s2 = fm.from_state_dict(behind, {f"1.{k}": v for k, v in entries.items()})
    torch.testing.assert_close(fm.apply(p2, x[0], state=s2), module(x[0]), **STATS)


def test_instancenorm_defaults_are_torchs():
    for ours, theirs in INSTANCE.values():
        spec, module = ours(4), theirs(4)
        assert (spec.affine, spec.track_running_stats, spec.momentum, spec.eps) == (
            module.affine,
            module.track_running_stats,
            module.momentum,
            module.eps,
        )
        params, state = fm.init_with_state(fm.key(0), spec)
        assert params.flat() == {} and state.flat() == {}


@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm_empty_batch_and_zero_spatial(affine):
    spec = nn.InstanceNorm2d(3, affine=affine, track_running_stats=True)
    params, state = randomised(spec)
    x = torch.zeros(0, 3, 4, 4)
    for train in (True, False):
        out = fm.run(params, x, state=state, train=train)
        assert out.out.shape == x.shape
        for name, t in state.flat().items():
            assert torch.equal(out.state[name], t), name  # torch writes NaN statistics here
    if not affine:  # torch accepts these (with affine params it fails on an empty batch)
        module = torch_twin(torch.nn.InstanceNorm2d(3, track_running_stats=True), params, state)
        assert module.train()(x).shape == x.shape
    untracked = fm.init(fm.key(0), nn.InstanceNorm1d(3))
    flat = torch.zeros(2, 3, 0)
    torch.testing.assert_close(
        fm.apply(untracked, flat, train=True), torch.nn.InstanceNorm1d(3)(flat), **EXACT
    )


@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_instancenorm_per_sample_grads_match_loop(track, train):
    # Instance statistics are per sample, so even train mode is safe under vmap.
    spec = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.InstanceNorm2d(3, affine=True, track_running_stats=track)
    )
    params, state = randomised(spec)
    x = fm.random.normal(fm.key(1), (4, 2, 5, 5))
    y = fm.random.normal(fm.key(2), (4, 3, 3, 3))

    def loss(p, xi, yi):
        return ((fm.apply(p, xi, state=state, train=train) - yi) ** 2).sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        want = grad(loss)(params, x[i], y[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)
    if not train:
        assert_per_sample_grads_match(params, x, y, state=state)


def test_instancenorm_is_inferred_and_checked():
    spec = nn.Sequential(nn.Conv1d(2, 5, 3), nn.InstanceNorm1d(affine=True))
    params = fm.init(fm.key(0), spec, input_shape=(2, 8))
    assert params.spec["1"] == nn.InstanceNorm1d(5, affine=True)
    assert fm.shapes(params.spec, (2, 8))["1"] == (5, 6)
    with pytest.raises(ValueError, match=r"layer '<root>' \(InstanceNorm2d\): expected one exam"):
        fm.shapes(nn.InstanceNorm2d(3), (3, 4))
    with pytest.raises(ValueError, match=r"\(InstanceNorm3d\): expected 3 channels"):
        fm.shapes(nn.InstanceNorm3d(3), (4, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(InstanceNorm1d\): expected more than 1 spatial"):
        fm.shapes(nn.InstanceNorm1d(3), (3, 1))
    fm.shapes(nn.InstanceNorm1d(3, track_running_stats=True), (3, 1))  # fine in eval


def test_instancenorm_forward_errors_name_the_layer():
    params, state = fm.init_with_state(fm.key(0), nn.InstanceNorm1d(3, affine=True))
    with pytest.raises(ValueError, match=r"\(InstanceNorm1d\): expected input \(N, C, L\) or"):
        fm.apply(params, torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(InstanceNorm1d\): expected more than 1 spatial"):
        fm.apply(params, torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="InstanceNorm2d: momentum must be in"):
        nn.InstanceNorm2d(3, momentum=2.0)
    with pytest.raises(TypeError, match="InstanceNorm3d: affine must be a bool"):
        nn.InstanceNorm3d(3, affine="yes")


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
def test_instancenorm1d_to_module_is_torchs_layer_and_back(affine, track):
    # the layer alone (not inside a Sequential): torch's class with the spec's settings
    spec = nn.InstanceNorm1d(3, eps=1e-3, momentum=0.3, affine=affine, track_running_stats=track)
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    assert type(module) is torch.nn.InstanceNorm1d and not module.training
    settings = (module.num_features, module.eps, module.momentum, module.affine)
    assert settings == (3, 1e-3, 0.3, affine) and module.track_running_stats == track
    assert_state_matches(params, state, module)
    for name, t in fm.to_state_dict(params, state).items():
        assert torch.equal(module.state_dict()[name], t), name
    x = fm.random.normal(fm.key(1), (4, 3, 6)) * 2 + 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x, state=state), **EXACT)
        torch.testing.assert_close(module(x[0]), fm.apply(params, x[0], state=state), **EXACT)
    back, back_state = transforms.from_module(module)
    assert back.spec == spec
    for name, t in fm.to_state_dict(params, state).items():
        got = fm.to_state_dict(back, back_state)[name]
        assert got.dtype == t.dtype and torch.equal(got, t), name
    # train mode: the module's updated buffers are fm.run's new state
    out = fm.run(params, x, state=state, train=True)
    with torch.no_grad():
        torch.testing.assert_close(module.train()(x), out.out, **STATS)
    assert_state_matches(params, out.state, module)


@pytest.mark.parametrize(
    "layer, match",
    [
        (torch.nn.InstanceNorm2d(3, affine=True, bias=False), "parameters"),
        (torch.nn.BatchNorm3d(3, bias=False), "parameters"),
    ],
)
def test_torch_settings_the_spec_cannot_express_are_errors(layer, match):
    kind = type(layer).__name__
    with pytest.raises(ValueError, match=rf"module '1' \({kind}\).*{match}"):
        transforms.from_module(torch.nn.Sequential(torch.nn.Identity(), layer))
