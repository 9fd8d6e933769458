"""Conv1d/2d/3d and ConvTranspose1d/2d/3d (``_conv.py``) against torch.nn: outputs,
shapes, init, per-sample gradients, conversion to torch modules, configs, files, checks.

Our layers call the same torch.nn.functional kernels as torch.nn on the same tensors, so
outputs agree exactly on CPU (``atol=rtol=0``); gradients use the helper's tolerances
(``atol=1e-5, rtol=1e-4``). The contract over every layer type (tests/test_contract.py)
also holds the compile check.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, example_input, torch_twin, twin

nn = fm.nn

# torch warns that even kernels with padding='same' copy the input; torch.nn does the same
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


# Our layers call the same torch.nn.functional kernels as torch.nn on the same tensors,
# so outputs agree exactly on CPU; gradients use the helper's default tolerances.
EXACT = {"atol": 0.0, "rtol": 0.0}


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


@pytest.mark.parametrize("name, kwargs, shape", CONV_CASES, ids=CONV_IDS)
def test_conv_per_sample_grads(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs), randomise=False)
    x = fm.random.normal(fm.key(1), shape)
    y = fm.random.normal(fm.key(2), module(x).shape)
    assert_per_sample_grads_match(params, x, y)


@pytest.mark.parametrize(
    "spec, make_module, fan_in",
    [
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


@pytest.mark.parametrize("spec", [nn.Conv1d(1, 2, 1)])
def test_non_tensor_input_names_layer(spec):
    params = fm.init(fm.key(0), nn.Sequential(spec))
    with pytest.raises(TypeError, match=r"layer '0' \(.*\): expected a tensor, got list"):
        fm.apply(params, [[1.0, 2.0]])


# (layer name, kwargs shared by our spec and torch's module, batched input shape)
TRANSPOSED_AND_3D_CASES = [
    ("Conv3d", {"in_channels": 2, "out_channels": 3, "kernel_size": 2}, (3, 2, 4, 5, 3)),
    (
        "Conv3d",
        {"in_channels": 4, "out_channels": 2, "kernel_size": (1, 3, 2), "stride": (1, 2, 1)}
        | {"padding": (0, 1, 1), "groups": 2, "bias": False},
        (2, 4, 3, 5, 4),
    ),
    (
        "Conv3d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": "same"}
        | {"dilation": (1, 2, 1), "padding_mode": "reflect"},
        (2, 2, 4, 5, 4),
    ),
    (
        "Conv3d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 2, "padding": 1}
        | {"padding_mode": "circular"},
        (2, 2, 3, 3, 4),
    ),
    (
        "Conv3d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": (2, 1, 3), "padding": "valid"}
        | {"padding_mode": "replicate"},
        (2, 2, 3, 3, 4),
    ),
    ("ConvTranspose1d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3}, (3, 2, 5)),
    (
        "ConvTranspose1d",
        {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 3, "padding": 1}
        | {"output_padding": 2, "groups": 2, "bias": False},
        (2, 4, 4),
    ),
    (
        "ConvTranspose1d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 2, "dilation": 3}
        | {"output_padding": 2},
        (2, 2, 4),
    ),
    (
        "ConvTranspose2d",
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1}
        | {"output_padding": 1},
        (3, 2, 4, 5),
    ),
    (
        "ConvTranspose2d",
        {"in_channels": 6, "out_channels": 4, "kernel_size": (2, 3), "stride": (2, 1)}
        | {"padding": (0, 1), "groups": 2, "dilation": (1, 2)},
        (2, 6, 3, 4),
    ),
    (
        "ConvTranspose2d",
        {"in_channels": 3, "out_channels": 3, "kernel_size": 1, "groups": 3, "bias": False},
        (2, 3, 2, 2),
    ),
    (
        "ConvTranspose3d",
        {"in_channels": 2, "out_channels": 2, "kernel_size": 2, "stride": 2},
        (2, 2, 2, 3, 2),
    ),
    (
        "ConvTranspose3d",
        {"in_channels": 2, "out_channels": 4, "kernel_size": (3, 1, 2), "stride": (2, 1, 3)}
        | {"padding": (1, 0, 0), "output_padding": (1, 0, 2), "groups": 2},
        (2, 2, 3, 2, 2),
    ),
]


TRANSPOSED_AND_3D_IDS = [f"{name}-{kw}" for name, kw, _ in TRANSPOSED_AND_3D_CASES]


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_matches_torch_batched_single_and_in_train_mode(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs))
    x = example_input(shape)
    before = x.clone()
    with torch.no_grad():
        want = module.eval()(x)
        torch.testing.assert_close(fm.apply(params, x), want, **EXACT)
        torch.testing.assert_close(fm.apply(params, x[1]), module(x[1]), **EXACT)
        # no buffers, no randomness: train mode computes the same, as in torch
        train = fm.apply(params, x, key=fm.key(3), train=True)
        torch.testing.assert_close(train, module.train()(x), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_zero_size_batch(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs))
    x = example_input(shape)[:0]
    with torch.no_grad():
        want = module(x)
    got = fm.apply(params, x)
    assert got.shape == want.shape and got.shape[0] == 0


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_shape_inference_matches_torch_and_infers_in_channels(name, kwargs, shape):
    _, module = twin(getattr(nn, name)(**kwargs))
    with torch.no_grad():
        want = tuple(module(example_input(shape)).shape[1:])
    spec = getattr(nn, name)(**kwargs)
    assert fm.shapes(spec, shape[1:])[""] == want
    # in_channels left out is inferred from the input shape, giving the same spec
    partial = getattr(nn, name)(**{k: v for k, v in kwargs.items() if k != "in_channels"})
    assert partial.in_channels is None
    params = fm.init(fm.key(0), partial, input_shape=shape[1:])
    assert params.spec == spec
    # an unknown spatial size stays unknown; the channels are still checked
    assert fm.shapes(spec, (shape[1],) + (None,) * (len(shape) - 2))[""][0] == want[0]


def _ints(n, lo, hi):
    return st.tuples(*[st.integers(lo, hi)] * n)


@st.composite
def transposed_configs(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    kernel, stride = draw(_ints(n, 1, 3)), draw(_ints(n, 1, 3))
    dilation, padding = draw(_ints(n, 1, 2)), draw(_ints(n, 0, 2))
    output_padding = tuple(
        draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
    )
    kwargs = {
        "in_channels": groups * draw(st.integers(1, 2)),
        "out_channels": groups * draw(st.integers(1, 2)),
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "bias": draw(st.booleans()),
        "dilation": dilation,
    }
    size = draw(_ints(n, 1, 4))
    return f"ConvTranspose{n}d", kwargs, (2, kwargs["in_channels"], *size), draw(st.integers(0, 99))


@settings(max_examples=40, deadline=None)
@given(transposed_configs())
def test_transposed_convs_match_torch_over_random_configs(config):
    name, kwargs, shape, seed = config
    params, module = twin(getattr(nn, name)(**kwargs), seed)
    x = example_input(shape, seed=seed)
    try:
        with torch.no_grad():
            want = module(x)
    except RuntimeError:
        want = None
    if want is None or 0 in want.shape[2:]:
        # torch refuses an empty output ("Output size is too small"; for some batch sizes
        # its CPU kernels return one instead): we always refuse it, naming the layer
        with pytest.raises(ValueError, match=rf"\({name}\): .*empty output"):
            fm.apply(params, x)
        with pytest.raises(ValueError, match=rf"\({name}\): .*empty output"):
            fm.shapes(params, shape[1:])
        return
    torch.testing.assert_close(fm.apply(params, x), want, **EXACT)
    with torch.no_grad():  # one example runs torch's kernel for a batch of one
        torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    assert fm.shapes(params, shape[1:])[""] == tuple(want.shape[1:])


@st.composite
def conv3d_configs(draw):
    groups = draw(st.integers(1, 2))
    kernel, dilation = draw(_ints(3, 1, 2)), draw(_ints(3, 1, 2))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]), _ints(3, 0, 1)))
    stride = (1, 1, 1) if padding == "same" else draw(_ints(3, 1, 2))
    pads = (0, 0, 0) if isinstance(padding, str) else padding
    size = tuple(
        draw(st.integers(max(d * (k - 1) + 1 - 2 * p, p + 1, 1), 4))
        for k, d, p in zip(kernel, dilation, pads, strict=True)
    )
    kwargs = {
        "in_channels": groups * draw(st.integers(1, 2)),
        "out_channels": groups * draw(st.integers(1, 2)),
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": mode,
    }
    return kwargs, (2, kwargs["in_channels"], *size), draw(st.integers(0, 99))


@settings(max_examples=25, deadline=None)
@given(conv3d_configs())
def test_conv3d_matches_torch_over_random_configs(config):
    kwargs, shape, seed = config
    params, module = twin(nn.Conv3d(**kwargs), seed)
    x = example_input(shape, seed=seed)
    with torch.no_grad():
        want = module(x)
    torch.testing.assert_close(fm.apply(params, x), want, **EXACT)
    assert fm.shapes(params, shape[1:])[""] == tuple(want.shape[1:])


@pytest.mark.parametrize("stride, dilation", [(3, 1), (2, 2), (1, 3)])
def test_output_padding_gives_what_torch_output_size_gives(stride, dilation):
    """torch's forward(x, output_size) is this spec with output_padding = wanted - base."""
    kwargs = {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": stride}
    kwargs |= {"padding": 1, "dilation": dilation}
    x = example_input((2, 2, 4, 5))
    base = [(n - 1) * stride - 2 + dilation * 2 + 1 for n in x.shape[2:]]
    params, module = twin(nn.ConvTranspose2d(**kwargs))
    for extra in range(max(stride, dilation)):
        wanted = [b + extra for b in base]
        spec = nn.ConvTranspose2d(**kwargs, output_padding=extra)
        ours = fm.apply(fm.from_state_dict(spec, fm.to_state_dict(params))[0], x)
        with torch.no_grad():
            if extra < stride:  # torch's output_size reaches base + stride - 1 at most
                torch.testing.assert_close(ours, module(x, output_size=wanted), **EXACT)
            assert list(ours.shape[2:]) == wanted


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_per_sample_grads(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs))
    x = example_input(shape)
    with torch.no_grad():
        y = example_input(tuple(module(x).shape), seed=2)
    assert_per_sample_grads_match(params, x, y)


