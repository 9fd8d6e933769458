"""Activations and the softmax family (``_activation.py``, ``_softmax.py``), Identity and
Flatten against torch.nn.

References: the torch.nn module of the same settings (same weights for PReLU), a loop of
single-sample gradients for vmap(grad), and, for RReLU's random slopes in train mode,
torch's own slopes in distribution. Tolerances: outputs exact (the same torch functions
run on the same tensors), per-sample gradients ``atol=1e-5, rtol=1e-4``. Configs, files,
the torch.nn round trip and compile: tests/test_contract.py.
"""

from __future__ import annotations

import json
import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin
from tests.layer_examples import ACTIVATIONS

nn = fm.nn


# Same torch functions on the same tensors: outputs agree exactly.
EXACT = {"atol": 0.0, "rtol": 0.0}


# (our spec, torch module factory, batched input shape)
CASES = [
    (nn.ReLU(), lambda: torch.nn.ReLU(), (3, 4, 5)),
    (nn.GELU(), lambda: torch.nn.GELU(), (3, 4, 5)),
    (nn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), (3, 4, 5)),
    (nn.SiLU(), lambda: torch.nn.SiLU(), (3, 4, 5)),
    (nn.Sigmoid(), lambda: torch.nn.Sigmoid(), (3, 4, 5)),
    (nn.Tanh(), lambda: torch.nn.Tanh(), (3, 4, 5)),
    (nn.Identity(), lambda: torch.nn.Identity(), (3, 4, 5)),
    (nn.Softmax(), lambda: torch.nn.Softmax(dim=-1), (3, 4, 5)),
    (nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (3, 4, 5)),
    (nn.Softmax(dim=0), lambda: torch.nn.Softmax(dim=0), (3, 4)),
    (nn.LogSoftmax(), lambda: torch.nn.LogSoftmax(dim=-1), (3, 4, 5)),
    (nn.LogSoftmax(dim=-2), lambda: torch.nn.LogSoftmax(dim=-2), (3, 4, 5)),
    (nn.Flatten(), lambda: torch.nn.Flatten(), (3, 2, 4, 5)),
    (nn.Flatten(2), lambda: torch.nn.Flatten(2), (3, 2, 4, 5)),
    (nn.Flatten(1, 2), lambda: torch.nn.Flatten(1, 2), (3, 2, 4, 5)),
    (nn.Flatten(0, -2), lambda: torch.nn.Flatten(0, -2), (3, 2, 4, 5)),
]


IDS = [repr(spec) for spec, _, _ in CASES]


ELEMENTWISE = [
    nn.ReLU(),
    nn.GELU(),
    nn.GELU("tanh"),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Identity(),
    nn.Softmax(),
    nn.LogSoftmax(),
]


@pytest.mark.parametrize("spec, make_module, shape", CASES, ids=IDS)
def test_matches_torch_batched_and_single(spec, make_module, shape):
    params = fm.init(fm.key(0), spec)
    module = torch_twin(make_module(), params)
    assert fm.to_state_dict(params) == {}
    # scaled so that GELU's tanh approximation differs visibly from the exact form
    x = 3 * fm.random.normal(fm.key(1), shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    # without a known example rank the layer sees the tensor as given, like torch.nn
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


def test_gelu_approximations_differ():
    x = torch.linspace(-3, 3, 13)
    exact = fm.apply(fm.init(fm.key(0), nn.GELU()), x)
    approx = fm.apply(fm.init(fm.key(0), nn.GELU("tanh")), x)
    assert (exact - approx).abs().max() > 1e-5


def test_elementwise_layers_pass_the_example_rank_through():
    """In front of a conv, a single example still counts as one example (as in torch)."""
    spec = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Conv2d(2, 3, 3))
    assert spec.example_ndim == 3
    params = fm.init(fm.key(0), spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.Conv2d(2, 3, 3)), params
    )
    x = fm.random.normal(fm.key(1), (2, 2, 5, 5))
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)


