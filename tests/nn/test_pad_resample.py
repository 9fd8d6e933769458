"""Padding, upsampling, pixel (un)shuffle and Unflatten: fidelity to torch.nn, shapes,
per-sample gradients, conversion to torch modules, configs, files and checks.

Same kernels on the same input: outputs agree exactly on CPU (``atol=rtol=0``); gradients
use the helper's tolerances (``atol=1e-5, rtol=1e-4``); compiled outputs are within
``1e-5`` of eager ones.
"""

import re
import warnings

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, example_input, spec_and_module

nn = fm.nn

EXACT = {"atol": 0.0, "rtol": 0.0}

# How one example compares with torch: "torch" when torch takes the example as it is
# (and means the same by it), "batch" when torch only takes a batch, so that the example
# is compared with torch's output for a batch of one; None where the layer counts dims on
# the batch (Unflatten), so that an example means something else.
# (layer name, positional args, kwargs, batched input shape, single)
CASES = [
    ("ZeroPad1d", (2,), {}, (2, 3, 5), "torch"),
    ("ZeroPad2d", ((1, 0, -1, 2),), {}, (2, 3, 4, 5), "torch"),
    ("ZeroPad3d", ((1, 2, 0, 1, 2, -1),), {}, (2, 2, 3, 4, 5), "torch"),
    ("ConstantPad1d", ((3, -1),), {"value": 1.5}, (2, 3, 5), "torch"),
    ("ConstantPad2d", (1,), {"value": -2}, (2, 3, 4, 5), "torch"),
    ("ConstantPad3d", ((0, 1, 1, 0, 2, 2), 0.25), {}, (2, 2, 3, 4, 5), "torch"),
    ("ReflectionPad1d", ((2, 3),), {}, (2, 3, 5), "torch"),
    ("ReflectionPad2d", ((1, 2, 3, -1),), {}, (2, 3, 4, 5), "torch"),
    ("ReflectionPad3d", (1,), {}, (2, 2, 3, 4, 5), "torch"),
    ("ReplicationPad1d", ((4, 0),), {}, (2, 3, 2), "torch"),
    ("ReplicationPad2d", ((1, 2, -1, 5),), {}, (2, 3, 4, 5), "torch"),
    ("ReplicationPad3d", ((2, 1, 0, 3, 1, 1),), {}, (2, 2, 3, 4, 5), "torch"),
    ("CircularPad1d", ((5, 2),), {}, (2, 3, 5), "torch"),
    ("CircularPad2d", ((1, -1, 2, -2),), {}, (2, 3, 4, 5), "torch"),
    ("CircularPad3d", ((1, 0, 2, 2, 3, 1),), {}, (2, 2, 3, 4, 5), "torch"),
    ("Upsample", (), {"scale_factor": 2}, (2, 3, 4, 5), "torch"),
    ("Upsample", (), {"size": 7}, (2, 3, 4, 5, 3), "torch"),
    ("Upsample", (), {"size": (3, 8), "mode": "nearest"}, (2, 3, 4, 5), "batch"),
    ("Upsample", (), {"scale_factor": 1.7, "mode": "linear"}, (2, 3, 5), "batch"),
    (
        "Upsample",
        (),
        {"size": (6, 9), "mode": "bilinear", "align_corners": True},
        (2, 3, 4, 5),
        "batch",
    ),
    ("Upsample", (), {"scale_factor": (1.5, 0.8), "mode": "bicubic"}, (2, 3, 4, 5), "batch"),
    (
        "Upsample",
        (),
        {"scale_factor": 1.3, "mode": "trilinear", "recompute_scale_factor": True},
        (2, 2, 3, 4, 5),
        "batch",
    ),
    ("Upsample", (), {"scale_factor": 0.5, "mode": "area"}, (2, 3, 6, 4), "torch"),
    ("Upsample", (), {"scale_factor": (2.5,), "mode": "nearest-exact"}, (2, 3, 4), "batch"),
    ("UpsamplingNearest2d", (), {"scale_factor": 2}, (2, 3, 4, 5), "batch"),
    ("UpsamplingNearest2d", ((5, 3),), {}, (2, 3, 4, 5), "batch"),
    ("UpsamplingBilinear2d", (), {"scale_factor": (1.5, 2)}, (2, 3, 4, 5), "batch"),
    ("UpsamplingBilinear2d", (7,), {}, (2, 3, 4, 5), "batch"),
    ("PixelShuffle", (2,), {}, (2, 8, 3, 4), "torch"),
    ("PixelShuffle", (3,), {}, (2, 2, 9, 2, 3), "torch"),
    ("PixelUnshuffle", (2,), {}, (2, 3, 4, 6), "torch"),
    ("PixelUnshuffle", (3,), {}, (2, 1, 2, 3, 6), "torch"),
    ("Unflatten", (1, (2, 3)), {}, (2, 6, 4), None),
    ("Unflatten", (-1, [2, -1, 1]), {}, (2, 3, 8), "torch"),
    ("Unflatten", (2, (-1,)), {}, (2, 3, 8), None),
]
IDS = [f"{name}-{args}-{kw}" for name, args, kw, _, _ in CASES]

