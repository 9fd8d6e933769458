"""The padding layers (``_pad.py``): fidelity to torch.nn, shapes, per-sample gradients,
conversion to torch modules, configs, files and checks.

Same kernels on the same input: outputs agree exactly on CPU (``atol=rtol=0``); gradients
use the helper's tolerances (``atol=1e-5, rtol=1e-4``). The contract over every layer type
(tests/test_contract.py) holds the compile check.
"""

from __future__ import annotations

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


# (layer name, positional args, kwargs, batched input shape, how one example compares:
# "torch" when torch takes the example as it is; see tests/helpers.py)
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
]


IDS = [f"{name}-{args}-{kw}" for name, args, kw, _, _ in CASES]


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
    assert fm.shapes(nn.ZeroPad2d((1, 2, 3, 4)), (5, None, 6))[""] == (5, None, 9)
    assert nn.ConstantPad3d(1, 0.0).out_shape((..., 4, 5)) == (..., 6, 7)
    assert nn.ReflectionPad2d(1).out_shape((..., 4)) == (None, None, 6)


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


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_per_sample_grads(name, args, kwargs, shape, single):
    check_per_sample_grads(name, args, kwargs, shape)


@pytest.mark.parametrize("name, args, kwargs, shape, single", CASES, ids=IDS)
def test_to_module_and_back_is_exact(name, args, kwargs, shape, single):
    check_torch_module_and_back(name, args, kwargs, shape)


@pytest.mark.parametrize(
    "module, exc, match",
    [
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
    check_config_and_file(name, args, kwargs, tmp_path)


def test_values_are_normalised_as_torch_stores_them():
    assert nn.ZeroPad2d(1).padding == (1, 1, 1, 1)
    assert nn.ZeroPad1d([2, 3]) == nn.ZeroPad1d((2, 3))
    assert nn.CircularPad3d(2).padding == (2,) * 6
    assert nn.ConstantPad1d(1, 3) == nn.ConstantPad1d((1, 1), 3.0)


@pytest.mark.parametrize(
    "spec, rank",
    [
        (nn.ZeroPad2d(1), None),
        (nn.ConstantPad1d(1, 0.0), None),
        (nn.ReflectionPad1d(1), 2),
        (nn.ReplicationPad2d(1), 3),
        (nn.CircularPad3d(1), 4),
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
