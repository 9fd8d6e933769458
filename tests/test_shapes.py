"""Shape inference: per-layer output shapes against torch, and sizes inferred by fm.init."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import vmap

import funcmodels as fm
from funcmodels._spec import field_values
from tests.helpers import TORCH_TYPES, torch_shapes, torch_twin_of

fnn = fm.nn


def assert_shapes_match_torch(spec: fm.Spec, input_shape: tuple[int, ...]) -> None:
    """fm.shapes of every layer equals what the torch twin produces on a batch of two."""
    got = fm.shapes(spec, input_shape)
    params, state = fm.init_with_state(fm.key(0), spec, input_shape=input_shape)
    want = torch_shapes(torch_twin_of(params.spec), torch.zeros(2, *input_shape))
    assert got == {name: want[name] for name in got}
    assert set(want) <= set(got)


# -- single layers against torch ---------------------------------------------------------


def _outcome(module: nn.Module, shape: tuple[int, ...]):
    """torch's per-example output shape on a batch of two, or None if torch rejects it."""
    try:
        with torch.no_grad():
            return tuple(module.eval()(torch.zeros(2, *shape)).shape[1:])
    except (RuntimeError, IndexError):
        return None


def _check_layer(spec: fm.Spec, shape: tuple[int, ...]) -> None:
    want = _outcome(TORCH_TYPES[type(spec)](**field_values(spec)), shape)
    if want is None:
        with pytest.raises(ValueError, match=rf"layer '<root>' \({spec.type_name}\)"):
            spec.out_shape(shape)
    else:
        assert spec.out_shape(shape) == want
        assert fm.shapes(spec, shape) == {"": want}


@settings(max_examples=30, deadline=None)
@given(
    n=st.sampled_from([1, 2]),
    size=st.integers(1, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
    mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
)
def test_conv_out_shape_is_torchs(n, size, kernel, stride, dilation, padding, mode):
    if padding == "same":
        stride = 1
    cls = fnn.Conv1d if n == 1 else fnn.Conv2d
    spec = cls(2, 3, kernel, stride, padding, dilation, padding_mode=mode)
    _check_layer(spec, (2,) + (size,) * n)


@settings(max_examples=30, deadline=None)
@given(
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.integers(1, 4),
    stride=st.one_of(st.none(), st.integers(1, 3)),
    ceil=st.booleans(),
    dilation=st.integers(1, 2),
    data=st.data(),
)
def test_pool_out_shapes_are_torchs(size, kernel, stride, ceil, dilation, data):
    padding = data.draw(st.integers(0, kernel // 2))
    shape = (3, *size)
    _check_layer(fnn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil), shape)
    _check_layer(fnn.AvgPool2d(kernel, stride, padding, ceil), shape)
    out = data.draw(st.tuples(st.one_of(st.none(), st.integers(1, 4)), st.integers(1, 4)))
    _check_layer(fnn.AdaptiveAvgPool2d(out), shape)
    _check_layer(fnn.AdaptiveAvgPool1d(out[1]), shape[:2])


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    start=st.integers(1, 4),
    end=st.integers(-5, 4),
)
def test_flatten_out_shape_is_torchs(shape, start, end):
    spec = fnn.Flatten(start, end)
    want = _outcome(nn.Flatten(start, end), shape)
    if want is None:
        # torch's own message would come from deep inside; ours names the layer.
        with pytest.raises(ValueError, match=r"layer '<root>' \(Flatten\): start_dim"):
            spec.out_shape(shape)
        with pytest.raises(ValueError, match=r"layer '<root>' \(Flatten\): start_dim"):
            fm.apply(fm.init(fm.key(0), spec), torch.zeros(2, *shape))
    else:
        assert spec.out_shape(shape) == want


@pytest.mark.parametrize(
    "spec, shape",
    [
        (fnn.Linear(3, 5), (3,)),
        (fnn.Linear(3, 5), (4, 3)),
        (fnn.Linear(3, 5), (4,)),
        (fnn.Linear(3, 5), (3, 4)),
        (fnn.BatchNorm1d(3), (3,)),
        (fnn.BatchNorm1d(3), (3, 5)),
        (fnn.BatchNorm2d(3), (3, 4, 4)),
        (fnn.BatchNorm2d(3), (4, 4, 4)),
        (fnn.LayerNorm((2, 3)), (4, 2, 3)),
        (fnn.LayerNorm((2, 3)), (4, 3, 3)),
        (fnn.GroupNorm(2, 4), (4, 3)),
        (fnn.GroupNorm(2, 4), (3, 3)),
        (fnn.Softmax(2), (3, 4)),
        (fnn.LogSoftmax(-3), (3, 4)),
        (fnn.GELU(), (2, 3)),
    ],
)
def test_other_layer_out_shapes_are_torchs(spec, shape):
    _check_layer(spec, shape)


def test_shape_mistakes_name_the_layer():
    cases = [
        (fnn.Softmax(dim=3), (3, 4), r"layer '<root>' \(Softmax\): dim=3 is out of range"),
        (fnn.Flatten(0), (3, 4), r"\(Flatten\): start_dim=0 merges the batch dim"),
        (fnn.Conv2d(3, 4, 3), (3, 8), r"\(Conv2d\): expected one example of shape \(C, H, W\)"),
        (fnn.Linear(3, 4), (), r"\(Linear\): expected one example of shape \(\*, in_features\)"),
        (fnn.GroupNorm(4, 4), (4,), r"\(GroupNorm\): expected more than 1 value per group"),
    ]
    for spec, shape, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fm.shapes(spec, shape)


def test_linear_over_an_unknown_spatial_dim_asks_for_a_flatten():
    spec = fnn.Sequential(fnn.Conv2d(3, 8, 3), fnn.Linear(512, 10))
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\): expected 512 input features"):
        fm.shapes(spec, (3, None, None))
    # With the spatial size known, the message says what came and what a flatten would give.
    with pytest.raises(ValueError, match=r"got input shape \(8, 8, 8\) with 8 .* exactly that"):
        fm.shapes(spec, (3, 10, 10))
    flat = fnn.Sequential(fnn.Conv2d(3, 8, 3), fnn.Flatten(), fnn.Linear(512, 10))
    assert fm.shapes(flat, (3, None, None))[""] == (10,)