# nearest-exact has no vmap batching rule in torch: it runs, with a slow-path warning.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


# -- fidelity ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_matches_torch_batched_single_and_in_train_mode(name, args, kwargs, shape, single):
    spec, module = spec_and_module(name, *args, **kwargs)
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {} == module.state_dict()
    x = example_input(shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    if single is not None:
        want = module(x[1]) if single == "torch" else module(x[1:2])[0]
        torch.testing.assert_close(fm.apply(params, x[1]), want, **EXACT)
    train = fm.apply(params, x, key=fm.key(2), train=True)
    torch.testing.assert_close(train, module.train()(x), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_zero_size_batch(name, args, kwargs, shape, single):
    spec, module = spec_and_module(name, *args, **kwargs)
    x = example_input(shape)[:0]
    got = fm.apply(fm.init(fm.key(0), spec), x)
    assert got.shape == module(x).shape and got.shape[0] == 0


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_shape_inference_matches_torch(name, args, kwargs, shape, single):
    spec, module = spec_and_module(name, *args, **kwargs)
    assert fm.shapes(spec, shape[1:])[""] == tuple(module(example_input(shape)).shape[1:])


def test_shape_inference_with_unknown_sizes_and_ranks():
    assert fm.shapes(nn.ZeroPad2d((1, 2, 3, 4)), (5, None, 6))[""] == (5, None, 9)
    assert nn.ConstantPad3d(1, 0.0).out_shape((..., 4, 5)) == (..., 6, 7)
    assert nn.ReflectionPad2d(1).out_shape((..., 4)) == (None, None, 6)
    assert nn.Upsample(scale_factor=2).out_shape((..., 5)) == (..., 10)
    assert nn.Upsample(size=(3, 4), mode="bicubic").out_shape((..., 7)) == (None, 3, 4)
    assert fm.shapes(nn.Upsample(scale_factor=1.5), (3, None, 4))[""] == (3, None, 6)
    assert nn.PixelShuffle(2).out_shape((..., 8, 3, 4)) == (..., 2, 6, 8)
    assert nn.PixelUnshuffle(2).out_shape((..., 4, 6)) == (..., None, 2, 3)
    assert fm.shapes(nn.PixelShuffle(2), (5, 12, None, 3))[""] == (5, 3, None, 6)
    assert nn.Unflatten(-1, (2, -1)).out_shape((..., 8)) == (..., 2, 4)
    assert nn.Unflatten(1, (2, -1)).out_shape((..., 8)) == (...,)
    assert fm.shapes(nn.Unflatten(1, (2, -1)), (None, 3))[""] == (2, None, 3)


# Per padded dim: the input size and the two paddings, kept small so that every rule of
# each mode (crops, reflection limits, one wrap-around) is met both ways.
_pad_dims = st.tuples(st.integers(1, 4), st.integers(-5, 5), st.integers(-5, 5))


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(["ZeroPad", "ConstantPad", "ReflectionPad", "ReplicationPad"])
    | st.just("CircularPad"),
    dims=st.lists(_pad_dims, min_size=1, max_size=3),
)
def test_pads_agree_with_torch_on_sizes_values_and_refusals(kind, dims):
    n = len(dims)
    name = f"{kind}{n}d"
    sizes = tuple(d[0] for d in dims)
    padding = tuple(p for d in reversed(dims) for p in d[1:])
    args = (padding, 0.5) if kind == "ConstantPad" else (padding,)
    spec, module = spec_and_module(name, *args)
    params = fm.init(fm.key(0), spec)
    x = example_input((2, 2, *sizes))
    try:
        want = module(x)
    except RuntimeError:
        want = None
    if want is None:
        with pytest.raises(ValueError, match=rf"\({name}\): padding .* does not fit"):
            fm.apply(params, x)
        with pytest.raises(ValueError, match=rf"\({name}\): padding .* does not fit"):
            fm.shapes(spec, (2, *sizes))
        return
    got = fm.apply(params, x) if kind != "CircularPad" else _circular_or_refused(params, x)
    if got is None:
        # torch checks a circular padding against the uncropped size, and past the size
        # left after a crop it returns uninitialised values: we refuse those paddings
        assert any(
            max(before, 0) > n + min(before, 0) + min(after, 0)
            or max(after, 0) > n + min(before, 0) + min(after, 0)
            for n, before, after in dims
        )
        return
    torch.testing.assert_close(got, want, **EXACT)
    assert fm.shapes(spec, (2, *sizes))[""] == tuple(want.shape[1:])


def _circular_or_refused(params, x):
    try:
        return fm.apply(params, x)
    except ValueError as e:
        assert "wrap around the input at most once" in str(e)
        return None


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["nearest", "nearest-exact", "area", "bilinear", "bicubic"]),
    scale=st.one_of(
        st.floats(0.1, 4.0),
        st.tuples(st.floats(0.1, 4.0), st.floats(0.1, 4.0)),
    ),
    recompute=st.sampled_from([None, False, True]),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_upsample_output_sizes_agree_with_torch(mode, scale, recompute, hw):
    kwargs = {"scale_factor": scale, "mode": mode, "recompute_scale_factor": recompute}
    spec, module = spec_and_module("Upsample", **kwargs)
    params = fm.init(fm.key(0), spec)
    x = example_input((2, 2, *hw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = module(x)
    except RuntimeError:
        with pytest.raises(ValueError, match=r"\(Upsample\): .*both must be positive"):
            fm.apply(params, x)
        with pytest.raises(ValueError, match=r"\(Upsample\): .*both must be positive"):
            fm.shapes(spec, (2, *hw))
        return
    torch.testing.assert_close(fm.apply(params, x), want, **EXACT)
    assert fm.shapes(spec, (2, *hw))[""] == tuple(want.shape[1:])


# -- per-sample gradients ------------------------------------------------------------------


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_per_sample_grads(name, args, kwargs, shape, single):
    layer, module = spec_and_module(name, *args, **kwargs)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[len(shape)]
    channels = shape[1]
    flat = module(torch.ones(1, *shape[1:])).numel()
    # the conv fixes the example rank, so fm.apply batches each single example
    spec = nn.Sequential(conv(channels, channels, 1), layer, nn.Flatten(), nn.Linear(flat, 2))
    params = fm.init(fm.key(2), spec)
    x = example_input(shape, seed=3)
    y = example_input((shape[0], 2), seed=4)
    assert_per_sample_grads_match(params, x, y)


# -- torch modules, configs and files ------------------------------------------------------


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_to_module_and_back_is_exact(name, args, kwargs, shape, single):
    spec, module = spec_and_module(name, *args, **kwargs)
    params = fm.init(fm.key(0), spec)
    built = transforms.to_module(params)
    assert type(built) is type(module)
    x = example_input(shape)
    torch.testing.assert_close(built(x), fm.apply(params, x), **EXACT)
    assert transforms.from_module(built)[0].spec == spec
    # a module made by torch itself converts to the same spec
    assert transforms.from_module(module)[0].spec == spec


def _named_unflatten():
    module = torch.nn.Unflatten(1, (2, 3))
    module.dim = "c"  # the named-tensor form
    return module


@pytest.mark.parametrize(
    "module, exc, match",
    [
        (_named_unflatten(), TypeError, "named-tensor dims"),
        (torch.nn.Upsample(scale_factor=0), ValueError, "exactly one of size and scale_factor"),
        (torch.nn.ConstantPad1d(1, float("-inf")), ValueError, "value must be a finite"),
    ],
)
def test_settings_the_spec_cannot_express_are_errors(module, exc, match):
    kind = type(module).__name__
    with pytest.raises(exc, match=rf"module '1' \({kind}\).*{match}"):
        transforms.from_module(torch.nn.Sequential(torch.nn.Identity(), module))


def test_zero_pad_module_with_another_value_is_refused():
    module = torch.nn.ZeroPad2d(1)
    module.value = 2.0
    with pytest.raises(ValueError, match=r"\(ZeroPad2d\): its fill value is 2.0.*ConstantPad2d"):
        transforms.from_module(module)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_config_and_file_round_trips(name, args, kwargs, shape, single, tmp_path):
    spec, _ = spec_and_module(name, *args, **kwargs)
    for defaults in (False, True):
        assert fm.from_config(spec.to_config(defaults=defaults)) == spec
    assert spec.to_config()["type"] == name.lower()
    wrapped = nn.Sequential(spec)
    fm.save(tmp_path / "m.safetensors", fm.init(fm.key(0), wrapped))
    assert fm.load(tmp_path / "m.safetensors")[0].spec == wrapped


def test_values_are_normalised_as_torch_stores_them():
    assert nn.ZeroPad2d(1).padding == (1, 1, 1, 1)
    assert nn.ZeroPad1d([2, 3]) == nn.ZeroPad1d((2, 3))
    assert nn.CircularPad3d(2).padding == (2,) * 6
    assert nn.ConstantPad1d(1, 3) == nn.ConstantPad1d((1, 1), 3.0)
    assert nn.Upsample(scale_factor=2).scale_factor == 2.0
    assert nn.Upsample(scale_factor=[1, 2]).scale_factor == (1.0, 2.0)
    assert nn.Upsample(size=[3, 4]).size == (3, 4)
    assert nn.Upsample(size=5).size == 5  # an int stays one: it fits any number of dims
    assert nn.Unflatten(1, [2, 3]).unflattened_size == (2, 3)
    assert nn.Unflatten(1, torch.Size([2, 3])) == nn.Unflatten(1, (2, 3))
    assert torch.nn.Upsample(scale_factor=2).scale_factor == 2.0


@pytest.mark.parametrize(
    "spec, rank",
    [
        (nn.ZeroPad2d(1), None),
        (nn.ConstantPad1d(1, 0.0), None),
        (nn.ReflectionPad1d(1), 2),
        (nn.ReplicationPad2d(1), 3),
        (nn.CircularPad3d(1), 4),
        (nn.Upsample(scale_factor=2), None),
        (nn.Upsample(scale_factor=2, mode="linear"), 2),
        (nn.Upsample(size=(2, 3)), 3),
        (nn.Upsample(scale_factor=(2, 2, 2), mode="area"), 4),
        (nn.Upsample(size=4, mode="trilinear"), 4),
        (nn.UpsamplingNearest2d(scale_factor=2), 3),
        (nn.UpsamplingBilinear2d(size=4), 3),
        (nn.PixelShuffle(2), None),
        (nn.Unflatten(1, (2, 2)), None),
    ],
)
def test_example_rank(spec, rank):
    assert spec.example_ndim == rank
    if rank is not None:
        assert spec.preserves_rank and nn.Sequential(spec, nn.Flatten()).example_ndim == rank
    # behind a rank-preserving layer, a container finds the rank of the layer after it
    assert nn.Sequential(spec, nn.Conv1d(1, 1, 1)).example_ndim == (
        rank if rank is not None else (2 if spec.preserves_rank else None)
    )


def test_summary_rows():
    spec = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReflectionPad2d((1, 1, 2, 0)),
        nn.PixelShuffle(2),
        nn.Upsample(scale_factor=0.5, mode="bilinear"),
        nn.Flatten(2),
        nn.Unflatten(2, (4, -1)),
        nn.ZeroPad2d(-1),
    )
    summary = fm.summary(spec, (1, 8, 6))
    rows = {r.path: (r.type, r.out_shape, r.params) for r in summary.rows}
    assert rows["1"] == ("ReflectionPad2d", (8, 8, 6), 0)
    assert rows["2"] == ("PixelShuffle", (2, 16, 12), 0)
    assert rows["3"] == ("Upsample", (2, 8, 6), 0)
    assert rows["5"] == ("Unflatten", (2, 4, 12), 0)
    assert rows["6"] == ("ZeroPad2d", (2, 2, 10), 0)
    assert rows[""][1] == (2, 2, 10) and summary.trainable == 8 * 9 + 8
    table = str(fm.summary(spec, (1, 8, 6)))
    for name in ("ReflectionPad2d", "PixelShuffle", "Upsample", "Unflatten", "ZeroPad2d"):
        assert re.search(rf"\b{name}\b", table)


# -- bad specs and inputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.ZeroPad2d((1, 2)), ValueError, r"ZeroPad2d: padding must be an int or 4 ints"),
        (lambda: nn.ZeroPad1d(1.5), TypeError, r"ZeroPad1d: padding must be ints, got 1.5"),
        (lambda: nn.ReflectionPad3d(True), TypeError, r"ReflectionPad3d: padding must be ints"),
        (lambda: nn.ConstantPad2d(1), TypeError, r"ConstantPad2d: missing|required"),
        (
            lambda: nn.ConstantPad2d(1, float("nan")),
            ValueError,
            r"ConstantPad2d: value must be a finite number",
        ),
        (lambda: nn.ConstantPad1d(1, "0"), TypeError, r"ConstantPad1d: value must be a number"),
        (lambda: nn.Upsample(), ValueError, r"Upsample: give exactly one of size and scale_factor"),
        (
            lambda: nn.Upsample(size=2, scale_factor=2),
            ValueError,
            r"Upsample: give exactly one of size and scale_factor",
        ),
        (lambda: nn.Upsample(size=0), ValueError, r"Upsample: size must be positive"),
        (lambda: nn.Upsample(size=2.0), TypeError, r"Upsample: size must be ints"),
        (lambda: nn.Upsample(size=(1, 2, 3, 4)), ValueError, r"Upsample: size must be an int or"),
        (
            lambda: nn.Upsample(scale_factor=float("inf")),
            ValueError,
            r"Upsample: scale_factor must be positive and finite",
        ),
        (lambda: nn.Upsample(scale_factor=-1), ValueError, r"must be positive and finite"),
        (lambda: nn.Upsample(scale_factor="2"), TypeError, r"scale_factor must be numbers"),
        (
            lambda: nn.Upsample(scale_factor=2, mode="cubic"),
            ValueError,
            r"Upsample: mode must be one of \['nearest', ",
        ),
        (
            lambda: nn.Upsample(scale_factor=2, align_corners=False),
            ValueError,
            r"Upsample: align_corners can only be set with the interpolating modes",
        ),
        (
            lambda: nn.Upsample(scale_factor=2, mode="linear", align_corners=1),
            TypeError,
            r"Upsample: align_corners must be a bool",
        ),
        (
            lambda: nn.Upsample(size=3, recompute_scale_factor=True),
            ValueError,
            r"Upsample: recompute_scale_factor=True needs scale_factor",
        ),
        (
            lambda: nn.Upsample(size=(3, 3), mode="trilinear"),
            ValueError,
            r"Upsample: mode 'trilinear' works on 3 spatial dim\(s\), but size has 2 entries",
        ),
        (
            lambda: nn.UpsamplingNearest2d(size=(2, 3, 4)),
            ValueError,
            r"UpsamplingNearest2d: size must have 2 entries",
        ),
        (
            lambda: nn.UpsamplingBilinear2d(),
            ValueError,
            r"UpsamplingBilinear2d: give exactly one of size and scale_factor",
        ),
        (lambda: nn.PixelShuffle(0), ValueError, r"PixelShuffle: upscale_factor must be positive"),
        (lambda: nn.PixelUnshuffle(2.0), TypeError, r"PixelUnshuffle: downscale_factor must be"),
        (lambda: nn.Unflatten("c", (2, 3)), TypeError, r"Unflatten: dim must be an int"),
        (lambda: nn.Unflatten(1, 6), TypeError, r"Unflatten: unflattened_size must be a tuple"),
        (lambda: nn.Unflatten(1, ()), ValueError, r"Unflatten: unflattened_size must not be"),
        (lambda: nn.Unflatten(1, (2, 0)), ValueError, r"must hold positive ints \(or one -1\)"),
        (lambda: nn.Unflatten(1, (-1, -1)), ValueError, r"Unflatten: at most one size may be -1"),
        (lambda: nn.Unflatten(1, (2, 1.5)), TypeError, r"Unflatten: unflattened_size must hold"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize(
    "spec, shape, msg",
    [
        (nn.ReflectionPad1d(3), (1, 2, 3), r"\(ReflectionPad1d\): padding \(3, 3\) does not fit"),
        (nn.ReplicationPad2d(-2), (1, 2, 4, 4), r"\(ReplicationPad2d\): padding .* does not"),
        (nn.CircularPad1d(4), (1, 2, 3), r"\(CircularPad1d\): .*at most once"),
        (nn.ZeroPad2d((-3, -3, 0, 0)), (1, 5, 5), r"\(ZeroPad2d\): .*crop of negative padding"),
        (nn.ReflectionPad2d(1), (2, 3, 4, 5, 6), r"\(ReflectionPad2d\): expected input"),
        (nn.ZeroPad3d(1), (2, 3), r"\(ZeroPad3d\): expected an input with at least 3 dims"),
        (
            nn.Upsample(scale_factor=0.2),
            (1, 2, 4, 4),
            r"\(Upsample\): input of spatial size \(4, 4\) gives output size \(0, 0\)",
        ),
        (nn.Upsample(size=3), (2, 3), r"\(Upsample\): expected input \(N, C, L\), \(N, C, H"),
        (
            nn.Upsample(size=3, mode="bilinear"),
            (2, 3, 4),
            r"\(Upsample\): expected input \(N, C, H, W\), got shape \(2, 3, 4\)",
        ),
        (
            nn.PixelShuffle(2),
            (1, 6, 2, 2),
            r"\(PixelShuffle\): expected the channels .* multiple of upscale_factor\^2 = 4, got 6",
        ),
        (
            nn.PixelUnshuffle(2),
            (1, 1, 4, 3),
            r"\(PixelUnshuffle\): expected the height and width .* got 4 and 3",
        ),
        (nn.PixelShuffle(2), (4, 4), r"\(PixelShuffle\): expected input \(\*, C, H, W\)"),
        (
            nn.Unflatten(1, (4, -1)),
            (2, 6),
            r"\(Unflatten\): cannot split dim 1 of size 6 into \(4, -1\)",
        ),
        (nn.Unflatten(3, (1, 1)), (2, 1), r"\(Unflatten\): dim=3 is out of range"),
    ],
)
def test_bad_input_names_layer(spec, shape, msg):
    # behind a layer without example rank (Flatten(1, 1) leaves the input as it is), the
    # layer itself checks the input and names itself
    params = fm.init(fm.key(0), nn.Sequential({"body": nn.Flatten(1, 1), "layer": spec}))
    with pytest.raises(ValueError, match=r"layer 'layer' " + msg):
        fm.apply(params, torch.zeros(shape))
    if len(shape) > 1 and spec.example_ndim in (None, len(shape) - 1):
        # shape inference refuses the same example
        with pytest.raises(ValueError, match=r"layer 'layer' "):
            fm.shapes(params, shape[1:])


def test_unflatten_of_the_batch_dim_runs_but_has_no_example_shape():
    params = fm.init(fm.key(0), nn.Unflatten(0, (2, -1)))
    x = example_input((6, 3))
    torch.testing.assert_close(fm.apply(params, x), x.reshape(2, 3, 3), **EXACT)
    with pytest.raises(ValueError, match=r"\(Unflatten\): dim 0 is the batch dim"):
        fm.shapes(params, (3,))


def test_non_tensor_input():
    spec = nn.Sequential({"body": nn.Identity(), "up": nn.Upsample(scale_factor=2)})
    with pytest.raises(TypeError, match=r"layer 'up' \(Upsample\): expected a tensor, got list"):
        fm.apply(fm.init(fm.key(0), spec), [[1.0, 2.0]])
