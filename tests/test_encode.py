"""Specs to JSON-able layer dicts and back: exact round trips, the config format, errors."""

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
from funcmodels._encode import decode, encode
from funcmodels._spec import Spec

nn = fm.nn

sizes = st.integers(1, 6)
small = st.integers(0, 3)
eps = st.floats(1e-9, 1e-1, allow_nan=False)


def _one_or_two(elements):
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


leaves = st.one_of(
    st.builds(nn.Linear, sizes, sizes, bias=st.booleans()),
    convs(1),
    convs(2),
    st.sampled_from([nn.ReLU(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.Identity()]),
    st.builds(nn.GELU, st.sampled_from(["none", "tanh"])),
    st.builds(nn.Softmax, st.integers(-3, 3)),
    st.builds(nn.LogSoftmax, st.integers(-3, 3)),
    st.builds(nn.Flatten, small, st.integers(-3, 3)),
    st.builds(nn.MaxPool2d, _one_or_two(st.integers(2, 4)), stride=st.none() | _one_or_two(sizes)),
    st.builds(
        nn.AvgPool2d,
        _one_or_two(st.integers(2, 4)),
        count_include_pad=st.booleans(),
        divisor_override=st.none() | sizes,
    ),
    st.builds(nn.AdaptiveAvgPool1d, sizes),
    st.builds(
        nn.AdaptiveAvgPool2d, st.one_of(sizes, st.tuples(st.none() | sizes, st.none() | sizes))
    ),
    st.builds(nn.BatchNorm1d, sizes, eps=eps, momentum=st.none() | st.floats(0.01, 0.9)),
    st.builds(nn.BatchNorm2d, sizes, affine=st.booleans(), track_running_stats=st.booleans()),
    st.builds(
        nn.LayerNorm, st.one_of(sizes, st.lists(sizes, min_size=1, max_size=3).map(tuple)), eps=eps
    ),
    group_norms(),
    st.builds(nn.Dropout, st.floats(0.0, 1.0)),
    residual_blocks(),
)

names = st.text("abcxyz_0123456789", min_size=1, max_size=4)


def _sequentials(children):
    positional = st.lists(children, max_size=4).map(lambda layers: nn.Sequential(*layers))
    named = st.dictionaries(names, children, max_size=4).map(nn.Sequential)
    return positional | named


specs = st.recursive(leaves, _sequentials, max_leaves=12)


def _same_types(a: Spec, b: Spec) -> bool:
    return [(p, type(s)) for p, s in a.walk()] == [(p, type(s)) for p, s in b.walk()]


def _stored(doc):
    """What fm.load does with a stored document (no shape-chain check)."""
    return decode(doc, "spec", nn.Sequential)


@settings(max_examples=60, deadline=None)
@given(specs, st.booleans())
def test_round_trip_through_json_is_exact(spec, defaults):
    doc = spec.to_config(defaults=defaults)
    text = json.dumps(doc, allow_nan=False)  # strict JSON
    back = _stored(json.loads(text))
    assert back == spec
    assert hash(back) == hash(spec)
    assert _same_types(back, spec)
    assert back.to_config(defaults=defaults) == doc


@settings(max_examples=20, deadline=None)
@given(specs)
def test_round_trip_gives_the_same_params(spec):
    back = _stored(json.loads(json.dumps(spec.to_config(defaults=True))))
    a, b = (
        fm.to_state_dict(*fm.init_with_state(fm.key(3), spec)),
        fm.to_state_dict(*fm.init_with_state(fm.key(3), back)),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_layout_is_the_config_format():
    spec = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU())
    assert spec.to_config() == [
        {
            "type": "linear",
            "name": "0",
            "params": {"in_features": 3, "out_features": 4, "bias": False},
        },
        {"type": "relu", "name": "1"},
    ]
    assert spec.to_config(defaults=True) == [
        {
            "type": "linear",
            "name": "0",
            "params": {"in_features": 3, "out_features": 4, "bias": False},
        },
        {"type": "relu", "name": "1"},
    ]
    assert nn.Linear(3, 4).to_config(defaults=True) == {
        "type": "linear",
        "params": {"in_features": 3, "out_features": 4, "bias": True},
    }
    nested = nn.Sequential({"body": nn.Sequential(nn.ReLU())})
    assert nested.to_config() == [
        {
            "type": "sequential",
            "name": "body",
            "params": {"layers": [{"type": "relu", "name": "0"}]},
        }
    ]


def test_tuples_become_lists_and_nested_specs_layer_dicts():
    conv = nn.Conv2d(2, 4, (3, 1), padding="same").to_config()
    assert conv["params"]["kernel_size"] == [3, 1]
    assert conv["params"]["padding"] == "same"
    block = nn.ResidualBlock(2, 2, activation=nn.GELU("tanh")).to_config()
    assert block["params"]["activation"] == {"type": "gelu", "params": {"approximate": "tanh"}}


def test_one_format_for_configs_and_files():
    # from_config reads what to_config writes, and what the files store.
    spec = nn.Sequential({"stem": nn.Conv2d(3, 8, 7, stride=2), "act": nn.ReLU()})
    assert fm.from_config(spec.to_config()) == spec
    assert fm.from_config(spec.to_config(defaults=True)) == spec
    assert _stored(spec.to_config()) == spec


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
    assert _stored(doc) == want


def test_decoding_does_not_change_the_document():
    doc = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Linear(2, 2)).to_config()
    before = json.dumps(doc)
    _stored(doc)
    assert json.dumps(doc) == before


