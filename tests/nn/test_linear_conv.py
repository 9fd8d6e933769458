"""Linear, Conv1d, Conv2d: fidelity to torch.nn, per-sample gradients, init, checks."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
from tests.helpers import assert_per_sample_grads_match, torch_twin, twin

nn = fm.nn

# torch warns that even kernels with padding='same' copy the input; torch.nn does the same
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# Our layers call the same torch.nn.functional kernels as torch.nn on the same tensors,
# so outputs agree exactly on CPU; gradients use the helper's default tolerances.
EXACT = {"atol": 0.0, "rtol": 0.0}

LINEAR_CASES = [
    ({"in_features": 5, "out_features": 3}, (4, 5)),
    ({"in_features": 5, "out_features": 3, "bias": False}, (4, 5)),
    ({"in_features": 3, "out_features": 6}, (2, 4, 3)),
    ({"in_features": 1, "out_features": 1}, (3, 1)),
]

# (layer name, kwargs shared by our spec and torch's module, batched input shape)
CONV_CASES = [
    ("Conv1d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3}, (3, 2, 8)),
    ("Conv1d", {"in_channels": 2, "out_channels": 4, "kernel_size": 3, "stride": 2}, (3, 2, 9)),
    (
        "Conv1d",
        {"in_channels": 4, "out_channels": 2, "kernel_size": 2, "padding": "same"},
        (2, 4, 7),
    ),
    (
        "Conv1d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": "valid"},
        (2, 2, 5),
    ),
    (
        "Conv1d",
        {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "dilation": 2, "groups": 2},
        (2, 4, 9),
    ),
    (
        "Conv1d",
        {"in_channels": 3, "out_channels": 2, "kernel_size": 3, "padding": 2, "bias": False},
        (2, 3, 5),
    ),
    (
        "Conv1d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 4, "padding": "same", "dilation": 2}
        | {"padding_mode": "reflect"},
        (2, 2, 9),
    ),
    (
        "Conv1d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 2}
        | {"padding_mode": "circular"},
        (2, 2, 5),
    ),
    ("Conv2d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3}, (3, 2, 6, 5)),
    (
        "Conv2d",
        {"in_channels": 3, "out_channels": 4, "kernel_size": (3, 2), "stride": (2, 1)},
        (2, 3, 7, 6),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": (1, 2), "bias": False},
        (2, 2, 5, 5),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 4, "padding": "same"},
        (2, 2, 6, 5),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": (2, 3), "padding": "valid"},
        (2, 2, 5, 5),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "dilation": (2, 1), "padding": 1},
        (2, 2, 7, 6),
    ),
    (
        "Conv2d",
        {"in_channels": 4, "out_channels": 4, "kernel_size": 3, "groups": 4, "padding": 1},
        (2, 4, 5, 5),
    ),
    (
        "Conv2d",
        {"in_channels": 6, "out_channels": 4, "kernel_size": 1, "groups": 2},
        (2, 6, 3, 4),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1}
        | {"padding_mode": "reflect"},
        (2, 2, 5, 6),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": (2, 1), "stride": 2}
        | {"padding_mode": "replicate"},
        (2, 2, 5, 6),
    ),
    (
        "Conv2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": (2, 4), "padding": "same"}
        | {"padding_mode": "circular"},
        (2, 2, 5, 6),
    ),
]
CONV_IDS = [f"{name}-{kw}" for name, kw, _ in CONV_CASES]


# -- fidelity ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, shape", LINEAR_CASES)
def test_linear_matches_torch(kwargs, shape):
    params = fm.init(fm.key(0), nn.Linear(**kwargs))
    module = torch_twin(torch.nn.Linear(**kwargs), params)
    x = fm.random.normal(fm.key(1), shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


@pytest.mark.parametrize("name, kwargs, shape", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_torch(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs), randomise=False)
    x = fm.random.normal(fm.key(1), shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[1]), module(x[1]), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


def test_float64_params_match_torch():
    spec = nn.Conv2d(2, 3, 3, padding=1)
    params = fm.init(fm.key(0), spec, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in fm.to_state_dict(params).values())
    module = torch_twin(torch.nn.Conv2d(2, 3, 3, padding=1).double(), params)
    x = fm.random.normal(fm.key(1), (2, 2, 4, 4), dtype=torch.float64)
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)


@st.composite
def conv2d_configs(draw):
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 2),
            st.tuples(st.integers(0, 2), st.integers(0, 2)),
        )
    )
    stride = (1, 1) if padding == "same" else draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    pads = {"same": (0, 0), "valid": (0, 0)}.get(padding, padding)
    pads = (pads, pads) if isinstance(pads, int) else pads
    # each spatial size must fit one dilated window and, for reflect, exceed the padding
    hw = tuple(
        draw(st.integers(max(d * (k - 1) + 1 - 2 * p, p + 1, 1), 6))
        for k, d, p in zip(kernel, dilation, pads, strict=True)
    )
    kwargs = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": mode,
    }
    return kwargs, (2, in_channels, *hw), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None)
@given(conv2d_configs())
def test_conv2d_matches_torch_over_random_configs(config):
    kwargs, shape, seed = config
    params, module = twin(nn.Conv2d(**kwargs), seed, randomise=False)
    x = fm.random.normal(fm.key(seed + 1), shape)
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)


# -- per-sample gradients ----------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_per_sample_grads(bias):
    spec = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.Tanh(), nn.Linear(6, 2, bias=bias))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 2)))


@pytest.mark.parametrize("name, kwargs, shape", CONV_CASES, ids=CONV_IDS)
def test_conv_per_sample_grads(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs), randomise=False)
    x = fm.random.normal(fm.key(1), shape)
    y = fm.random.normal(fm.key(2), module(x).shape)
    assert_per_sample_grads_match(params, x, y)


# -- initialisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, make_module, fan_in",
    [
        (nn.Linear(64, 200), lambda: torch.nn.Linear(64, 200), 64),
        (nn.Conv1d(3, 128, 5), lambda: torch.nn.Conv1d(3, 128, 5), 15),
        (nn.Conv2d(4, 96, 3, groups=2), lambda: torch.nn.Conv2d(4, 96, 3, groups=2), 18),
    ],
)
def test_init_is_torch_default_uniform(spec, make_module, fan_in):
    """kaiming_uniform(a=sqrt(5)) weights and fan-in biases: both U(-1/sqrt(fan_in), ...)."""
    bound = 1 / math.sqrt(fan_in)
    ours = fm.to_state_dict(fm.init(fm.key(7), spec))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = make_module().state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        assert t.shape == theirs[name].shape
        assert t.dtype == torch.float32
        assert t.abs().max() <= bound
        sample = t.flatten().double().numpy()
        # fixed keys make these deterministic; p > 1e-3 rejects any visible deviation
        uniform = scipy.stats.kstest(sample, "uniform", args=(-bound, 2 * bound))
        assert uniform.pvalue > 1e-3, name
        same_law = scipy.stats.ks_2samp(sample, theirs[name].flatten().double().numpy())
        assert same_law.pvalue > 1e-3, name


def test_init_is_deterministic_and_key_dependent():
    spec = nn.Conv2d(2, 4, 3)
    a, b, c = (fm.to_state_dict(fm.init(fm.key(k), spec)) for k in (3, 3, 4))
    for name in a:
        torch.testing.assert_close(a[name], b[name], **EXACT)
        assert not torch.equal(a[name], c[name])
    # weight and bias come from different streams of the same layer key
    lin = fm.to_state_dict(fm.init(fm.key(0), nn.Linear(1, 8)))
    assert not torch.equal(lin["weight"].flatten(), lin["bias"])


# -- bad input ---------------------------------------------------------------------------


def test_linear_wrong_features_names_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(
        ValueError, match=r"layer '2' \(Linear\): expected input \(\*, 5\), got shape \(2, 4\)"
    ):
        fm.apply(params, torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match=r"layer '0' \(Linear\): expected input \(\*, 3\), got shape \(2, 7\)"
    ):
        fm.apply(params, torch.zeros(2, 7))
    alone = fm.init(fm.key(0), nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"layer '<root>' \(Linear\): .* got shape \(\)"):
        fm.apply(alone, torch.tensor(1.0))


@pytest.mark.parametrize(
    "first, second, x_shape, msg",
    [
        (
            nn.Conv2d(3, 4, 3),
            nn.Conv2d(5, 2, 3),
            (2, 3, 6, 6),
            r"layer '1' \(Conv2d\): expected input \(N, C, H, W\) or \(C, H, W\) with C=5, "
            r"got shape \(2, 4, 4, 4\)",
        ),
        (
            nn.Conv1d(3, 4, 3),
            nn.Conv1d(2, 2, 1),
            (2, 3, 6),
            r"layer '1' \(Conv1d\): expected input \(N, C, L\) or \(C, L\) with C=2, "
            r"got shape \(2, 4, 4\)",
        ),
        (
            nn.Linear(4, 6),
            nn.Conv2d(6, 2, 1),
            (3, 4),
            r"layer '1' \(Conv2d\): expected input \(N, C, H, W\) or \(C, H, W\) with C=6, "
            r"got shape \(3, 6\)",
        ),
        (
            nn.Linear(4, 6),
            nn.Conv1d(6, 2, 1),
            (1, 1, 1, 4),
            r"layer '1' \(Conv1d\): expected input .* with C=6, got shape \(1, 1, 1, 6\)",
        ),
    ],
)
def test_conv_wrong_channels_or_rank_names_layer(first, second, x_shape, msg):
    params = fm.init(fm.key(0), nn.Sequential(first, second))
    with pytest.raises(ValueError, match=msg):
        fm.apply(params, torch.zeros(x_shape))


@pytest.mark.parametrize(
    "spec, shape",
    [
        (nn.Conv2d(2, 3, 3), (2, 2, 5, 5, 5)),
        (nn.Conv2d(2, 3, 3), (5, 5)),
        (nn.Conv1d(2, 3, 3), (5,)),
    ],
)
def test_conv_wrong_rank_at_root(spec, shape):
    params = fm.init(fm.key(0), spec)
    rank = spec.example_ndim
    with pytest.raises(
        ValueError,
        match=rf"layer '<root>' \({spec.type_name}\): expected an input of rank {rank} "
        rf"\(one example\) or {rank + 1} \(a batch\), got shape",
    ):
        fm.apply(params, torch.zeros(shape))


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.Linear(0, 3), ValueError, r"Linear: in_features must be positive, got 0"),
        (lambda: nn.Linear(3, -1), ValueError, r"Linear: out_features must be positive, got -1"),
        (lambda: nn.Linear(3.0, 2), TypeError, r"Linear: in_features must be an int, got float"),
        (lambda: nn.Linear(True, 2), TypeError, r"Linear: in_features must be an int, got bool"),
        (lambda: nn.Linear(3, 2, bias=1), TypeError, r"Linear: bias must be a bool, got int 1"),
        (lambda: nn.Conv2d(0, 3, 3), ValueError, r"Conv2d: in_channels must be positive, got 0"),
        (lambda: nn.Conv2d(2, 3, 0), ValueError, r"Conv2d: kernel_size must be >= 1, got 0"),
        (lambda: nn.Conv2d(2, 3, (3, -1)), ValueError, r"Conv2d: kernel_size must be >= 1"),
        (lambda: nn.Conv2d(2, 3, 2.5), TypeError, r"Conv2d: kernel_size must be ints, got 2.5"),
        (lambda: nn.Conv2d(2, 3, (3, 3, 3)), ValueError, r"kernel_size must have 2 entries"),
        (lambda: nn.Conv1d(2, 3, (3, 3)), ValueError, r"Conv1d: kernel_size must have 1 entries"),
        (lambda: nn.Conv2d(2, 3, 3, stride=0), ValueError, r"Conv2d: stride must be >= 1, got 0"),
        (lambda: nn.Conv2d(2, 3, 3, padding=-1), ValueError, r"Conv2d: padding must be >= 0"),
        (lambda: nn.Conv2d(2, 3, 3, padding=1.5), TypeError, r"Conv2d: padding must be ints"),
        (lambda: nn.Conv2d(2, 3, 3, dilation=0), ValueError, r"Conv2d: dilation must be >= 1"),
        (
            lambda: nn.Conv2d(2, 3, 3, padding="full"),
            ValueError,
            r"Conv2d: padding must be an int, a tuple of ints, 'same' or 'valid', got 'full'",
        ),
        (
            lambda: nn.Conv2d(2, 3, 3, padding="same", stride=2),
            ValueError,
            r"Conv2d: padding='same' needs stride 1 .* got stride \(2, 2\)",
        ),
        (
            lambda: nn.Conv1d(2, 3, 3, padding="same", stride=3),
            ValueError,
            r"Conv1d: padding='same' needs stride 1",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3, groups=2),
            ValueError,
            r"Conv2d: groups=2 must divide in_channels=3",
        ),
        (
            lambda: nn.Conv2d(4, 6, 3, groups=4),
            ValueError,
            r"Conv2d: groups=4 must divide out_channels=6",
        ),
        (lambda: nn.Conv2d(2, 2, 3, groups=0), ValueError, r"Conv2d: groups must be positive"),
        (
            lambda: nn.Conv2d(2, 3, 3, padding_mode="zero"),
            ValueError,
            r"Conv2d: padding_mode must be one of \['zeros', 'reflect', 'replicate', "
            r"'circular'\], got 'zero'",
        ),
        (lambda: nn.Conv1d(2, 3, 3, bias=None), TypeError, r"Conv1d: bias must be a bool"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_sizes_are_stored_as_tuples():
    assert nn.Conv2d(2, 3, 3) == nn.Conv2d(2, 3, (3, 3), stride=[1, 1], padding=(0, 0))
    assert hash(nn.Conv2d(2, 3, 3)) == hash(nn.Conv2d(2, 3, (3, 3)))
    spec = nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2)
    assert (spec.kernel_size, spec.stride, spec.padding, spec.dilation) == ((3,), (2,), (1,), (2,))
    assert nn.Conv2d(2, 3, 3, padding="same").padding == "same"


# Inputs that torch rejects deep inside with a RuntimeError/AttributeError that does not
# name the layer: ours must name it.
def test_conv_input_smaller_than_kernel_names_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Conv2d(2, 3, 3), nn.Conv2d(3, 3, 3)))
    with pytest.raises(ValueError, match=r"layer '1' \(Conv2d\): .*too small"):
        fm.apply(params, torch.zeros(1, 2, 4, 4))


def test_conv_reflect_padding_too_large_names_layer():
    params = fm.init(fm.key(0), nn.Conv1d(2, 3, 3, padding=3, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"layer '<root>' \(Conv1d\): .*reflect"):
        fm.apply(params, torch.zeros(1, 2, 3))


@pytest.mark.parametrize("spec", [nn.Linear(2, 3), nn.Conv1d(1, 2, 1)])
def test_non_tensor_input_names_layer(spec):
    params = fm.init(fm.key(0), nn.Sequential(spec))
    with pytest.raises(TypeError, match=r"layer '0' \(.*\): expected a tensor, got list"):
        fm.apply(params, [[1.0, 2.0]])