def test_flatten_after_conv_flattens_one_example_per_sample():
    """A single example is batched before Flatten, so its output is one flat vector.

    torch.nn.Flatten on an unbatched (C, H, W) would keep C; we give what torch gives for
    the one-example batch, which is what a per-sample function under vmap needs.
    """
    spec = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    params = fm.init(fm.key(0), spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2)),
        params,
    )
    x = fm.random.normal(fm.key(1), (4, 2, 4, 4))
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[2]), module(x[2:3])[0], **EXACT)


@pytest.mark.parametrize("act", ELEMENTWISE, ids=repr)
def test_per_sample_grads_through_activation(act):
    spec = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 3)))


# the conv maps (2, 4, 4) to (3, 2, 2); Flatten(2) keeps the channel dim
@pytest.mark.parametrize(
    "flatten, n_in, y_shape", [(nn.Flatten(), 12, (4, 2)), (nn.Flatten(2), 4, (4, 3, 2))]
)
def test_per_sample_grads_through_flatten(flatten, n_in, y_shape):
    spec = nn.Sequential(nn.Conv2d(2, 3, 3), flatten, nn.Linear(n_in, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 2, 4, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), y_shape))


def test_parameter_free_layers_leave_sibling_params_unchanged():
    """Inserting an activation keeps the init of the layers around it (same child names)."""
    bare = fm.init(fm.key(0), nn.Sequential({"a": nn.Linear(3, 4), "b": nn.Linear(4, 2)}))
    with_act = fm.init(
        fm.key(0),
        nn.Sequential({"a": nn.Linear(3, 4), "act": nn.GELU(), "b": nn.Linear(4, 2)}),
    )
    got, want = fm.to_state_dict(with_act), fm.to_state_dict(bare)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **EXACT)


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.GELU("fast"), ValueError, r"GELU: approximate must be 'none' or 'tanh', got "),
        (lambda: nn.GELU(approximate=None), ValueError, r"GELU: approximate .* got None"),
        (lambda: nn.Softmax(dim=1.0), TypeError, r"Softmax: dim must be an int, got float 1.0"),
        (lambda: nn.Softmax(dim=True), TypeError, r"Softmax: dim must be an int, got bool"),
        (lambda: nn.LogSoftmax(dim="x"), TypeError, r"LogSoftmax: dim must be an int, got str"),
        (lambda: nn.Flatten(1.5), TypeError, r"Flatten: start_dim must be an int, got 1.5"),
        (lambda: nn.Flatten(end_dim=None), TypeError, r"Flatten: end_dim must be an int"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


# torch itself would raise IndexError here without naming the layer.
@pytest.mark.parametrize("layer", [nn.Softmax(dim=2), nn.LogSoftmax(dim=-3)])
def test_softmax_dim_out_of_range_names_layer(layer):
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 3), layer))
    msg = rf"layer '1' \({layer.type_name}\): .*dim={layer.dim}.* shape \(2, 3\)"
    with pytest.raises(ValueError, match=msg):
        fm.apply(params, torch.zeros(2, 4))


def test_flatten_dims_out_of_range_names_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 3), nn.Flatten(2)))
    with pytest.raises(ValueError, match=r"layer '1' \(Flatten\): .*start_dim=2.* shape \(2, 3\)"):
        fm.apply(params, torch.zeros(2, 4))


