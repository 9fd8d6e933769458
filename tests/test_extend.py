"""funcmodels.extend: the public authoring API. Each name is documented, and does what its
docstring says (checked against the core's own results: ``tree[path]``, ``fm.init``,
``zlib.crc32``)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import ClassVar

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels import extend

nn = fm.nn


@pytest.mark.parametrize("name", extend.__all__)
def test_every_name_is_documented_with_arguments_and_returns(name):
    doc = inspect.getdoc(getattr(extend, name))
    assert doc and doc.splitlines()[0].strip(), name
    assert "Arguments:" in doc and "Returns:" in doc, name


def test_name_hash_is_crc32_pinned():
    # zlib.crc32(b"weight") and (b"mask"): a change here changes every model's init.
    assert extend.name_hash("weight") == 130897217
    assert extend.name_hash("mask") == 2138030896


def test_layer_name_and_field_values():
    assert extend.layer_name("main_branch.0.") == "main_branch.0"
    assert extend.layer_name("") == "<root>"
    assert extend.field_values(nn.Linear(3, 4, bias=False)) == {
        "in_features": 3,
        "out_features": 4,
        "bias": False,
    }


def test_expected_entries_lists_params_and_buffers_with_shapes():
    spec = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert extend.expected_entries(spec, "params") == {
        "0.weight": ((4, 3), None),
        "0.bias": ((4,), None),
        "1.weight": ((4,), None),
        "1.bias": ((4,), None),
    }
    state = extend.expected_entries(spec, "state")
    assert state["1.running_mean"] == ((4,), None)
    assert state["1.num_batches_tracked"] == ((), torch.int64)


def test_cached_computes_once_per_spec_object():
    calls = []
    spec, twin = nn.Linear(3, 4), nn.Linear(3, 4)

    def make():
        calls.append(1)
        return ("table",)

    assert extend.cached(spec, "_test_table", make) == ("table",)
    assert extend.cached(spec, "_test_table", make) == ("table",)
    assert len(calls) == 1
    extend.cached(twin, "_test_table", make)  # an equal spec is another object
    assert len(calls) == 2
    assert spec == twin and hash(spec) == hash(twin)  # the cache is not a field


@pytest.mark.parametrize(
    ("check", "args", "exc", "match"),
    [
        (extend.positive_int, ("Foo", "width", 0), ValueError, "Foo: width must be positive"),
        (extend.positive_int, ("Foo", "width", True), TypeError, "Foo: width must be an int"),
        (extend.non_negative_int, ("Foo", "pad", -1), ValueError, "Foo: pad must be non-neg"),
        (extend.boolean, ("Foo", "bias", 1), TypeError, "Foo: bias must be a bool"),
        (extend.number, ("Foo", "p", 1.5, 0, 1), ValueError, r"Foo: p must be in \[0, 1\]"),
        (extend.number, ("Foo", "p", "a"), TypeError, "Foo: p must be a number"),
        (extend.int_tuple, ("Foo", "k", (1, 2, 3), 2, 1), ValueError, "Foo: k must have 2"),
    ],
)
def test_field_checks_name_the_layer_and_the_field(check, args, exc, match):
    with pytest.raises(exc, match=match):
        check(*args)


def test_field_checks_return_the_value():
    assert extend.positive_int("Foo", "width", 3) == 3
    assert extend.number("Foo", "p", 1, 0, 1) == 1.0
    assert extend.int_tuple("Foo", "k", 3, 2, 1) == (3, 3)


def test_torch_signature_lets_an_inferable_size_come_first():
    @extend.torch_signature
    @dataclasses.dataclass(frozen=True, init=False)
    class _Scaled(fm.Spec):
        inferred_fields: ClassVar[tuple[str, ...]] = ("features",)
        features: int | None = None
        factor: float

        def __post_init__(self):
            extend.number("_Scaled", "factor", self.factor)

    assert _Scaled(3, 2.0) == _Scaled(features=3, factor=2.0)
    assert _Scaled(factor=2.0).features is None
    with pytest.raises(TypeError, match=r"missing required argument\(s\) \['factor'\]"):
        _Scaled(3)
    with pytest.raises(TypeError, match="factor must be a number"):
        _Scaled(3, "x")


def test_under_vmap_sees_vmap_also_through_grad():
    seen = []

    def f(x):
        seen.append(extend.under_vmap(x))
        return x.sum()

    x = torch.ones(2, 3)
    f(x)
    vmap(f)(x)
    vmap(grad(f))(x)
    grad(f)(x)
    assert seen == [False, True, True, False]


def test_tapping_sees_every_layer_and_may_replace_its_output():
    spec = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    params = fm.init(fm.key(0), spec)
    x = torch.ones(5, 3)
    paths = []

    def tap(ctx, inp, out):
        paths.append((ctx.path, type(ctx.spec).__name__, sorted(ctx.own_params())))
        return out + 1 if ctx.path == "2.0" else out

    with extend.tapping(tap):
        y = fm.apply(params, x)
    assert paths == [
        ("0", "Linear", ["bias", "weight"]),
        ("1", "ReLU", []),
        ("2.0", "Linear", ["bias", "weight"]),
        ("2", "Sequential", []),
        ("", "Sequential", []),
    ]
    torch.testing.assert_close(y, fm.apply(params, x) + 1, atol=0, rtol=0)
    with extend.tapping(tap), pytest.raises(RuntimeError, match="do not nest"):
        with extend.tapping(tap):
            pass


def test_replace_layers_rebuilds_only_the_parents():
    inner = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    spec = nn.Sequential({"body": inner, "head": nn.Linear(4, 2)})
    new = extend.replace_layers(spec, {"body.1": nn.GELU(), "head": nn.Linear(4, 5)})
    assert new == nn.Sequential(
        {"body": nn.Sequential(nn.Linear(3, 4), nn.GELU()), "head": nn.Linear(4, 5)}
    )
    assert new.child("body").child("0") is inner.child("0")  # untouched layers are kept
    assert extend.replace_layers(spec, {}) is spec
    assert extend.replace_layers(spec, {"": nn.ReLU()}) == nn.ReLU()


def test_replace_layers_with_entries_is_model_surgery():
    spec = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    params = fm.init(fm.key(0), spec)
    new_spec = extend.replace_layers(spec, {"1": nn.Identity()})
    moved, _ = fm.from_state_dict(new_spec, fm.to_state_dict(params))
    x = torch.randn(6, 3)
    hidden = x @ params["0.weight"].T + params["0.bias"]  # no ReLU any more
    want = hidden @ params["2.weight"].T + params["2.bias"]
    torch.testing.assert_close(fm.apply(moved, x), want, atol=1e-6, rtol=1e-5)


def test_replace_layers_names_what_it_cannot_do():
    block = nn.ResidualBlock(4, 8, 2)
    spec = nn.Sequential(nn.Linear(3, 4), block)
    with pytest.raises(ValueError, match=r"no layer at '2'; its layers: \['0', '1', "):
        extend.replace_layers(spec, {"2": nn.ReLU()})
    cannot = "layer '1.main_branch.0' cannot be replaced: ResidualBlock at '1'"
    with pytest.raises(ValueError, match=cannot):
        extend.replace_layers(spec, {"1.main_branch.0": nn.Conv2d(4, 8, 3)})
    with pytest.raises(TypeError, match="the layer for '0' must be a spec, got int"):
        extend.replace_layers(spec, {"0": 3})
    with pytest.raises(TypeError, match="expected a spec, got dict"):
        extend.replace_layers({}, {})


def test_subtree_is_the_layers_part_of_the_tree():
    spec = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.BatchNorm1d(4)))
    params, state = fm.init_with_state(fm.key(0), spec)
    sub = extend.subtree(params, "2.0")
    want = params["2.0"]
    assert type(sub) is fm.Params and sub.spec == want.spec == nn.BatchNorm1d(4)
    assert list(sub) == list(want) and all(sub[k] is want[k] for k in want)
    relu = extend.subtree(params, "1")
    assert relu.spec == nn.ReLU() and relu.flat() == {}  # where tree['1'] raises KeyError
    with pytest.raises(KeyError):
        params["1"]
    no_state = extend.subtree(state, "0")
    assert type(no_state) is fm.State and no_state.flat() == {}
    assert extend.subtree(state, "2").flat().keys() == {
        "0.running_mean",
        "0.running_var",
        "0.num_batches_tracked",
    }
    assert extend.subtree(params, "").flat().keys() == params.flat().keys()
    x = torch.randn(5, 4)
    torch.testing.assert_close(
        fm.apply(sub, x, state=extend.subtree(state, "2.0")),
        fm.apply(params["2.0"], x, state=state["2.0"]),
        atol=0,
        rtol=0,
    )
    with pytest.raises(ValueError, match="has no child '3'"):
        extend.subtree(params, "3")
    with pytest.raises(TypeError, match="expected Params or State, got dict"):
        extend.subtree(params.flat(), "0")


def test_unchecked_keeps_the_dict_it_is_given():
    spec = nn.Linear(3, 4)
    flat = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    tree = extend.unchecked(fm.Params, spec, flat)
    assert type(tree) is fm.Params and tree.spec is spec
    assert tree["weight"] is flat["weight"] and tree["bias"] is flat["bias"]
    torch.testing.assert_close(fm.apply(tree, torch.ones(2, 3)), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="tree_type must be fm.Params or fm.State"):
        extend.unchecked(dict, spec, flat)
    with pytest.raises(TypeError, match="flat must be a dict, got list"):
        extend.unchecked(fm.State, spec, [])


def test_layer_error_is_worded_as_the_cores_and_not_prefixed_again():
    @dataclasses.dataclass(frozen=True)
    class _Pairs(fm.Spec):
        def out_shape(self, in_shape, path="", record=None):
            if in_shape[-1] % 2:
                raise extend.layer_error(self, path, f"expected an even width, got {in_shape}")
            return in_shape

        def forward(self, ctx, x):
            return x

    err = extend.layer_error(nn.ReLU(), "body.1.", "bad", TypeError)
    assert type(err) is TypeError and str(err) == "layer 'body.1' (ReLU): bad"
    spec = nn.Sequential({"body": nn.Sequential(nn.Linear(4, 3), _Pairs())})
    with pytest.raises(ValueError) as info:
        fm.init(fm.key(0), spec, input_shape=(4,))
    assert str(info.value) == "layer 'body.1' (_Pairs): expected an even width, got (3,)"


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv1d(2, 3, 4, padding="same", dilation=2), (1, 2, 9)),
        (nn.Conv2d(2, 3, (3, 2), padding=(1, 2)), (1, 2, 6, 5)),
        (nn.Conv2d(2, 3, (2, 3), padding="same"), (1, 2, 6, 5)),
        (nn.Conv3d(2, 3, 3, padding="valid"), (1, 2, 4, 4, 4)),
    ],
)
def test_conv_padding_is_what_the_layer_pads(conv, shape):
    params = fm.init(fm.key(0), conv)
    x = torch.randn(shape)
    pads = extend.conv_padding(conv)
    assert len(pads) == 2 * len(conv.kernel_size)
    dims = len(conv.kernel_size)
    plain = getattr(torch.nn.functional, f"conv{dims}d")
    want = plain(
        torch.nn.functional.pad(x, pads), params["weight"], params["bias"], dilation=conv.dilation
    )
    torch.testing.assert_close(fm.apply(params, x), want, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="expected a Conv1d, Conv2d or Conv3d, got Linear"):
        extend.conv_padding(nn.Linear(2, 3))