@pytest.mark.parametrize(
    "spec, make_module, fan_in",
    [
        (nn.Conv3d(3, 64, 3), lambda: torch.nn.Conv3d(3, 64, 3), 81),
        (
            nn.ConvTranspose2d(16, 48, 3, groups=2),
            lambda: torch.nn.ConvTranspose2d(16, 48, 3, groups=2),
            24 * 9,
        ),
        (nn.ConvTranspose1d(40, 8, 5), lambda: torch.nn.ConvTranspose1d(40, 8, 5), 40),
        (
            nn.ConvTranspose3d(32, 4, 2, groups=4),
            lambda: torch.nn.ConvTranspose3d(32, 4, 2, groups=4),
            8,
        ),
    ],
)
def test_transposed_and_3d_init_is_torch_default_uniform(spec, make_module, fan_in):
    """U(-1/sqrt(fan_in), ...) for weight and bias, with torch's fan-in: weight.shape[1]
    times the kernel volume, which is out/groups for a transposed convolution."""
    bound = 1 / math.sqrt(fan_in)
    ours = fm.to_state_dict(fm.init(fm.key(7), spec))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = make_module().state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        assert t.shape == theirs[name].shape and t.dtype == torch.float32
        assert t.abs().max() <= bound
        sample = t.flatten().double().numpy()
        # fixed keys make these deterministic; p > 1e-3 rejects any visible deviation
        assert scipy.stats.kstest(sample, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
        other = theirs[name].flatten().double().numpy()
        assert scipy.stats.ks_2samp(sample, other).pvalue > 1e-3, name


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_to_module_and_back_is_exact(name, kwargs, shape):
    params, _ = twin(getattr(nn, name)(**kwargs))
    module = transforms.to_module(params)
    assert type(module) is getattr(torch.nn, name)
    x = example_input(shape)
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), **EXACT)
    back, state = transforms.from_module(module)
    assert back.spec == params.spec and not state.flat()
    for k, t in params.flat().items():
        assert torch.equal(back.flat()[k], t), k
    # a module made by torch itself converts to the same spec
    back, _ = transforms.from_module(getattr(torch.nn, name)(**kwargs))
    assert back.spec == params.spec