# -- models ----------------------------------------------------------------------------


def test_shapes_of_a_nested_model_match_torch():
    spec = fnn.Sequential(
        {
            "stem": fnn.Conv2d(out_channels=6, kernel_size=3, padding=1),
            "norm": fnn.BatchNorm2d(),
            "act": fnn.ReLU(),
            "body": fnn.Sequential(
                fnn.ResidualBlock(out_channels=8, stride=2, use_se=True),
                fnn.MaxPool2d(2, ceil_mode=True),
                fnn.GroupNorm(2),
            ),
            "pool": fnn.AdaptiveAvgPool2d(1),
            "flat": fnn.Flatten(),
            "ln": fnn.LayerNorm(),
            "head": fnn.Linear(out_features=5),
            "out": fnn.LogSoftmax(),
        }
    )
    assert_shapes_match_torch(spec, (3, 9, 9))
    # Keys are layer paths in parameter order, the model itself first.
    got = fm.shapes(spec, (3, 9, 9))
    assert list(got)[:6] == ["", "stem", "norm", "act", "body", "body.0"]
    assert "body.0.main_branch.3" in got and got["body.0.se"] == (8, 1, 1)


@pytest.mark.parametrize(
    "omitted, explicit, input_shape",
    [
        (fnn.Linear(out_features=4), fnn.Linear(3, 4), (3,)),
        (fnn.Linear(out_features=4, bias=False), fnn.Linear(6, 4, bias=False), (2, 6)),
        (
            fnn.Conv1d(out_channels=4, kernel_size=3, groups=2),
            fnn.Conv1d(2, 4, 3, groups=2),
            (2, 7),
        ),
        (fnn.Conv2d(out_channels=4, kernel_size=3), fnn.Conv2d(1, 4, 3), (1, 5, 5)),
        (fnn.BatchNorm1d(), fnn.BatchNorm1d(3), (3, 5)),
        (fnn.BatchNorm2d(momentum=None), fnn.BatchNorm2d(3, momentum=None), (3, 4, 4)),
        (fnn.GroupNorm(2), fnn.GroupNorm(2, 6), (6, 4)),
        (fnn.LayerNorm(), fnn.LayerNorm(5), (2, 5)),
        (fnn.ResidualBlock(out_channels=4), fnn.ResidualBlock(2, 4), (2, 5, 5)),
    ],
)
def test_init_infers_omitted_sizes(omitted, explicit, input_shape):
    key = fm.key(3)
    params, state = fm.init_with_state(key, omitted, input_shape=input_shape)
    want_params, want_state = fm.init_with_state(key, explicit)
    assert params.spec == explicit and state.spec == explicit
    got_sd, want_sd = fm.to_state_dict(params, state), fm.to_state_dict(want_params, want_state)
    assert got_sd.keys() == want_sd.keys()
    for name, t in want_sd.items():
        assert torch.equal(got_sd[name], t), name
    # An explicit spec is returned unchanged by resolution.
    assert fm.init(key, explicit, input_shape=input_shape).spec is explicit