# (spec, torch module factory, whether torch takes the unbatched example x[0] alike)
SETTINGS_CASES = [
    (nn.LeakyReLU(), lambda: torch.nn.LeakyReLU(), True),
    (nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2), True),
    (nn.LeakyReLU(-0.5), lambda: torch.nn.LeakyReLU(-0.5), True),
    (nn.ELU(), lambda: torch.nn.ELU(), True),
    (nn.ELU(0.5), lambda: torch.nn.ELU(0.5), True),
    (nn.CELU(), lambda: torch.nn.CELU(), True),
    (nn.CELU(2.0), lambda: torch.nn.CELU(2.0), True),
    (nn.SELU(), lambda: torch.nn.SELU(), True),
    (nn.GLU(), lambda: torch.nn.GLU(), True),
    (nn.GLU(dim=1), lambda: torch.nn.GLU(dim=1), True),
    (nn.GLU(dim=-2), lambda: torch.nn.GLU(dim=-2), True),
    (nn.Mish(), lambda: torch.nn.Mish(), True),
    (nn.Hardswish(), lambda: torch.nn.Hardswish(), True),
    (nn.Hardsigmoid(), lambda: torch.nn.Hardsigmoid(), True),
    (nn.Hardtanh(), lambda: torch.nn.Hardtanh(), True),
    (nn.Hardtanh(-2.0, 0.5), lambda: torch.nn.Hardtanh(-2.0, 0.5), True),
    (nn.ReLU6(), lambda: torch.nn.ReLU6(), True),
    (nn.Softplus(), lambda: torch.nn.Softplus(), True),
    (nn.Softplus(2.0, 3.0), lambda: torch.nn.Softplus(2.0, 3.0), True),
    (nn.Softplus(-1.0), lambda: torch.nn.Softplus(-1.0), True),
    (nn.Softsign(), lambda: torch.nn.Softsign(), True),
    (nn.Softshrink(), lambda: torch.nn.Softshrink(), True),
    (nn.Softshrink(1.5), lambda: torch.nn.Softshrink(1.5), True),
    (nn.Hardshrink(), lambda: torch.nn.Hardshrink(), True),
    (nn.Hardshrink(-0.5), lambda: torch.nn.Hardshrink(-0.5), True),
    (nn.Tanhshrink(), lambda: torch.nn.Tanhshrink(), True),
    (nn.Threshold(0.1, 20.0), lambda: torch.nn.Threshold(0.1, 20.0), True),
    (nn.LogSigmoid(), lambda: torch.nn.LogSigmoid(), True),
    (nn.Softmin(), lambda: torch.nn.Softmin(dim=-1), True),
    (nn.Softmin(1), lambda: torch.nn.Softmin(dim=1), True),
    (nn.Softmax2d(), lambda: torch.nn.Softmax2d(), True),
    (nn.PReLU(), lambda: torch.nn.PReLU(), True),
    # torch reads dim 1 of the unbatched (4, 6, 6) as the channels and refuses it
    (nn.PReLU(4, 0.1), lambda: torch.nn.PReLU(4, 0.1), False),
    (nn.RReLU(), lambda: torch.nn.RReLU(), True),
    (nn.RReLU(0.1, 0.3), lambda: torch.nn.RReLU(0.1, 0.3), True),
]


SETTINGS_IDS = [repr(spec) for spec, _, _ in SETTINGS_CASES]


SHAPE = (3, 4, 6, 6)  # even sizes for GLU, 4 channels for PReLU(4), 4-d for Softmax2d


def x_for(shape=SHAPE, seed=1):
    # scaled past Softplus's threshold, the shrinks' lambdas and Hardtanh's bounds
    return 3 * fm.random.normal(fm.key(seed), shape)


@pytest.mark.parametrize("spec, make_module, unbatched", SETTINGS_CASES, ids=SETTINGS_IDS)
def test_matches_torch_batched_unbatched_and_empty(spec, make_module, unbatched):
    params, _ = randomised(spec)
    module = torch_twin(make_module(), params).eval()
    assert list(fm.to_state_dict(params)) == list(module.state_dict())
    x = x_for()
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    if unbatched:
        torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    else:  # one example (C, *), read as such here
        torch.testing.assert_close(fm.apply(params, x[0]), module(x[:1])[0], **EXACT)
    empty = x[:0]
    torch.testing.assert_close(fm.apply(params, empty), module(empty), **EXACT)
    # train mode is the same for all but RReLU
    if not isinstance(spec, nn.RReLU):
        module.train()
        torch.testing.assert_close(fm.apply(params, x, train=True), module(x), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


def test_float64_matches_torch():
    for spec, make_module, _ in SETTINGS_CASES:
        params, _ = randomised(spec, dtype=torch.float64)
        module = torch_twin(make_module().double(), params).eval()
        x = x_for().double()
        torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT, msg=repr(spec))