def test_from_module_refuses_padding_modes_a_transposed_conv_lacks():
    module = torch.nn.ConvTranspose2d(2, 3, 3)
    module.padding_mode = "reflect"  # torch's constructor refuses it too
    with pytest.raises(ValueError, match=r"\(ConvTranspose2d\).*padding_mode must be 'zeros'"):
        transforms.from_module(torch.nn.Sequential(module))


@pytest.mark.parametrize("name, kwargs, shape", TRANSPOSED_AND_3D_CASES, ids=TRANSPOSED_AND_3D_IDS)
def test_config_and_file_round_trips(name, kwargs, shape, tmp_path):
    params, _ = twin(getattr(nn, name)(**kwargs))
    spec = params.spec
    for defaults in (False, True):
        assert fm.from_config(spec.to_config(defaults=defaults)) == spec
    fm.save(tmp_path / "m.safetensors", params)
    loaded, _ = fm.load(tmp_path / "m.safetensors")
    assert loaded.spec == spec
    x = example_input(shape)
    torch.testing.assert_close(fm.apply(loaded, x), fm.apply(params, x), **EXACT)
    entry = spec.to_config()
    assert entry["type"] == name.lower()


def test_summary_rows():
    spec = nn.Sequential(
        nn.Conv3d(out_channels=4, kernel_size=3, padding=1),
        nn.ConvTranspose3d(out_channels=2, kernel_size=2, stride=2, groups=2),
    )
    params = fm.init(fm.key(0), spec, input_shape=(1, 3, 4, 5))
    rows = {r.path: r for r in fm.summary(params, (1, 3, 4, 5)).rows}
    assert (rows["0"].type, rows["0"].out_shape, rows["0"].params) == (
        "Conv3d",
        (4, 3, 4, 5),
        4 * 27 + 4,
    )
    assert (rows["1"].type, rows["1"].out_shape, rows["1"].params) == (
        "ConvTranspose3d",
        (2, 6, 8, 10),
        4 * 1 * 8 + 2,
    )


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.Conv3d(2, 3, (3, 3)), ValueError, r"Conv3d: kernel_size must have 3 entries"),
        (lambda: nn.Conv3d(2, 3, 3, stride=0), ValueError, r"Conv3d: stride must be >= 1"),
        (
            lambda: nn.Conv3d(2, 3, 3, padding="same", stride=2),
            ValueError,
            r"Conv3d: padding='same' needs stride 1",
        ),
        (lambda: nn.Conv3d(3, 4, 3, groups=2), ValueError, r"Conv3d: groups=2 must divide"),
        (
            lambda: nn.ConvTranspose2d(2, 3, 3, padding="same"),
            TypeError,
            r"ConvTranspose2d: padding must be an int or a tuple of ints .* got 'same'",
        ),
        (
            lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=2),
            ValueError,
            r"ConvTranspose2d: output_padding must be smaller than either stride or dilation",
        ),
        (
            lambda: nn.ConvTranspose1d(2, 3, 3, output_padding=1),
            ValueError,
            r"ConvTranspose1d: output_padding must be smaller",
        ),
        (
            lambda: nn.ConvTranspose3d(2, 3, 3, output_padding=-1),
            ValueError,
            r"ConvTranspose3d: output_padding must be >= 0",
        ),
        (
            lambda: nn.ConvTranspose2d(2, 3, 3, padding_mode="reflect"),
            ValueError,
            r"ConvTranspose2d: padding_mode must be 'zeros'.* got 'reflect'",
        ),
        (
            lambda: nn.ConvTranspose2d(4, 3, 3, groups=2),
            ValueError,
            r"ConvTranspose2d: groups=2 must divide out_channels=3",
        ),
        (
            lambda: nn.ConvTranspose1d(2, 3, 3, bias="yes"),
            TypeError,
            r"ConvTranspose1d: bias must be a bool",
        ),
        (
            lambda: nn.ConvTranspose2d(2, 3, (2, 2, 2)),
            ValueError,
            r"ConvTranspose2d: kernel_size must have 2 entries",
        ),
        (
            lambda: nn.ConvTranspose2d(2, 3),
            TypeError,
            r"ConvTranspose2d: missing required argument\(s\) \['kernel_size'\]",
        ),
    ],
)
def test_invalid_transposed_and_3d_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_torch_positional_order():
    """Positional arguments mean what they mean in torch (dilation after bias for the
    transposed convolutions)."""
    args = (4, 6, 3, 2, 1, 1, 2, False, 2)
    assert nn.ConvTranspose2d(*args) == nn.ConvTranspose2d(
        in_channels=4,
        out_channels=6,
        kernel_size=3,
        stride=2,
        padding=1,
        output_padding=1,
        groups=2,
        bias=False,
        dilation=2,
    )
    module = torch.nn.ConvTranspose2d(*args)
    assert transforms.from_module(module)[0].spec == nn.ConvTranspose2d(*args)


