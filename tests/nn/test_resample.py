"""Upsampling and pixel (un)shuffle (``_resample.py``), and Unflatten (``_container.py``):
fidelity to torch.nn, shapes, per-sample gradients, conversion to torch modules, configs,
files and checks.

Same kernels on the same input: outputs agree exactly on CPU (``atol=rtol=0``); gradients
use the helper's tolerances (``atol=1e-5, rtol=1e-4``). The contract over every layer type
(tests/test_contract.py) holds the compile check.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import (
    check_config_and_file,
    check_matches_torch,
    check_per_sample_grads,
    check_shape_inference,
    check_torch_module_and_back,
    check_zero_size_batch,
    example_input,
    spec_and_module,
)

nn = fm.nn


EXACT = {"atol": 0.0, "rtol": 0.0}


# How one example compares with torch: "torch" when torch takes the example as it is
# (and means the same by it), "batch" when torch only takes a batch, so that the example
# is compared with torch's output for a batch of one; None where the layer counts dims on
# the batch (Unflatten), so that an example means something else.
# (layer name, positional args, kwargs, batched input shape, single)
CASES = [
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


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_matches_torch_batched_single_and_in_train_mode(name, args, kwargs, shape, single):
    check_matches_torch(name, args, kwargs, shape, single)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_zero_size_batch(name, args, kwargs, shape, single):
    check_zero_size_batch(name, args, kwargs, shape)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_shape_inference_matches_torch(name, args, kwargs, shape, single):
    check_shape_inference(name, args, kwargs, shape)


def test_shape_inference_with_unknown_sizes_and_ranks():
    assert nn.Upsample(scale_factor=2).out_shape((..., 5)) == (..., 10)
    assert nn.Upsample(size=(3, 4), mode="bicubic").out_shape((..., 7)) == (None, 3, 4)
    assert fm.shapes(nn.Upsample(scale_factor=1.5), (3, None, 4))[""] == (3, None, 6)
    assert nn.PixelShuffle(2).out_shape((..., 8, 3, 4)) == (..., 2, 6, 8)
    assert nn.PixelUnshuffle(2).out_shape((..., 4, 6)) == (..., None, 2, 3)
    assert fm.shapes(nn.PixelShuffle(2), (5, 12, None, 3))[""] == (5, 3, None, 6)
    assert nn.Unflatten(-1, (2, -1)).out_shape((..., 8)) == (..., 2, 4)
    assert nn.Unflatten(1, (2, -1)).out_shape((..., 8)) == (...,)
    assert fm.shapes(nn.Unflatten(1, (2, -1)), (None, 3))[""] == (2, None, 3)


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


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_per_sample_grads(name, args, kwargs, shape, single):
    check_per_sample_grads(name, args, kwargs, shape)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_to_module_and_back_is_exact(name, args, kwargs, shape, single):
    check_torch_module_and_back(name, args, kwargs, shape)


def _named_unflatten():
    module = torch.nn.Unflatten(1, (2, 3))
    module.dim = "c"  # the named-tensor form
    return module


@pytest.mark.parametrize(
    "module, exc, match",
    [
        (_named_unflatten(), TypeError, "named-tensor dims"),
        (torch.nn.Upsample(scale_factor=0), ValueError, "exactly one of size and scale_factor"),
    ],
)
def test_settings_the_spec_cannot_express_are_errors(module, exc, match):
    kind = type(module).__name__
    with pytest.raises(exc, match=rf"module '1' \({kind}\).*{match}"):
        transforms.from_module(torch.nn.Sequential(torch.nn.Identity(), module))


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_config_and_file_round_trips(name, args, kwargs, shape, single, tmp_path):
    check_config_and_file(name, args, kwargs, tmp_path)


def test_values_are_normalised_as_torch_stores_them():
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


@pytest.mark.parametrize(
    "make, exc, msg",
    [
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