def test_init_without_input_shape_names_the_layer_that_needs_it():
    spec = fnn.Sequential({"stem": fnn.Conv2d(1, 4, 3), "head": fnn.Linear(out_features=3)})
    with pytest.raises(
        ValueError,
        match=r"layer 'head' \(Linear\): in_features omitted \(None\); pass input_shape=\.\.\. "
        r"to fm.init \(the shape of one example",
    ):
        fm.init(fm.key(0), spec)
    with pytest.raises(ValueError, match=r"layer 'head' \(Linear\): in_features omitted"):
        fm.init_with_state(fm.key(0), spec)
    # A size that depends on an unknown input dim cannot be inferred either.
    bad = fnn.Sequential(fnn.Conv2d(1, 4, 3), fnn.Flatten(), fnn.Linear(out_features=3))
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\): in_features omitted .* could not"):
        fm.init(fm.key(0), bad, input_shape=(1, None, 8))
    # Code that needs tensor shapes of an unresolved layer says so too.
    with pytest.raises(ValueError, match=r"Linear: in_features not known yet"):
        fm.from_state_dict(fnn.Linear(out_features=3), {})


def test_init_checks_the_chain_before_making_any_tensor(monkeypatch):
    def no_tensors(*args, **kwargs):
        raise AssertionError("a tensor was made before the mistake was reported")

    monkeypatch.setattr(fm._core, "init_tree", no_tensors)
    spec = fnn.Sequential(fnn.Conv2d(3, 8, 3), fnn.BatchNorm2d(16))
    with pytest.raises(
        ValueError, match=r"layer '1' \(BatchNorm2d\): expected 16 channels .* \(8, 4, 4\)"
    ):
        fm.init(fm.key(0), spec, input_shape=(3, 6, 6))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\): input of spatial size"):
        fm.init(fm.key(0), spec, input_shape=(3, 2, 2))


def test_inferred_sizes_that_do_not_fit_the_layer_are_reported():
    spec = fnn.Sequential(fnn.Conv2d(out_channels=4, kernel_size=1, groups=2))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\): in_channels=3 \(inferred"):
        fm.init(fm.key(0), spec, input_shape=(3, 4, 4))
    with pytest.raises(ValueError, match=r"layer '<root>' \(GroupNorm\): num_channels=3"):
        fm.shapes(fnn.GroupNorm(2), (3, 4))


def test_init_with_input_shape_under_vmap_makes_an_ensemble():
    spec = fnn.Sequential(fnn.Linear(out_features=4), fnn.ReLU(), fnn.Linear(out_features=2))
    keys = fm.split(fm.key(0), 3)
    ensemble = vmap(lambda k: fm.init(k, spec, input_shape=(5,)))(keys)
    assert ensemble.spec == fnn.Sequential(fnn.Linear(5, 4), fnn.ReLU(), fnn.Linear(4, 2))
    one = fm.init(keys[1], spec, input_shape=(5,))
    for name, t in fm.to_state_dict(one).items():
        assert torch.equal(fm.to_state_dict(ensemble)[name][1], t)


def test_input_shape_is_checked():
    spec = fnn.Linear(3, 4)
    for bad, exc, pattern in [
        ("3", TypeError, "input_shape must be the shape of one example"),
        (3, TypeError, "input_shape must be the shape of one example"),
        ((3.0,), TypeError, "input_shape must hold ints"),
        ((True,), TypeError, "input_shape must hold ints"),
        ((0,), ValueError, "input_shape sizes must be positive"),
    ]:
        with pytest.raises(exc, match=f"fm.init: {pattern}"):
            fm.init(fm.key(0), spec, input_shape=bad)
        with pytest.raises(exc, match=f"fm.shapes: {pattern}"):
            fm.shapes(spec, bad)
    assert fm.shapes(spec, torch.Size([2, 3])) == {"": (2, 4)}
    with pytest.raises(TypeError, match="fm.shapes: expected a layer spec"):
        fm.shapes("Linear", (3,))


def test_positional_torch_signature_still_works():
    assert fnn.Linear(3, 4) == fnn.Linear(in_features=3, out_features=4)
    assert fnn.Conv2d(1, 32, 3) == fnn.Conv2d(in_channels=1, out_channels=32, kernel_size=3)
    assert fnn.ResidualBlock(4, 8, 2).stride == 2
    for make, pattern in [
        (lambda: fnn.Linear(3), r"Linear: missing required argument\(s\) \['out_features'\]"),
        (lambda: fnn.Conv2d(out_channels=3), r"Conv2d: missing .* \['kernel_size'\]"),
        (lambda: fnn.Linear(3, 4, True, 5), "Linear: takes at most 3 positional arguments"),
        (lambda: fnn.Linear(3, 4, in_features=3), "multiple values for argument 'in_features'"),
        (lambda: fnn.Linear(3, 4, out=2), "Linear: unexpected argument 'out'"),
    ]:
        with pytest.raises(TypeError, match=pattern):
            make()