numbers = st.floats(-4.0, 4.0, allow_nan=False)


@st.composite
def parametrised(draw):
    """A random setting of one of the activations with numeric arguments."""
    kind = draw(st.sampled_from(["leaky", "elu", "celu", "hardtanh", "softplus", "shrink", "thr"]))
    if kind == "leaky":
        a = draw(numbers)
        return nn.LeakyReLU(a), torch.nn.LeakyReLU(a)
    if kind == "elu":
        a = draw(numbers)
        return nn.ELU(a), torch.nn.ELU(a)
    if kind == "celu":
        a = draw(numbers.filter(lambda v: abs(v) > 1e-3))
        return nn.CELU(a), torch.nn.CELU(a)
    if kind == "hardtanh":
        lo, hi = sorted(draw(st.lists(numbers, min_size=2, max_size=2, unique=True)))
        return nn.Hardtanh(lo, hi), torch.nn.Hardtanh(lo, hi)
    if kind == "softplus":
        beta = draw(numbers.filter(lambda v: abs(v) > 1e-3))
        threshold = draw(st.floats(0.0, 30.0))
        return nn.Softplus(beta, threshold), torch.nn.Softplus(beta, threshold)
    if kind == "shrink":
        lambd = draw(st.floats(0.0, 4.0))
        if draw(st.booleans()):
            return nn.Softshrink(lambd), torch.nn.Softshrink(lambd)
        return nn.Hardshrink(lambd), torch.nn.Hardshrink(lambd)
    t, v = draw(numbers), draw(numbers)
    return nn.Threshold(t, v), torch.nn.Threshold(t, v)


@settings(max_examples=60, deadline=None)
@given(parametrised(), st.integers(0, 2**16))
def test_random_settings_match_torch_and_round_trip(pair, seed):
    spec, module = pair
    params = fm.init(fm.key(0), spec)
    x = x_for((5, 7), seed)
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    assert fm.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    back, _ = transforms.from_module(module)
    assert back.spec == spec


# GLU and Softmax2d need a conv's output (below); PReLU(4) needs 4 channels; Softmin(1)
# indexes the batch dims, which one example under vmap does not have.
GRAD_SETTINGS_CASES = [
    spec
    for spec, _, _ in SETTINGS_CASES
    if not isinstance(spec, (nn.Softmax2d, nn.GLU))
    and spec not in (nn.PReLU(4, 0.1), nn.Softmin(1))
]


@pytest.mark.parametrize("act", [*GRAD_SETTINGS_CASES, nn.PReLU(6, 0.3)], ids=repr)
def test_per_sample_grads_through_activations_with_settings(act):
    spec = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3))
    params, _ = randomised(spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 3)))


@pytest.mark.parametrize("act", [nn.GLU(), nn.GLU(dim=-2), nn.Softmax2d(), nn.PReLU(6)], ids=repr)
def test_per_sample_grads_after_a_conv(act):
    # one example (2, 5, 5) -> conv -> (6, 4, 4); GLU(-1) halves the width, GLU(-2) the height
    spec = nn.Sequential(nn.Conv2d(2, 6, 2), act, nn.Flatten(), nn.Linear(None, 3))
    params, _ = randomised(spec.resolve((2, 5, 5)))
    x = fm.random.normal(fm.key(1), (4, 2, 5, 5))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (4, 3)))


def test_prelu_gradient_matches_torch_autograd():
    spec = nn.PReLU(3, 0.1)
    module = torch.nn.PReLU(3, 0.1)
    params, _ = randomised(spec)
    torch_twin(module, params)
    x = x_for((4, 3, 5))
    g = grad(lambda p: (fm.apply(p, x) ** 2).sum())(params)
    (module(x) ** 2).sum().backward()
    torch.testing.assert_close(g["weight"], module.weight.grad, atol=1e-5, rtol=1e-5)


