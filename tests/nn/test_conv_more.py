"""Conv3d and the transposed convolutions: fidelity to torch.nn, shapes, init, per-sample
gradients, conversion to torch modules, configs, files and checks.

Our layers call the same torch.nn.functional kernels as torch.nn on the same tensors, so
outputs agree exactly on CPU (``atol=rtol=0``); gradients use the helper's tolerances
(``atol=1e-5, rtol=1e-4``); compiled outputs are within ``1e-5`` of eager ones.
"""

import math

import pytest
import scipy.stats
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, example_input, twin

nn = fm.nn

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

EXACT = {"atol": 0.0, "rtol": 0.0}

# (layer name, kwargs shared by our spec and torch's module, batched input shape)
CASES = [
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
IDS = [f"{name}-{kw}" for name, kw, _ in CASES]


# -- fidelity ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
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


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_zero_size_batch(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs))
    x = example_input(shape)[:0]
    with torch.no_grad():
        want = module(x)
    got = fm.apply(params, x)
    assert got.shape == want.shape and got.shape[0] == 0


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
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


# -- per-sample gradients ------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_per_sample_grads(name, kwargs, shape):
    params, module = twin(getattr(nn, name)(**kwargs))
    x = example_input(shape)
    with torch.no_grad():
        y = example_input(tuple(module(x).shape), seed=2)
    assert_per_sample_grads_match(params, x, y)


# -- initialisation ------------------------------------------------------------------------


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
def test_init_is_torch_default_uniform(spec, make_module, fan_in):
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


# -- torch modules, configs and files ------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
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


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
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


# -- bad specs and inputs --------------------------------------------------------------------


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
def test_invalid_spec(make, exc, msg):
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
