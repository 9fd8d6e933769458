"""Pooling layers (``_pool.py``, ``_adaptive_pool.py``): max, average and LP pools in 1, 2
and 3 dims and their adaptive forms, against torch.nn: fidelity, shapes, per-sample
gradients, conversion to torch modules, configs, files and checks.

Same kernels on the same input: outputs agree exactly on CPU (``atol=rtol=0``); gradients
use the helper's tolerances (``atol=1e-5, rtol=1e-4``). LP pools raise a window sum to
``1/p``, which is NaN for a negative sum, in torch as here, so their inputs are positive.
The ``_2d`` tests cover MaxPool2d, AvgPool2d and AdaptiveAvgPool1d/2d; the others every
other pool. The contract over every layer type (tests/test_contract.py) holds the compile
check.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, example_input, spec_and_module

nn = fm.nn
EXACT = {"atol": 0.0, "rtol": 0.0}

# (layer name, kwargs shared by our spec and torch's module, batched input shape)
CASES_2D = [
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


IDS_2D = [f"{name}-{kw}" for name, kw, _ in CASES_2D]


@pytest.mark.parametrize("name, kwargs, shape", CASES_2D, ids=IDS_2D)
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


@pytest.mark.parametrize("name, kwargs, shape", CASES_2D, ids=IDS_2D)
def test_per_sample_grads_2d(name, kwargs, shape):
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


def test_2d_sizes_are_stored_as_tuples_and_stride_defaults_to_kernel():
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
def test_single_example_rank_2d(spec, rank):
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
def test_2d_window_pools_agree_with_torch_on_output_size_and_values(
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


@pytest.mark.parametrize(
    "pool, dims, shape",
    [
        (nn.MaxPool2d(2), "C, H, W", (3, 4)),
        (nn.AvgPool2d(2), "C, H, W", (2, 2, 2, 2, 4)),
        (nn.AdaptiveAvgPool2d(2), "C, H, W", (3, 4)),
        (nn.AdaptiveAvgPool1d(2), "C, L", (4,)),
    ],
)
def test_2d_wrong_rank_names_layer_and_shapes(pool, dims, shape):
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
def test_2d_non_tensor_input(pool):
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
def test_2d_input_too_small(pool, shape):
    params = fm.init(fm.key(0), pool)
    with pytest.raises(ValueError, match=r"\(.*Pool2d\): input of spatial size .* too small"):
        fm.apply(params, torch.zeros(shape))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool1d(2)])
def test_2d_adaptive_empty_input(pool):
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
def test_invalid_2d_spec(make, exc, msg):
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


# (layer name, kwargs shared by our spec and torch's module, batched input shape)
CASES = [
    ("MaxPool1d", {"kernel_size": 2}, (3, 2, 7)),
    ("MaxPool1d", {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2}, (2, 3, 9)),
    ("MaxPool1d", {"kernel_size": 3, "stride": 2, "ceil_mode": True}, (2, 2, 8)),
    ("MaxPool3d", {"kernel_size": 2}, (2, 2, 4, 5, 4)),
    (
        "MaxPool3d",
        {"kernel_size": (3, 2, 2), "stride": (1, 2, 1), "padding": (1, 1, 0)}
        | {"dilation": (1, 1, 2), "ceil_mode": True},
        (2, 2, 4, 5, 5),
    ),
    ("AvgPool1d", {"kernel_size": 3}, (3, 2, 7)),
    (
        "AvgPool1d",
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
        | {"count_include_pad": False},
        (2, 3, 8),
    ),
    ("AvgPool3d", {"kernel_size": 2, "stride": 1}, (2, 2, 3, 4, 3)),
    (
        "AvgPool3d",
        {"kernel_size": (2, 3, 2), "padding": (1, 1, 0), "ceil_mode": True}
        | {"count_include_pad": False},
        (2, 2, 5, 4, 5),
    ),
    ("AvgPool3d", {"kernel_size": 2, "divisor_override": 3}, (2, 2, 4, 4, 4)),
    ("AdaptiveMaxPool1d", {"output_size": 3}, (3, 2, 7)),
    ("AdaptiveMaxPool1d", {"output_size": 5}, (2, 2, 3)),
    ("AdaptiveMaxPool2d", {"output_size": (2, 3)}, (2, 2, 5, 7)),
    ("AdaptiveMaxPool2d", {"output_size": (None, 2)}, (2, 2, 3, 6)),
    ("AdaptiveMaxPool3d", {"output_size": 2}, (2, 2, 4, 5, 3)),
    ("AdaptiveMaxPool3d", {"output_size": (1, None, 4)}, (2, 2, 3, 2, 6)),
    ("AdaptiveAvgPool3d", {"output_size": (2, 3, 1)}, (2, 2, 5, 4, 3)),
    ("AdaptiveAvgPool3d", {"output_size": (None, 1, 3)}, (2, 2, 3, 4, 5)),
    ("LPPool1d", {"norm_type": 2, "kernel_size": 3}, (3, 2, 7)),
    ("LPPool1d", {"norm_type": 1.5, "kernel_size": 2, "stride": 1, "ceil_mode": True}, (2, 2, 6)),
    ("LPPool2d", {"norm_type": 2.0, "kernel_size": (2, 3)}, (2, 2, 5, 7)),
    ("LPPool2d", {"norm_type": 3, "kernel_size": 3, "stride": 2, "ceil_mode": True}, (2, 2, 6, 5)),
    ("LPPool3d", {"norm_type": 2, "kernel_size": 2}, (2, 2, 4, 4, 5)),
    ("LPPool3d", {"norm_type": 1, "kernel_size": (1, 2, 3), "stride": 1}, (2, 2, 3, 3, 4)),
]


IDS = [f"{name}-{kw}" for name, kw, _ in CASES]


def pool_input(name, shape, seed=1):
    x = example_input(shape, seed=seed)
    return x.abs() + 0.1 if name.startswith("LP") else x


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_matches_torch_batched_single_and_in_train_mode(name, kwargs, shape):
    spec, module = spec_and_module(name, **kwargs)
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {} == module.state_dict()
    x = pool_input(name, shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[1]), module(x[1]), **EXACT)
    train = fm.apply(params, x, key=fm.key(2), train=True)
    torch.testing.assert_close(train, module.train()(x), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_zero_size_batch(name, kwargs, shape):
    spec, module = spec_and_module(name, **kwargs)
    x = pool_input(name, shape)[:0]
    got = fm.apply(fm.init(fm.key(0), spec), x)
    assert got.shape == module(x).shape and got.shape[0] == 0


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_shape_inference_matches_torch(name, kwargs, shape):
    spec, module = spec_and_module(name, **kwargs)
    want = tuple(module(pool_input(name, shape)).shape[1:])
    assert fm.shapes(spec, shape[1:])[""] == want
    unknown = fm.shapes(spec, (None,) * (len(shape) - 1))[""]
    adaptive = name.startswith("Adaptive")
    sizes = spec.output_size if adaptive else (None,) * (len(shape) - 2)
    assert unknown == (None, *sizes)


def _ints(n, lo, hi):
    return st.tuples(*[st.integers(lo, hi)] * n)


@st.composite
def window_pools(draw):
    n = draw(st.sampled_from([1, 3]))
    kind = draw(st.sampled_from(["MaxPool", "AvgPool", "LPPool"]))
    kernel, stride = draw(_ints(n, 1, 3)), draw(_ints(n, 1, 3))
    kwargs = {"kernel_size": kernel, "stride": stride, "ceil_mode": draw(st.booleans())}
    if kind == "LPPool":
        kwargs["norm_type"] = draw(st.sampled_from([1, 2, 2.5]))
    else:
        kwargs["padding"] = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    if kind == "MaxPool":
        kwargs["dilation"] = draw(_ints(n, 1, 2))
    if kind == "AvgPool":
        kwargs["count_include_pad"] = draw(st.booleans())
        if n == 3:
            kwargs["divisor_override"] = draw(st.none() | st.integers(1, 4))
    if kind == "LPPool" and n == 1:  # torch's LPPool1d runs with an int kernel_size only
        kwargs["kernel_size"], kwargs["stride"] = kernel[0], stride[0]
    return f"{kind}{n}d", kwargs, (2, 2, *draw(_ints(n, 1, 5)))


@settings(max_examples=60, deadline=None)
@given(window_pools())
def test_window_pools_agree_with_torch_on_output_size_and_values(config):
    name, kwargs, shape = config
    spec, module = spec_and_module(name, **kwargs)
    params = fm.init(fm.key(0), spec)
    x = pool_input(name, shape)
    try:
        want = module(x)
    except RuntimeError:
        # torch rejects inputs too small for one window; we must too, with our message
        with pytest.raises(ValueError, match=rf"layer '<root>' \({name}\): .*too small"):
            fm.apply(params, x)
        with pytest.raises(ValueError, match=rf"\({name}\): .*too small"):
            fm.shapes(spec, shape[1:])
        return
    torch.testing.assert_close(fm.apply(params, x), want, **EXACT)
    assert fm.shapes(spec, shape[1:])[""] == tuple(want.shape[1:])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    kind=st.sampled_from(["Max", "Avg"]),
    data=st.data(),
)
def test_adaptive_pools_agree_with_torch(n, kind, data):
    size = data.draw(_ints(n, 1, 6))
    entry = st.integers(1, 7) if n == 1 else st.none() | st.integers(1, 7)
    output_size = data.draw(st.one_of(st.integers(1, 7), st.tuples(*[entry] * n)))
    name = f"Adaptive{kind}Pool{n}d"
    spec, module = spec_and_module(name, output_size=output_size)
    x = example_input((2, 3, *size))
    torch.testing.assert_close(fm.apply(fm.init(fm.key(0), spec), x), module(x), **EXACT)
    assert fm.shapes(spec, (3, *size))[""] == tuple(module(x).shape[1:])


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_per_sample_grads(name, kwargs, shape):
    pool, module = spec_and_module(name, **kwargs)
    n = len(shape) - 2
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    channels = shape[1]
    pooled = module(torch.ones(1, *shape[1:])).numel()
    spec = nn.Sequential(
        conv(channels, channels, 3, padding=1),
        nn.Sigmoid(),  # positive, for the LP pools
        pool,
        nn.Flatten(),
        nn.Linear(pooled, 2),
    )
    params = fm.init(fm.key(2), spec)
    x = example_input(shape, seed=3)
    y = example_input((shape[0], 2), seed=4)
    assert_per_sample_grads_match(params, x, y)


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_to_module_and_back_is_exact(name, kwargs, shape):
    spec, module = spec_and_module(name, **kwargs)
    params = fm.init(fm.key(0), spec)
    built = transforms.to_module(params)
    assert type(built) is type(module)
    x = pool_input(name, shape)
    torch.testing.assert_close(built(x), fm.apply(params, x), **EXACT)
    assert transforms.from_module(built)[0].spec == spec
    # a module made by torch itself converts to the same spec
    assert transforms.from_module(module)[0].spec == spec


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.MaxPool1d(2, return_indices=True),
        torch.nn.MaxPool3d(2, return_indices=True),
        torch.nn.AdaptiveMaxPool1d(2, return_indices=True),
        torch.nn.AdaptiveMaxPool2d(2, return_indices=True),
        torch.nn.AdaptiveMaxPool3d(2, return_indices=True),
    ],
)
def test_from_module_refuses_return_indices(module):
    kind = type(module).__name__
    with pytest.raises(
        ValueError,
        match=rf"module '1' \({kind}\): return_indices=True is not supported "
        rf"\(fm.nn.{kind} returns",
    ):
        transforms.from_module(torch.nn.Sequential(torch.nn.Identity(), module))


def test_from_module_refuses_an_infinite_lp_norm():
    with pytest.raises(ValueError, match=r"module '<root>' \(LPPool2d\): .*finite non-zero"):
        transforms.from_module(torch.nn.LPPool2d(float("inf"), 2))


@pytest.mark.parametrize("name, kwargs, shape", CASES, ids=IDS)
def test_config_and_file_round_trips(name, kwargs, shape, tmp_path):
    spec, _ = spec_and_module(name, **kwargs)
    for defaults in (False, True):
        assert fm.from_config(spec.to_config(defaults=defaults)) == spec
    assert spec.to_config()["type"] == name.lower()
    wrapped = nn.Sequential(spec)
    fm.save(tmp_path / "m.safetensors", fm.init(fm.key(0), wrapped))
    assert fm.load(tmp_path / "m.safetensors")[0].spec == wrapped


def test_sizes_are_stored_as_tuples_and_stride_defaults_to_kernel():
    assert nn.MaxPool3d(2) == nn.MaxPool3d((2, 2, 2), stride=[2, 2, 2], padding=0, dilation=1)
    assert nn.MaxPool1d(3).stride == (3,) and nn.AvgPool1d(3, 2).stride == (2,)
    assert nn.AvgPool3d((1, 2, 3)).stride == (1, 2, 3)
    assert nn.LPPool2d(2, 3) == nn.LPPool2d(2.0, (3, 3), (3, 3))
    assert nn.LPPool1d(2, 3).norm_type == 2.0 and nn.LPPool1d(2, 3).kernel_size == (3,)
    assert nn.AdaptiveMaxPool3d(2).output_size == (2, 2, 2)
    assert nn.AdaptiveMaxPool2d([None, 3]).output_size == (None, 3)
    assert nn.AdaptiveMaxPool1d(4) == nn.AdaptiveMaxPool1d((4,))
    assert nn.AdaptiveAvgPool3d((None, 2, None)).output_size == (None, 2, None)


@pytest.mark.parametrize(
    "spec, rank",
    [
        (nn.MaxPool1d(2), 2),
        (nn.AvgPool1d(2), 2),
        (nn.LPPool1d(2, 2), 2),
        (nn.AdaptiveMaxPool1d(2), 2),
        (nn.LPPool2d(2, 2), 3),
        (nn.AdaptiveMaxPool2d(2), 3),
        (nn.MaxPool3d(2), 4),
        (nn.AvgPool3d(2), 4),
        (nn.LPPool3d(2, 2), 4),
        (nn.AdaptiveMaxPool3d(2), 4),
        (nn.AdaptiveAvgPool3d(2), 4),
    ],
)
def test_single_example_rank(spec, rank):
    assert spec.example_ndim == rank
    assert nn.Sequential(spec, nn.Flatten()).example_ndim == rank


def test_summary_rows():
    spec = nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1),
        nn.MaxPool3d(2, ceil_mode=True),
        nn.AdaptiveAvgPool3d((None, 1, 2)),
        nn.Flatten(2),
        nn.LPPool1d(2, 2),
        nn.AdaptiveMaxPool1d(3),
    )
    rows = {r.path: (r.type, r.out_shape, r.params) for r in fm.summary(spec, (1, 5, 4, 6)).rows}
    assert rows["1"] == ("MaxPool3d", (2, 3, 2, 3), 0)
    assert rows["2"] == ("AdaptiveAvgPool3d", (2, 3, 1, 2), 0)
    assert rows["4"] == ("LPPool1d", (2, 3), 0)
    assert rows["5"] == ("AdaptiveMaxPool1d", (2, 3), 0)


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.MaxPool1d(0), ValueError, r"MaxPool1d: kernel_size must be >= 1, got 0"),
        (lambda: nn.MaxPool1d((2, 2)), ValueError, r"MaxPool1d: kernel_size must have 1 entries"),
        (lambda: nn.MaxPool3d((2, 2)), ValueError, r"MaxPool3d: kernel_size must have 3 entries"),
        (
            lambda: nn.MaxPool3d(2, padding=(1, 2, 0)),
            ValueError,
            r"MaxPool3d: padding must be at most half of kernel_size",
        ),
        (lambda: nn.MaxPool3d(2, dilation=0), ValueError, r"MaxPool3d: dilation must be >= 1"),
        (lambda: nn.AvgPool1d(2, ceil_mode=1), TypeError, r"AvgPool1d: ceil_mode must be a bool"),
        (
            lambda: nn.AvgPool1d(2, divisor_override=2),
            TypeError,
            r"unexpected keyword argument 'divisor_override'",
        ),
        (
            lambda: nn.AvgPool3d(2, divisor_override=0),
            ValueError,
            r"AvgPool3d: divisor_override must be positive",
        ),
        (
            lambda: nn.AvgPool3d(2, count_include_pad=None),
            TypeError,
            r"AvgPool3d: count_include_pad must be a bool",
        ),
        (lambda: nn.LPPool1d(0, 2), ValueError, r"LPPool1d: norm_type must be a finite non-zero"),
        (
            lambda: nn.LPPool2d(float("inf"), 2),
            ValueError,
            r"LPPool2d: norm_type must be a finite non-zero number .* got inf",
        ),
        (lambda: nn.LPPool3d("2", 2), TypeError, r"LPPool3d: norm_type must be a number"),
        (lambda: nn.LPPool3d(True, 2), TypeError, r"LPPool3d: norm_type must be a number"),
        (lambda: nn.LPPool2d(2, 2, stride=0), ValueError, r"LPPool2d: stride must be >= 1"),
        (
            lambda: nn.AdaptiveMaxPool1d(None),
            TypeError,
            r"AdaptiveMaxPool1d: output_size must be an int, got None",
        ),
        (
            lambda: nn.AdaptiveMaxPool2d((2, 0)),
            ValueError,
            r"AdaptiveMaxPool2d: output_size must be positive",
        ),
        (
            lambda: nn.AdaptiveMaxPool3d((2, 2)),
            ValueError,
            r"AdaptiveMaxPool3d: output_size must have 3 entries",
        ),
        (
            lambda: nn.AdaptiveAvgPool3d(2.5),
            TypeError,
            r"AdaptiveAvgPool3d: output_size must be ints or None",
        ),
        (
            lambda: nn.AdaptiveMaxPool2d(2, return_indices=True),
            TypeError,
            r"unexpected keyword argument 'return_indices'",
        ),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize(
    "pool, dims, shape",
    [
        (nn.MaxPool1d(2), "C, L", (3, 2, 2, 4)),
        (nn.AvgPool3d(2), "C, D, H, W", (2, 4)),
        (nn.LPPool1d(2, 2), "C, L", (4,)),
        (nn.AdaptiveMaxPool2d(2), "C, H, W", (3, 4)),
        (nn.AdaptiveAvgPool3d(2), "C, D, H, W", (2, 2, 2, 2, 2, 4)),
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
    with pytest.raises(ValueError, match=rf"layer '<root>' \({name}\): expected an input of rank"):
        fm.apply(fm.init(fm.key(0), pool), torch.zeros((2,) * (pool.example_ndim + 2)))


@pytest.mark.parametrize(
    "pool, shape",
    [
        (nn.MaxPool1d(3), (1, 2, 2)),
        (nn.MaxPool3d(2, dilation=3), (1, 2, 3, 4, 4)),
        (nn.AvgPool3d((2, 4, 1)), (1, 2, 5, 3, 1)),
        (nn.LPPool1d(2, 4), (1, 2, 3)),
    ],
)
def test_input_too_small(pool, shape):
    params = fm.init(fm.key(0), nn.Sequential({"pool": pool}))
    with pytest.raises(ValueError, match=r"layer 'pool' \(.*Pool.d\): input of spatial size"):
        fm.apply(params, torch.zeros(shape))


@pytest.mark.parametrize("pool", [nn.AdaptiveMaxPool3d(2), nn.AdaptiveMaxPool1d(2)])
def test_adaptive_empty_input(pool):
    params = fm.init(fm.key(0), pool)
    shape = (1, 2, 0) + (3,) * (pool.example_ndim - 2)
    with pytest.raises(ValueError, match=r"Pool.d\): expected non-empty spatial dims"):
        fm.apply(params, torch.zeros(shape))


def test_non_tensor_input():
    params = fm.init(fm.key(0), nn.Sequential({"body": nn.Identity(), "pool": nn.LPPool1d(2, 2)}))
    with pytest.raises(TypeError, match=r"layer 'pool' \(LPPool1d\): expected a tensor, got list"):
        fm.apply(params, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("cls", [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d])
def test_max_pool_refuses_torchs_fifth_positional_argument(cls):
    # torch's fifth is return_indices, which has no field here: ceil_mode is keyword-only,
    # so a port of `MaxPool2d(2, 2, 0, 1, True)` fails instead of meaning ceil_mode.
    with pytest.raises(TypeError, match="positional argument"):
        cls(2, 2, 0, 1, True)
    assert cls(2, 2, 0, 1, ceil_mode=True).ceil_mode is True