def test_prelu_init_is_torchs_constant():
    for dtype in (torch.float32, torch.float64):
        params = fm.init(fm.key(3), nn.PReLU(5, 0.7), dtype=dtype)
        want = torch.nn.PReLU(5, 0.7, dtype=dtype).weight.detach()
        assert params["weight"].dtype == dtype
        torch.testing.assert_close(params["weight"], want, **EXACT)


def rrelu_train(spec, x, key):
    return fm.apply(fm.init(fm.key(0), spec), x, key=key, train=True)


@pytest.mark.parametrize("lower, upper", [(1 / 8, 1 / 3), (0.0, 1.0), (-0.5, 0.25)])
def test_rrelu_train_slopes_are_uniform_like_torchs(lower, upper):
    n = 40_000
    x = -(torch.rand(n, generator=torch.Generator().manual_seed(0)) + 0.5)  # all negative
    y = rrelu_train(nn.RReLU(lower, upper), x, fm.key(4))
    slopes = y / x
    assert slopes.min() >= lower and slopes.max() <= upper
    # The mean of n uniform slopes is within 6 standard deviations of the middle.
    sd = (upper - lower) / math.sqrt(12 * n)
    assert abs(slopes.mean().item() - (lower + upper) / 2) < 6 * sd
    # Same distribution as torch's own slopes (two-sample Kolmogorov-Smirnov); under equal
    # distributions p < 1e-6 happens once in a million runs.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = torch.nn.RReLU(lower, upper).train()(x) / x
    assert scipy.stats.ks_2samp(slopes.numpy(), theirs.numpy()).pvalue > 1e-6