@pytest.mark.parametrize(
    "first, second, shape, msg",
    [
        (
            nn.Conv3d(2, 3, 1),
            nn.ConvTranspose3d(4, 2, 2),
            (2, 2, 3, 3, 3),
            r"layer '1' \(ConvTranspose3d\): expected input \(N, C, D, H, W\) or "
            r"\(C, D, H, W\) with C=4, got shape \(2, 3, 3, 3, 3\)",
        ),
        (
            nn.Linear(4, 6),
            nn.Conv3d(6, 2, 1),
            (3, 4),
            r"layer '1' \(Conv3d\): expected input .* with C=6, got shape \(3, 6\)",
        ),
        (
            nn.Linear(4, 2),
            nn.ConvTranspose1d(2, 2, 1),
            (3, 1, 1, 4),
            r"layer '1' \(ConvTranspose1d\): expected input \(N, C, L\) or \(C, L\) with C=2, "
            r"got shape \(3, 1, 1, 2\)",
        ),
    ],
)
def test_wrong_channels_or_rank_names_layer(first, second, shape, msg):
    params = fm.init(fm.key(0), nn.Sequential(first, second))
    with pytest.raises(ValueError, match=msg):
        fm.apply(params, torch.zeros(shape))


def test_wrong_rank_at_root_and_too_small_inputs():
    params = fm.init(fm.key(0), nn.ConvTranspose3d(2, 2, 2))
    with pytest.raises(ValueError, match=r"expected an input of rank 4 .* or 5 \(a batch\)"):
        fm.apply(params, torch.zeros(2, 2, 3))
    # padding larger than the full output: torch fails deep inside, we name the layer
    small = fm.init(fm.key(0), nn.Sequential(nn.ConvTranspose1d(2, 2, 3, padding=2)))
    with pytest.raises(ValueError, match=r"layer '0' \(ConvTranspose1d\): .*empty output"):
        fm.apply(small, torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match=r"layer '0' \(ConvTranspose1d\): .*empty output"):
        fm.shapes(small, (2, 1))
    big = fm.init(fm.key(0), nn.Conv3d(2, 2, 3))
    with pytest.raises(ValueError, match=r"\(Conv3d\): input of spatial size .* too small"):
        fm.apply(big, torch.zeros(1, 2, 3, 2, 3))
