"""Specs to JSON-able layer dicts and back: exact round trips, the config format, errors."""

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
from funcmodels._spec import Spec

nn = fm.nn

sizes = st.integers(1, 6)
small = st.integers(0, 3)
eps = st.floats(1e-9, 1e-1, allow_nan=False)


def _pair(elements):
    return st.one_of(elements, st.tuples(elements, elements))


@st.composite
def convs(draw, n):
    groups = draw(st.sampled_from([1, 2]))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(*[st.integers(1, 3)] * n)))
    strides = stride if isinstance(stride, tuple) else (stride,)
    paddings = [small, st.tuples(*[small] * n), st.just("valid")]
    if all(s == 1 for s in strides):
        paddings.append(st.just("same"))
    return getattr(nn, f"Conv{n}d")(
        draw(sizes) * groups,
        draw(sizes) * groups,
        draw(st.one_of(sizes, st.tuples(*[sizes] * n))),
        stride=stride,
        padding=draw(st.one_of(*paddings)),
        dilation=draw(st.integers(1, 2)),
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
    )


@st.composite
def group_norms(draw):
    groups = draw(sizes)
    return nn.GroupNorm(groups, groups * draw(sizes), eps=draw(eps), affine=draw(st.booleans()))


@st.composite
def residual_blocks(draw):
    norm = draw(st.sampled_from(["batch", "group", "none"]))
    out = draw(sizes) * 2
    return nn.ResidualBlock(
        draw(sizes) * 2,
        out,
        stride=draw(st.integers(1, 2)),
        groups=draw(st.sampled_from([1, 2])),
        dilation=draw(st.integers(1, 2)),
        use_se=draw(st.booleans()),
        se_ratio=draw(st.floats(0.05, 1.0)),
        activation=draw(st.sampled_from([nn.ReLU(), nn.GELU("tanh"), nn.SiLU()])),
        norm=norm,
        norm_groups=2 if norm == "group" else None,
        conv_bias=draw(st.booleans()),
    )


# Layers added by other modules are tested when present.
_OPTIONAL = {
    "MaxPool2d": lambda: st.builds(
        nn.MaxPool2d, _pair(st.integers(2, 4)), stride=st.none() | _pair(sizes)
    ),
    "AvgPool2d": lambda: st.builds(
        nn.AvgPool2d,
        _pair(st.integers(2, 4)),
        count_include_pad=st.booleans(),
        divisor_override=st.none() | sizes,
    ),
    "AdaptiveAvgPool1d": lambda: st.builds(nn.AdaptiveAvgPool1d, sizes),
    "AdaptiveAvgPool2d": lambda: st.builds(
        nn.AdaptiveAvgPool2d, st.one_of(sizes, st.tuples(st.none() | sizes, st.none() | sizes))
    ),
    "BatchNorm1d": lambda: st.builds(
        nn.BatchNorm1d, sizes, eps=eps, momentum=st.none() | st.floats(0.01, 0.9)
    ),
    "BatchNorm2d": lambda: st.builds(
        nn.BatchNorm2d, sizes, affine=st.booleans(), track_running_stats=st.booleans()
    ),
    "LayerNorm": lambda: st.builds(
        nn.LayerNorm, st.one_of(sizes, st.lists(sizes, min_size=1, max_size=3).map(tuple)), eps=eps
    ),
    "GroupNorm": group_norms,
    "Dropout": lambda: st.builds(nn.Dropout, st.floats(0.0, 1.0)),
    "ResidualBlock": residual_blocks,
}