def test_rrelu_train_keeps_positive_values_and_gradient_is_the_slope():
    spec = nn.RReLU(0.1, 0.3)
    x = fm.random.normal(fm.key(1), (64, 8))
    x_before = x.clone()
    rng = torch.get_rng_state()
    y = rrelu_train(spec, x, fm.key(2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before)
    pos = x > 0
    assert torch.equal(y[pos], x[pos])
    slopes = y[~pos] / x[~pos]
    assert ((slopes >= 0.1) & (slopes <= 0.3)).all()
    # d y / d x is the slope drawn for that element (1 where positive), as torch's backward.
    params = fm.init(fm.key(0), spec)
    g = grad(lambda xi: fm.apply(params, xi, key=fm.key(2), train=True).sum())(x)
    torch.testing.assert_close(g[pos], torch.ones_like(g[pos]), **EXACT)
    torch.testing.assert_close(g[~pos], y[~pos] / x[~pos], atol=0, rtol=1e-6)


def test_rrelu_keys_masks_and_eval():
    spec = nn.RReLU()
    x = -torch.ones(1000)
    a, b, c = (rrelu_train(spec, x, k) for k in (fm.key(3), fm.key(3), fm.key(4)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"layer '<root>' \(RReLU\): needs a PRNG key"):
        rrelu_train(spec, x, None)
    # eval: torch's fixed slope (lower + upper) / 2, no key
    params = fm.init(fm.key(0), spec)
    torch.testing.assert_close(fm.apply(params, x), torch.nn.RReLU().eval()(x), **EXACT)
    # lower == upper: a fixed slope in both modes, and no key needed
    fixed = nn.RReLU(0.2, 0.2)
    torch.testing.assert_close(
        rrelu_train(fixed, x, None), torch.nn.functional.leaky_relu(x, 0.2), **EXACT
    )


def test_rrelu_per_sample_grads_with_per_sample_keys_equal_the_loop():
    spec = nn.Sequential(nn.Linear(4, 16), nn.RReLU(), nn.Linear(16, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    y = fm.random.normal(fm.key(2), (5, 2))
    keys = fm.split(fm.key(3), 5)

    def loss(p, xi, yi, k):
        return ((fm.apply(p, xi, key=k, train=True) - yi) ** 2).sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, y, keys)
    for i in range(5):
        want = grad(loss)(params, x[i], y[i], keys[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-6, rtol=1e-5, msg=name)


def test_identity_ignores_torchs_ignored_arguments():
    spec = nn.Identity(54, unused_argument1=0.1, unused_argument2=False)
    assert spec == nn.Identity() and hash(spec) == hash(nn.Identity())
    assert spec.to_config() == {"type": "identity"}
    x = fm.random.normal(fm.key(1), (2, 3))
    pair = (x, x + 1)
    assert fm.apply(fm.init(fm.key(0), spec), pair) is pair
    module = transforms.to_module(fm.init(fm.key(0), spec))
    assert type(module) is torch.nn.Identity
    assert transforms.from_module(torch.nn.Identity(54, unused=0.1))[0].spec == nn.Identity()


def test_shapes_match_torch():
    spec = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GLU(dim=1), nn.Softmax2d(), nn.PReLU(4))
    shapes = fm.shapes(spec, (3, 7, 6))
    assert shapes["1"] == (4, 5, 4) and shapes[""] == (4, 5, 4)
    # after a layer of unknown rank (a Linear in a config checked without an input shape)
    assert nn.GLU().out_shape((..., 6)) == (..., 3)
    assert nn.GLU(dim=1).out_shape((..., 6)) == (..., None)
    assert nn.GLU(dim=-2).out_shape((..., 4, 6)) == (..., 2, 6)
    module = torch_twin(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.GLU(dim=1), torch.nn.Softmax2d(), torch.nn.PReLU(4)
        ),
        fm.init(fm.key(0), spec),
    )
    assert tuple(module(torch.zeros(2, 3, 7, 6)).shape[1:]) == shapes[""]


@pytest.mark.parametrize(
    "spec, shape, msg",
    [
        (nn.GLU(), (4, 5), r"\(GLU\): expected an even size along dim=-1"),
        (nn.GLU(dim=0), (4, 6), r"\(GLU\): dim=0 splits the batch"),
        (nn.GLU(dim=-3), (4, 6), r"\(GLU\): dim=-3 splits the batch"),
        (nn.GLU(dim=3), (4, 6), r"\(GLU\): dim=3 is out of range"),
        (nn.Softmax2d(), (4, 6), r"\(Softmax2d\): expected one example of shape \(C, H, W\)"),
        (nn.PReLU(3), (4, 6), r"\(PReLU\): expected 3 channels \(num_parameters=3\)"),
        (nn.PReLU(3), (), r"\(PReLU\): expected one example of shape \(3, \*\)"),
        (nn.Softmin(dim=-4), (4, 6), r"\(Softmin\): dim=-4 is out of range"),
    ],
)
def test_shape_errors_name_the_layer(spec, shape, msg):
    with pytest.raises(ValueError, match=r"layer '<root>' " + msg):
        fm.shapes(spec, shape)


def test_forward_errors_name_the_layer():
    x = torch.zeros(2, 5)
    scalar = torch.tensor(1.0)
    cases = [
        (nn.GLU(), x, r"\(GLU\): expected an even size along dim=-1 .*got shape \(2, 5\)"),
        (nn.GLU(dim=2), x, r"\(GLU\): dim=2 is out of range"),
        (nn.GLU(), scalar, r"\(GLU\): expected an input with at least one dim"),
        (nn.Softmax2d(), x, r"\(Softmax2d\): expected input \(N, C, H, W\) or \(C, H, W\)"),
        (nn.PReLU(3), x, r"\(PReLU\): expected input \(N, 3, \*\) or \(3, \*\)"),
        (nn.PReLU(3), scalar, r"\(PReLU\): expected input \(N, 3, \*\)"),
    ]
    for spec, inp, msg in cases:
        # a Linear in front: the layer sees the tensor as given (no example rank)
        first = nn.Identity() if inp.dim() == 0 else nn.Linear(5, 5)
        params = fm.init(fm.key(0), nn.Sequential(first, spec))
        with pytest.raises(ValueError, match=r"layer '1' " + msg):
            fm.apply(params, inp)
    with pytest.raises(TypeError, match=r"\(RReLU\): expected a floating input"):
        fm.apply(fm.init(fm.key(0), nn.RReLU()), torch.ones(3, dtype=torch.int64), key=fm.key(0),
                 train=True)  # fmt: skip


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.CELU(0), ValueError, r"CELU: alpha must not be 0"),
        (lambda: nn.Softplus(beta=0.0), ValueError, r"Softplus: beta must not be 0"),
        (lambda: nn.Softshrink(-0.1), ValueError, r"Softshrink: lambd must be in \[0.0"),
        (lambda: nn.Hardtanh(1.0, -1.0), ValueError, r"Hardtanh: min_val must be below max_val"),
        (lambda: nn.Hardtanh(1.0, 1.0), ValueError, r"Hardtanh: min_val must be below max_val"),
        (lambda: nn.RReLU(0.5, 0.2), ValueError, r"RReLU: lower must be at most upper"),
        (lambda: nn.PReLU(0), ValueError, r"PReLU: num_parameters must be positive"),
        (lambda: nn.PReLU(2.0), TypeError, r"PReLU: num_parameters must be an int"),
        (lambda: nn.PReLU(init="a"), TypeError, r"PReLU: init must be a number"),
        (lambda: nn.LeakyReLU(math.nan), ValueError, r"LeakyReLU: negative_slope must be a finite"),
        (lambda: nn.ELU(alpha=math.inf), ValueError, r"ELU: alpha must be a finite"),
        (lambda: nn.Threshold(0.5), TypeError, r"value"),
        (lambda: nn.GLU(dim=1.0), TypeError, r"GLU: dim must be an int"),
        (lambda: nn.Softmin(dim=None), TypeError, r"Softmin: dim must be an int"),
    ],
)
def test_invalid_settings(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


MODEL = ACTIVATIONS  # every activation and the softmax family in one model


def test_summary_of_every_activation_follows_torch():
    # configs, files and the torch.nn round trip of MODEL: tests/test_contract.py
    params, _ = randomised(MODEL)
    module = transforms.to_module(params)
    x = fm.random.normal(fm.key(1), (3, 2, 5, 5))
    summary = fm.summary(MODEL, (2, 5, 5))
    assert summary.trainable == sum(p.numel() for p in module.parameters())
    assert {r.path: r.out_shape for r in summary.rows}["3"] == (2, 3, 3)
    with torch.no_grad():
        assert summary.rows[0].out_shape == tuple(module(x).shape[1:])


def test_configs_accept_torchs_inplace_flags():
    config = [
        {"type": "leakyrelu", "params": {"negative_slope": 0.3, "inplace": True}},
        {"type": "hardtanh", "params": {"min_val": -2, "inplace": False}},
        {"type": "threshold", "params": {"threshold": 0, "value": 1, "inplace": True}},
        {"type": "rrelu", "params": {"inplace": True}},
        {"type": "selu", "params": {"inplace": True}},
    ]
    spec = fm.from_config(config)
    assert [s for _, s in spec.layers] == [
        nn.LeakyReLU(0.3),
        nn.Hardtanh(-2.0),
        nn.Threshold(0.0, 1.0),
        nn.RReLU(),
        nn.SELU(),
    ]


def test_from_module_reads_torch_settings():
    module = torch.nn.Sequential(
        torch.nn.LeakyReLU(0.3, inplace=True),
        torch.nn.Hardtanh(-3.0, 3.0),
        torch.nn.Softplus(beta=0.5, threshold=4),
        torch.nn.RReLU(0.05, 0.5),
        torch.nn.PReLU(1, 0.5),
        torch.nn.GLU(0),
    )
    params, _ = transforms.from_module(module)
    assert [s for _, s in params.spec.layers] == [
        nn.LeakyReLU(0.3),
        nn.Hardtanh(-3.0, 3.0),
        nn.Softplus(0.5, 4.0),
        nn.RReLU(0.05, 0.5),
        nn.PReLU(1, 0.5),
        nn.GLU(0),
    ]
    with pytest.raises(TypeError, match=r"module '0' \(Softmin\).*dim must be an int"):
        transforms.from_module(torch.nn.Sequential(torch.nn.Softmin()))
