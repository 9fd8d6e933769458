"""Pooling layers: fidelity to torch.nn, per-sample gradients, spec and input checks."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
from tests.helpers import assert_per_sample_grads_match, spec_and_module

nn = fm.nn

# (layer name, kwargs shared by our spec and torch's module, batched input shape)
CASES = [
    ("MaxPool2d", {"kernel_size": 2}, (3, 2, 6, 6)),
    ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (3, 2, 7, 6)),
    ("MaxPool2d", {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 0)}, (2, 3, 5, 6)),
    ("MaxPool2d", {"kernel_size": 3, "stride": 2, "dilation": 2, "padding": 1}, (2, 2, 9, 8)),
    ("MaxPool2d", {"kernel_size": 2, "stride": 2, "ceil_mode": True}, (2, 2, 7, 5)),
    ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 2, 6, 6)),
    # the input is smaller than a window: only ceil_mode gives an output
    ("MaxPool2d", {"kernel_size": 3, "ceil_mode": True}, (2, 2, 2, 5)),
    ("AvgPool2d", {"kernel_size": 2}, (3, 2, 6, 6)),
    ("AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (3, 2, 7, 6)),
    ("AvgPool2d", {"kernel_size": 3, "padding": 1, "count_include_pad": False}, (2, 2, 7, 6)),
    ("AvgPool2d", {"kernel_size": (2, 3), "stride": 1, "divisor_override": 4}, (2, 2, 5, 6)),
    ("AvgPool2d", {"kernel_size": 2, "stride": 2, "ceil_mode": True}, (2, 2, 7, 5)),
    ("AvgPool2d", {"kernel_size": (2, 3), "ceil_mode": True}, (2, 2, 3, 2)),
    (
        "AvgPool2d",
        {
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
        },
        (2, 2, 6, 7),
    ),
    ("AdaptiveAvgPool2d", {"output_size": 1}, (3, 2, 5, 5)),
    ("AdaptiveAvgPool2d", {"output_size": (3, 2)}, (3, 2, 7, 5)),
    ("AdaptiveAvgPool2d", {"output_size": (None, 3)}, (2, 2, 4, 7)),
    ("AdaptiveAvgPool2d", {"output_size": (4, None)}, (2, 2, 6, 3)),
    ("AdaptiveAvgPool2d", {"output_size": 8}, (2, 2, 5, 6)),
    ("AdaptiveAvgPool1d", {"output_size": 3}, (3, 2, 7)),
    ("AdaptiveAvgPool1d", {"output_size": 4}, (3, 2, 4)),
    ("AdaptiveAvgPool1d", {"output_size": 5}, (2, 3, 3)),
]
IDS = [f"{name}-{kw}" for name, kw, _ in CASES]


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_matches_torch_batched_and_single(name, kwargs, shape):
    spec, module = spec_and_module(name, **kwargs)
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {} == module.state_dict()
    x = fm.random.normal(fm.key(1), shape)
    before = x.clone()
    # same kernels on the same input: exact equality holds on CPU
    torch.testing.assert_close(fm.apply(params, x), module(x), atol=0, rtol=0)
    torch.testing.assert_close(fm.apply(params, x[1]), module(x[1]), atol=0, rtol=0)
    torch.testing.assert_close(x, before, atol=0, rtol=0)


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_per_sample_grads(name, kwargs, shape):
    pool, module = spec_and_module(name, **kwargs)
    conv = nn.Conv2d if pool.example_ndim == 3 else nn.Conv1d
    channels = shape[1]
    pooled = module(torch.zeros(1, *shape[1:])).numel()
    spec = nn.Sequential(
        conv(channels, channels, 3, padding=1), pool, nn.Flatten(), nn.Linear(pooled, 2)
    )
    params = fm.init(fm.key(2), spec)
    x = fm.random.normal(fm.key(3), shape)
    y = fm.random.normal(fm.key(4), (shape[0], 2))
    assert_per_sample_grads_match(params, x, y)


def test_sizes_are_stored_as_tuples_and_stride_defaults_to_kernel():
    assert nn.MaxPool2d(2) == nn.MaxPool2d((2, 2), stride=[2, 2], padding=(0, 0), dilation=1)
    assert hash(nn.MaxPool2d(2)) == hash(nn.MaxPool2d((2, 2), stride=2))
    spec = nn.MaxPool2d([3, 2], padding=1)
    assert (spec.kernel_size, spec.stride, spec.padding, spec.dilation) == (
        (3, 2),
        (3, 2),
        (1, 1),
        (1, 1),
    )
    assert nn.AvgPool2d(3, stride=(1, 2)).stride == (1, 2)
    assert nn.AvgPool2d(3).stride == (3, 3)
    assert nn.AdaptiveAvgPool2d(4).output_size == (4, 4)
    assert nn.AdaptiveAvgPool2d([None, 4]).output_size == (None, 4)
    assert nn.AdaptiveAvgPool1d(4) == nn.AdaptiveAvgPool1d((4,))


@pytest.mark.parametrize(
    "spec, rank",
    [(nn.MaxPool2d(2), 3), (nn.AvgPool2d(2), 3), (nn.AdaptiveAvgPool2d(2), 3)]
    + [(nn.AdaptiveAvgPool1d(2), 2)],
)
def test_single_example_rank(spec, rank):
    assert spec.example_ndim == rank
    assert nn.Sequential(spec, nn.Flatten()).example_ndim == rank


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["MaxPool2d", "AvgPool2d"]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pad_frac=st.tuples(st.booleans(), st.booleans()),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_window_pools_agree_with_torch_on_output_size_and_values(
    kind, kernel, stride, dilation, pad_frac, ceil_mode, count_include_pad, hw
):
    padding = tuple(k // 2 if full else 0 for k, full in zip(kernel, pad_frac, strict=True))
    kwargs = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if kind == "MaxPool2d":
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = count_include_pad
    spec, module = spec_and_module(kind, **kwargs)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (2, 2, *hw))
    try:
        want = module(x)
    except RuntimeError:
        # torch rejects inputs too small for one window; we must too, with our message
        with pytest.raises(ValueError, match=rf"layer '<root>' \({kind}\): .*too small"):
            fm.apply(params, x)
        return
    torch.testing.assert_close(fm.apply(params, x), want, atol=0, rtol=0)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool, dims, shape",
    [
        (nn.MaxPool2d(2), "C, H, W", (3, 4)),
        (nn.AvgPool2d(2), "C, H, W", (2, 2, 2, 2, 4)),
        (nn.AdaptiveAvgPool2d(2), "C, H, W", (3, 4)),
        (nn.AdaptiveAvgPool1d(2), "C, L", (4,)),
    ],
)
def test_wrong_rank_names_layer_and_shapes(pool, dims, shape):
    # behind a Linear the model has no example rank, so the pool itself checks
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 5), pool))
    name = type(pool).__name__
    got = str((*shape[:-1], 5))
    msg = rf"layer '1' \({name}\): expected input \(N, {dims}\) or \({dims}\), got shape "
    with pytest.raises(ValueError, match=msg + re.escape(got)):
        fm.apply(params, torch.zeros(shape))
    # at the root the example-rank check speaks first
    rank = pool.example_ndim
    alone = fm.init(fm.key(0), pool)
    bad = torch.zeros((2,) * (rank + 2))
    with pytest.raises(
        ValueError,
        match=rf"layer '<root>' \({name}\): expected an input of rank {rank} .* or {rank + 1} "
        rf"\(a batch\), got shape \({', '.join(['2'] * (rank + 2))}\)",
    ):
        fm.apply(alone, bad)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.AdaptiveAvgPool1d(2)])
def test_non_tensor_input(pool):
    params = fm.init(fm.key(0), nn.Sequential({"body": nn.Identity(), "pool": pool}))
    with pytest.raises(TypeError, match=r"layer 'pool' \(.*Pool.*\): expected a tensor, got list"):
        fm.apply(params, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    "pool, shape",
    [
        (nn.MaxPool2d(3), (1, 2, 2, 5)),
        (nn.MaxPool2d(2, dilation=3), (1, 2, 3, 3)),
        (nn.AvgPool2d((2, 4)), (1, 2, 5, 3)),
    ],
)
def test_input_too_small(pool, shape):
    params = fm.init(fm.key(0), pool)
    with pytest.raises(ValueError, match=r"\(.*Pool2d\): input of spatial size .* too small"):
        fm.apply(params, torch.zeros(shape))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool1d(2)])
def test_adaptive_empty_input(pool):
    params = fm.init(fm.key(0), pool)
    shape = (1, 2, 0, 3)[: pool.example_ndim + 1]
    with pytest.raises(ValueError, match=r"Pool.d\): expected non-empty spatial dims"):
        fm.apply(params, torch.zeros(shape))


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.MaxPool2d(0), ValueError, r"MaxPool2d: kernel_size must be >= 1, got 0"),
        (lambda: nn.MaxPool2d(2.0), TypeError, r"MaxPool2d: kernel_size must be ints, got 2.0"),
        (lambda: nn.MaxPool2d((2, 2, 2)), ValueError, r"kernel_size must have 2 entries"),
        (lambda: nn.MaxPool2d(2, stride=0), ValueError, r"MaxPool2d: stride must be >= 1"),
        (lambda: nn.MaxPool2d(2, padding=-1), ValueError, r"MaxPool2d: padding must be >= 0"),
        (
            lambda: nn.MaxPool2d(3, padding=2),
            ValueError,
            r"MaxPool2d: padding must be at most half of kernel_size .* got padding \(2, 2\) "
            r"for kernel_size \(3, 3\)",
        ),
        (
            lambda: nn.MaxPool2d((3, 1), padding=(1, 1)),
            ValueError,
            r"at most half of kernel_size",
        ),
        (lambda: nn.MaxPool2d(2, dilation=0), ValueError, r"MaxPool2d: dilation must be >= 1"),
        (lambda: nn.MaxPool2d(2, ceil_mode=1), TypeError, r"MaxPool2d: ceil_mode must be a bool"),
        (lambda: nn.AvgPool2d(-2), ValueError, r"AvgPool2d: kernel_size must be >= 1, got -2"),
        (lambda: nn.AvgPool2d(2, padding=2), ValueError, r"AvgPool2d: padding must be at most"),
        (lambda: nn.AvgPool2d(2, stride="2"), TypeError, r"AvgPool2d: stride must be ints"),
        (
            lambda: nn.AvgPool2d(2, count_include_pad="no"),
            TypeError,
            r"AvgPool2d: count_include_pad must be a bool",
        ),
        (
            lambda: nn.AvgPool2d(2, divisor_override=0),
            ValueError,
            r"AvgPool2d: divisor_override must be positive, got 0",
        ),
        (
            lambda: nn.AvgPool2d(2, divisor_override=2.5),
            TypeError,
            r"AvgPool2d: divisor_override must be an int",
        ),
        (
            lambda: nn.AdaptiveAvgPool2d(0),
            ValueError,
            r"AdaptiveAvgPool2d: output_size must be positive",
        ),
        (
            lambda: nn.AdaptiveAvgPool2d((2, -1)),
            ValueError,
            r"AdaptiveAvgPool2d: output_size must be positive, got \(2, -1\)",
        ),
        (
            lambda: nn.AdaptiveAvgPool2d((2, 2, 2)),
            ValueError,
            r"AdaptiveAvgPool2d: output_size must have 2 entries",
        ),
        (
            lambda: nn.AdaptiveAvgPool2d(2.0),
            TypeError,
            r"AdaptiveAvgPool2d: output_size must be ints or None",
        ),
        (
            lambda: nn.AdaptiveAvgPool1d(None),
            TypeError,
            r"AdaptiveAvgPool1d: output_size must be an int, got None",
        ),
        (
            lambda: nn.AdaptiveAvgPool1d((2, 3)),
            ValueError,
            r"AdaptiveAvgPool1d: output_size must have 1 entries",
        ),
        (lambda: nn.AdaptiveAvgPool1d(-3), ValueError, r"AdaptiveAvgPool1d: .* positive"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_pools_have_no_params():
    spec = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(1), nn.AdaptiveAvgPool2d((None, 1)))
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {}
    x = fm.random.normal(fm.key(1), (2, 3, 4, 6))
    want = x.reshape(2, 3, 2, 2, 3, 2).amax(dim=(3, 5)).mean(dim=-1, keepdim=True)
    torch.testing.assert_close(fm.apply(params, x), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(fm.apply(params, x[0]), want[0], atol=1e-6, rtol=0)