leaves = st.one_of(
    st.builds(nn.Linear, sizes, sizes, bias=st.booleans()),
    convs(1),
    convs(2),
    st.sampled_from([nn.ReLU(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.Identity()]),
    st.builds(nn.GELU, st.sampled_from(["none", "tanh"])),
    st.builds(nn.Softmax, st.integers(-3, 3)),
    st.builds(nn.LogSoftmax, st.integers(-3, 3)),
    st.builds(nn.Flatten, small, st.integers(-3, 3)),
    *[make() for name, make in _OPTIONAL.items() if getattr(nn, name, None) is not None],
)

names = st.text("abcxyz_0123456789", min_size=1, max_size=4)


def _sequentials(children):
    positional = st.lists(children, max_size=4).map(lambda layers: nn.Sequential(*layers))
    named = st.dictionaries(names, children, max_size=4).map(nn.Sequential)
    return positional | named


specs = st.recursive(leaves, _sequentials, max_leaves=12)


def _same_types(a: Spec, b: Spec) -> bool:
    return [(p, type(s)) for p, s in a.walk()] == [(p, type(s)) for p, s in b.walk()]


@settings(max_examples=60, deadline=None)
@given(specs)
def test_round_trip_through_json_is_exact(spec):
    doc = fm.spec_to_dict(spec)
    text = json.dumps(doc, allow_nan=False)  # strict JSON
    back = fm.spec_from_dict(json.loads(text))
    assert back == spec
    assert hash(back) == hash(spec)
    assert _same_types(back, spec)
    assert fm.spec_to_dict(back) == doc


@settings(max_examples=20, deadline=None)
@given(specs)
def test_round_trip_gives_the_same_params(spec):
    back = fm.spec_from_dict(json.loads(json.dumps(fm.spec_to_dict(spec))))
    a, b = (
        fm.to_state_dict(*fm.init_with_state(fm.key(3), spec)),
        fm.to_state_dict(*fm.init_with_state(fm.key(3), back)),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_layout_is_the_config_format():
    spec = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU())
    assert fm.spec_to_dict(spec) == {
        "type": "Sequential",
        "params": {
            "layers": [
                {
                    "name": "0",
                    "type": "Linear",
                    "params": {"in_features": 3, "out_features": 4, "bias": False},
                },
                {"name": "1", "type": "ReLU", "params": {}},
            ]
        },
    }


def test_tuples_become_lists_and_nested_specs_layer_dicts():
    conv = fm.spec_to_dict(nn.Conv2d(2, 4, (3, 1), padding="same"))
    assert conv["params"]["kernel_size"] == [3, 1]
    assert conv["params"]["padding"] == "same"
    if getattr(nn, "ResidualBlock", None) is not None:
        block = fm.spec_to_dict(nn.ResidualBlock(2, 2, activation=nn.GELU("tanh")))
        assert block["params"]["activation"] == {"type": "GELU", "params": {"approximate": "tanh"}}


def test_hand_written_document_with_defaults_omitted():
    doc = {
        "type": "Sequential",
        "params": {
            "layers": [
                {
                    "name": "stem",
                    "type": "Conv2d",
                    "params": {"in_channels": 3, "out_channels": 8, "kernel_size": 7, "stride": 2},
                },
                {"name": "act", "type": "ReLU"},
                {"name": "flat", "type": "Flatten", "params": {}},
                {"name": "head", "type": "Linear", "params": {"in_features": 8, "out_features": 2}},
            ]
        },
    }
    want = nn.Sequential(
        {
            "stem": nn.Conv2d(3, 8, 7, stride=2),
            "act": nn.ReLU(),
            "flat": nn.Flatten(),
            "head": nn.Linear(8, 2),
        }
    )
    assert fm.spec_from_dict(doc) == want


def test_decoding_does_not_change_the_document():
    doc = fm.spec_to_dict(nn.Sequential(nn.Conv1d(2, 2, 3), nn.Linear(2, 2)))
    before = json.dumps(doc)
    fm.spec_from_dict(doc)
    assert json.dumps(doc) == before


def _layers(*items):
    return {"type": "Sequential", "params": {"layers": list(items)}}


LIN = {"name": "0", "type": "Linear", "params": {"in_features": 2, "out_features": 2}}


@pytest.mark.parametrize(
    "doc, pattern",
    [
        (
            _layers(LIN, {"name": "1", "type": "Conv3d", "params": {}}),
            r"\$\.params\.layers\[1\]\.type: unknown layer type 'Conv3d'.*'Linear'",
        ),
        (
            {"type": "__import__('os').system('true')", "params": {}},
            r"\$\.type: unknown layer type",
        ),
        (
            _layers(LIN, {"name": "1", "type": "Linear", "params": {"in_features": 2, "out": 3}}),
            r"\$\.params\.layers\[1\]\.params: Linear has no field\(s\) \['out'\]",
        ),
        (
            _layers({"name": "a", "type": "Linear", "params": {"in_features": 2}}),
            r"\$\.params\.layers\[0\]\.params: Linear needs field\(s\) \['out_features'\]",
        ),
        (
            _layers(
                LIN,
                {"name": "x", "type": "Linear", "params": {"in_features": -1, "out_features": 2}},
            ),
            r"\$\.params\.layers\[1\]: Linear rejected its params: .*in_features.*-1",
        ),
        (
            _layers(LIN, dict(LIN)),
            r"\$\.params\.layers\[1\]\.name: duplicate name '0' "
            r"\(also at \$\.params\.layers\[0\]\)",
        ),
        (
            _layers({"name": 7, "type": "ReLU", "params": {}}),
            r"\$\.params\.layers\[0\]\.name: expected a string, got 7",
        ),
        ({"params": {}}, r"\$: missing 'type'"),
        ({"type": "ReLU", "params": {}, "extra": 1}, r"\$: unexpected keys \['extra'\]"),
        ({"type": "Linear", "params": [2, 3]}, r"\$\.params: expected a dict of fields"),
        (["Linear"], r"\$: expected a layer dict"),
        (
            {"type": "Linear", "params": {"in_features": {1, 2}, "out_features": 2}},
            r"\$\.params\.in_features: expected a JSON value",
        ),
    ],
)
def test_bad_documents_raise_value_error_naming_the_place(doc, pattern):
    with pytest.raises(ValueError, match=pattern):
        fm.spec_from_dict(doc)


def test_encoding_errors(monkeypatch):
    with pytest.raises(TypeError, match="expected a layer spec, got int"):
        fm.spec_to_dict(3)

    @dataclasses.dataclass(frozen=True)
    class _Private(Spec):
        size: int = 1

    with pytest.raises(TypeError, match=r"\$\.params\.layers\[1\]: .*_Private is not a registered"):
        fm.spec_to_dict(nn.Sequential(nn.ReLU(), _Private()))

    # A registered type whose field holds something JSON cannot carry; registered in a
    # copy of the registry so that other tests do not see it.
    monkeypatch.setattr(fm._spec, "_REGISTRY", dict(fm._spec._REGISTRY))

    @dataclasses.dataclass(frozen=True)
    class SerialTestHolder(Spec):
        value: object = None

    with pytest.raises(TypeError, match=r"\$\.params\.value: cannot serialise a dict"):
        fm.spec_to_dict(SerialTestHolder(value={"a": 1}))
    with pytest.raises(ValueError, match=r"\$\.params\.value: inf has no JSON form"):
        fm.spec_to_dict(SerialTestHolder(value=float("inf")))
    spec = SerialTestHolder(value=(1.5, None, "s", (True, -2)))
    assert fm.spec_from_dict(json.loads(json.dumps(fm.spec_to_dict(spec)))) == spec