def _layers(*items):
    return {"type": "Sequential", "params": {"layers": list(items)}}


LIN = {"name": "0", "type": "Linear", "params": {"in_features": 2, "out_features": 2}}
AT = r"spec\.params\.layers"


@pytest.mark.parametrize(
    "doc, exc, pattern",
    [
        (
            _layers(LIN, {"name": "1", "type": "Conv4d", "params": {}}),
            ValueError,
            AT + r"\[1\] \(name '1', type 'Conv4d'\): unknown layer type 'Conv4d'.*known types: "
            r".*linear",
        ),
        (
            {"type": "__import__('os').system('true')", "params": {}},
            ValueError,
            r"spec \(type .*\): unknown layer type",
        ),
        (
            _layers(LIN, {"name": "1", "type": "Linear", "params": {"in_features": 2, "out": 3}}),
            ValueError,
            AT + r"\[1\] \(name '1', type 'Linear'\): unknown parameter 'out'",
        ),
        (
            _layers({"name": "a", "type": "Linear", "params": {"in_features": 2}}),
            ValueError,
            AT + r"\[0\] \(name 'a', type 'Linear'\): missing required parameter\(s\) "
            r"'out_features'",
        ),
        (
            _layers(
                LIN,
                {"name": "x", "type": "Linear", "params": {"in_features": -1, "out_features": 2}},
            ),
            ValueError,
            AT + r"\[1\] \(name 'x', type 'Linear'\): Linear: in_features must be positive",
        ),
        (
            _layers(LIN, dict(LIN)),
            ValueError,
            AT
            + r"\[1\] \(name '0', type 'Linear'\): duplicate name '0' \(also the name of "
            + AT
            + r"\[0\]\)",
        ),
        (
            _layers({"name": 7, "type": "ReLU", "params": {}}),
            TypeError,
            AT + r"\[0\]: a layer name must be a string, got int 7",
        ),
        ({"params": {}}, ValueError, r"spec \(type None\): missing 'type'"),
        ({"type": "ReLU", "params": {}, "extra": 1}, ValueError, r"spec: unknown key 'extra'"),
        ({"type": "Linear", "params": [2, 3]}, TypeError, r"params must be a dict"),
        (["Linear"], TypeError, r"spec\[0\]: expected a layer entry"),
        (
            {"type": "Linear", "params": {"in_features": {1, 2}, "out_features": 2}},
            TypeError,
            r"spec\.params\.in_features cannot be a set",
        ),
        ({"type": "Linear", "params": {"in_features": 2, "out_features": 2.5}}, TypeError, "int"),
        ({"type": "Dropout", "params": {"p": float("nan")}}, ValueError, "only finite numbers"),
        (3, ValueError, "expected a list of layer entries or a layer dict, got int"),
    ],
)
def test_bad_documents_raise_errors_naming_the_place(doc, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _stored(doc)


def test_encoding_errors(scratch_registry):
    with pytest.raises(TypeError, match="expected a layer spec, got int"):
        encode(3)

    @dataclasses.dataclass(frozen=True)
    class _Private(Spec):
        size: int = 1

    with pytest.raises(TypeError, match=r"config\[1\]: .*_Private is a private spec class"):
        nn.Sequential(nn.ReLU(), _Private()).to_config()

    @dataclasses.dataclass(frozen=True)
    class EncodeTestHolder(Spec):
        value: object = None

    with pytest.raises(TypeError, match=r"spec\.params\.value: cannot write a dict"):
        EncodeTestHolder(value={"a": 1}).to_config()
    with pytest.raises(ValueError, match=r"spec\.params\.value: inf has no JSON form"):
        EncodeTestHolder(value=float("inf")).to_config()
    spec = EncodeTestHolder(value=(1.5, None, "s", (True, -2)))
    assert _stored(json.loads(json.dumps(spec.to_config()))) == spec
