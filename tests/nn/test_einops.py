"""einops layers: fidelity to einops, unbatched examples, shapes, checks, gradients,
compilation, configs, files and the torch bridge.

Reference: einops itself (``einops.rearrange``/``einops.reduce`` and the layers of
:mod:`einops.layers.torch`) on the same tensors. The layers only move and reduce values
with the same torch ops, so outputs are compared exactly.
"""

from __future__ import annotations

import json
import re

import einops
import einops.layers.torch as einops_torch
import pytest
import torch
from torch.func import vmap

import funcmodels as fm
import transforms
from funcmodels._registry import lookup
from tests.helpers import assert_per_sample_grads_match
from transforms.bridge import RearrangeModule, ReduceModule

nn = fm.nn

# (pattern, reduction or None for Rearrange, axis sizes, batched input shape)
CASES = [
    ("b c h w -> b (h w) c", None, {}, (3, 2, 4, 5)),
    ("b (h w) c -> b h w c", None, {"h": 4}, (2, 12, 3)),
    ("b c (h h2) (w w2) -> b (c h2 w2) h w", None, {"h2": 2, "w2": 2}, (2, 3, 4, 6)),
    ("b h w c -> b c h w", None, {}, (2, 3, 4, 5)),
    ("b c -> b c 1", None, {}, (3, 4)),
    ("b 1 c -> b c", None, {}, (3, 1, 4)),
    ("b (c g) -> b g c", None, {"c": 2, "g": 3}, (2, 6)),
    ("b ... -> b (...)", None, {}, (2, 3, 4, 5)),
    ("... h w -> ... (h w)", None, {}, (2, 3, 4, 5)),
    ("b c h w -> c b h w", None, {}, (2, 3, 4, 5)),  # moves the batch axis
    ("b c h w -> b c", "mean", {}, (3, 2, 4, 5)),
    ("b c (h 2) (w 2) -> b c h w", "max", {}, (2, 3, 4, 6)),
    ("b s c -> b c", "sum", {}, (2, 5, 3)),
    ("b (s k) c -> b s c", "min", {"k": 3}, (2, 6, 4)),
    ("b c h w -> b h", "prod", {}, (2, 2, 3, 2)),
    ("b ... c -> b c", "mean", {}, (2, 3, 4, 5)),
    ("b c h w -> c", "sum", {}, (2, 3, 4, 5)),  # reduces the batch axis
]
IDS = [f"{p}-{r}-{a}" for p, r, a, _ in CASES]


def make(pattern, reduction, axes):
    if reduction is None:
        return nn.Rearrange(pattern, **axes), einops_torch.Rearrange(pattern, **axes)
    return nn.Reduce(pattern, reduction, **axes), einops_torch.Reduce(pattern, reduction, **axes)


def reference(x, pattern, reduction, axes):
    if reduction is None:
        return einops.rearrange(x, pattern, **axes)
    return einops.reduce(x, pattern, reduction, **axes)


def keeps_batch(spec) -> bool:
    try:
        spec.out_shape((...,))
    except ValueError:
        return False
    return True


# -- computation -------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, reduction, axes, shape", CASES, ids=IDS)
def test_matches_einops_and_its_torch_layer(pattern, reduction, axes, shape):
    spec, layer = make(pattern, reduction, axes)
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {}
    x = fm.random.normal(fm.key(1), shape)
    before = x.clone()
    want = reference(x, pattern, reduction, axes)
    torch.testing.assert_close(fm.apply(params, x), want, atol=0, rtol=0)
    torch.testing.assert_close(layer(x), want, atol=0, rtol=0)
    torch.testing.assert_close(x, before, atol=0, rtol=0)


@pytest.mark.parametrize("pattern, reduction, axes, shape", CASES, ids=IDS)
def test_unbatched_example_is_a_batch_of_one(pattern, reduction, axes, shape):
    spec, _ = make(pattern, reduction, axes)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), shape)
    if spec.example_ndim is None:
        # Inputs pass through as given: an example is the pattern's whole input.
        if "..." in pattern:
            torch.testing.assert_close(
                fm.apply(params, x[0]), reference(x[0], pattern, reduction, axes)
            )
        else:
            with pytest.raises(ValueError, match=rf"needs {len(shape)} dims, got an input"):
                fm.apply(params, x[0])
        return
    assert spec.example_ndim == len(shape) - 1
    torch.testing.assert_close(fm.apply(params, x[0]), fm.apply(params, x[:1])[0], atol=0, rtol=0)
    # ...so vmap over single examples gives the batched output.
    torch.testing.assert_close(
        vmap(lambda xi: fm.apply(params, xi))(x), fm.apply(params, x), atol=0, rtol=0
    )


@pytest.mark.parametrize(
    "spec, rank",
    [
        (nn.Rearrange("b c h w -> b (h w) c"), 3),
        (nn.Rearrange("(b) c -> b c"), 1),
        (nn.Rearrange("b (h w) -> b h w", h=2), 1),
        (nn.Reduce("b c h w -> b c", "mean"), 3),
        (nn.Rearrange("b ... -> b (...)"), None),  # '...': any rank
        (nn.Rearrange("... c -> ... c"), None),
        (nn.Rearrange("b c -> c b"), None),  # the batch axis moves
        (nn.Rearrange("b c -> (b c)"), None),  # ... or is merged
        (nn.Rearrange("(b c) -> b c", c=2), None),  # ... or split
        (nn.Rearrange("1 b -> b"), None),
        (nn.Reduce("b c -> c", "sum"), None),  # ... or reduced
    ],
)
def test_example_rank_follows_the_batch_axis(spec, rank):
    assert spec.example_ndim == rank
    assert nn.Sequential(spec, nn.ReLU()).example_ndim == rank
    assert not spec.preserves_rank


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, reduction, axes, shape", CASES, ids=IDS)
def test_out_shape_is_that_of_einops(pattern, reduction, axes, shape):
    spec, layer = make(pattern, reduction, axes)
    if not keeps_batch(spec):
        return  # see test_batch_axis_must_stay_first_for_shape_inference
    want = tuple(layer(torch.zeros(shape)).shape[1:])
    assert spec.out_shape(shape[1:]) == want
    assert fm.shapes(spec, shape[1:]) == {"": want}


@pytest.mark.parametrize(
    "spec, in_shape, out",
    [
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (None, 3), (4, None, 3)),
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (..., 3), (4, None, 3)),
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (...,), (4, None, None)),
        (nn.Rearrange("b c h w -> b (h w) c"), (3, None, 5), (None, 3)),
        (nn.Rearrange("b c h w -> b (h w) c"), (None, 4, 5), (20, None)),
        (nn.Rearrange("b c (h 1) -> b h c"), (2, None), (None, 2)),
        (nn.Rearrange("b (c g) -> b g c", c=2, g=3), (None,), (3, 2)),
        (nn.Rearrange("b ... -> b (...)"), (3, None), (None,)),
        (nn.Rearrange("b ... -> b (...)"), (..., 4), (None,)),
        (nn.Rearrange("... h w -> ... (h w)"), (2, 3, 4), (2, 12)),
        (nn.Rearrange("... h w -> ... (h w)"), (..., 3, 4), (...,)),
        (nn.Reduce("b (s k) c -> b s c", "max", k=2), (None, 4), (None, 4)),
        (nn.Reduce("b ... c -> b c", "mean"), (..., 5), (None,)),
        (nn.Reduce("b ... -> b", "sum"), (2, 3), ()),
    ],
)
def test_unknown_sizes_stay_unknown(spec, in_shape, out):
    assert spec.out_shape(in_shape) == out


def test_sizes_are_inferred_through_the_layers():
    spec = nn.Sequential(
        nn.Conv2d(out_channels=4, kernel_size=3),
        nn.Rearrange("b c (h h2) (w w2) -> b (h w) (c h2 w2)", h2=2, w2=2),
        nn.LayerNorm(),
        nn.Reduce("b s c -> b c", "mean"),
        nn.Linear(out_features=3),
    )
    params = fm.init(fm.key(0), spec, input_shape=(2, 6, 8))
    assert fm.shapes(params, (2, 6, 8)) == {
        "": (3,),
        "0": (4, 4, 6),
        "1": (6, 16),
        "2": (6, 16),
        "3": (16,),
        "4": (3,),
    }
    assert params.spec["2"] == nn.LayerNorm(16) and params.spec["4"] == nn.Linear(16, 3)
    x = fm.random.normal(fm.key(1), (5, 2, 6, 8))
    assert fm.apply(params, x).shape == (5, 3)
    assert fm.apply(params, x[0]).shape == (3,)  # the conv batches the single example
    # A config without an input shape is checked as far as its sizes go.
    config = [
        {
            "type": "rearrange",
            "params": {"pattern": "b (h w) -> b h w", "axes_lengths": [["h", 3]]},
        },
        {"type": "reduce", "params": {"pattern": "b h w -> b h", "reduction": "max"}},
        {"type": "linear", "params": {"in_features": 4, "out_features": 2}},
    ]
    with pytest.raises(ValueError, match=r"config\[2\].*expected 4.*got.*\(3,\)"):
        fm.from_config(config)


# -- checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_spec, exc, message",
    [
        (lambda: nn.Rearrange(3), TypeError, "Rearrange: pattern must be a string"),
        (lambda: nn.Rearrange("b c"), ValueError, "Rearrange: pattern must have one '->'"),
        (lambda: nn.Rearrange("b c -> b c -> c"), ValueError, "one '->'"),
        (
            lambda: nn.Rearrange("b c -> b d"),
            ValueError,
            "Rearrange: invalid pattern 'b c -> b d': Identifiers only on one side",
        ),
        (lambda: nn.Rearrange("b (c -> b c"), ValueError, "Rearrange: invalid pattern"),
        (lambda: nn.Rearrange("(b c d) -> b c d", c=2), ValueError, "Could not infer sizes"),
        (lambda: nn.Rearrange("b c -> b c", d=2), ValueError, "with d=2: Axis d is not used"),
        (lambda: nn.Rearrange("b c -> b c", c=0), ValueError, "axis 'c' must be positive, got 0"),
        (
            lambda: nn.Rearrange("b c -> b c", c=2.0),
            TypeError,
            "axis 'c' must be an int, got float",
        ),
        (lambda: nn.Rearrange("b c -> b c", c=True), TypeError, "must be an int, got bool"),
        (
            lambda: nn.Rearrange("b c -> b c", axes_lengths=[("c", 2)], c=2),
            ValueError,
            "axis 'c' is given twice",
        ),
        (
            lambda: nn.Rearrange("b c -> b c", axes_lengths=[("c", 2, 3)]),
            TypeError,
            r"axes_lengths must be \[name, size\] pairs",
        ),
        (lambda: nn.Rearrange("b c -> b c", axes_lengths=7), TypeError, "got int 7"),
        (
            lambda: nn.Rearrange("b c -> b c", axes_lengths=[("h w", 2)]),
            ValueError,
            "Rearrange: 'h w' is not a valid axis name",
        ),
        (lambda: nn.Reduce("b c -> b", "avg"), ValueError, "Reduce: reduction must be one of"),
        (lambda: nn.Reduce("b c -> b", "any"), ValueError, "got 'any'"),
        (lambda: nn.Reduce("b c -> b", torch.sum), TypeError, "Reduce: reduction must be a str"),
        (lambda: nn.Reduce("b c -> b d", "sum"), ValueError, "Reduce: invalid pattern"),
    ],
)
def test_construction_checks(make_spec, exc, message):
    with pytest.raises(exc, match=message):
        make_spec()


def test_axes_are_sorted_pairs_however_given():
    a = nn.Rearrange("b (h w) c -> b h w c", w=3, h=2)
    assert a.axes_lengths == (("h", 2), ("w", 3))
    assert a == nn.Rearrange("b (h w) c -> b h w c", axes_lengths=[["w", 3], ["h", 2]])
    assert a == nn.Rearrange("b (h w) c -> b h w c", axes_lengths={"h": 2}, w=3)
    assert hash(a) == hash(nn.Rearrange("b (h w) c -> b h w c", h=2, w=3))
    assert a != nn.Rearrange("b (h w) c -> b h w c", h=3, w=2)
    assert nn.Reduce("b c -> b", "max") != nn.Reduce("b c -> b", "min")


@pytest.mark.parametrize(
    "spec, in_shape, message",
    [
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (6, 3), r"'\(h w\)' \(h=4\) needs a size "),
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (12,), r"needs 2 dims per example, got"),
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (12, 3, 1), r"needs 2 dims per example"),
        (nn.Rearrange("b (h w) c -> b h w c", h=4), (..., 1, 2, 3), r"needs 2 dims per example"),
        (nn.Rearrange("b 1 c -> b c"), (2, 3), r"input axis '1' must have size 1"),
        (nn.Rearrange("b (c g) -> b g c", c=2, g=3), (7,), r"must have size 6"),
        (nn.Rearrange("... h w -> ... (h w)"), (5,), r"needs at least 2 dims per example"),
        (nn.Reduce("b c (h 2) -> b c h", "max"), (3, 5), r"'\(h 2\)' needs a size divisible by 2"),
        (nn.Rearrange("b c -> c b"), (3,), r"moves the batch axis 'b'.*depends on the batch"),
        (nn.Rearrange("b c -> (b c)"), (3,), r"merges the batch axis 'b' into \(b c\)"),
        (nn.Rearrange("(b c) -> b c", c=2), (4,), r"starts with \(b c\), not a single named"),
        (nn.Reduce("b c -> c", "sum"), (3,), r"reduces the batch axis 'b'"),
        (nn.Reduce("... c -> c", "sum"), (3,), r"reduces the leading '...'"),
        (nn.Rearrange("... c -> c ..."), (3,), r"moves or merges the leading '...'"),
    ],
)
def test_out_shape_errors_name_the_layer(spec, in_shape, message):
    with pytest.raises(ValueError, match=rf"layer '<root>' \({spec.type_name}\): .*{message}"):
        spec.out_shape(in_shape)


def test_forward_checks_the_input_and_names_the_layer():
    spec = nn.Sequential(nn.Linear(4, 6), nn.Rearrange("b (h w) -> b h w", h=4))
    params = fm.init(fm.key(0), spec)
    with pytest.raises(ValueError, match=r"layer '1' \(Rearrange\): .*divisible by 4.*\(2, 6\)"):
        fm.apply(params, torch.ones(2, 4))
    flat = fm.init(fm.key(0), nn.Rearrange("b c h w -> b (c h w)"))
    with pytest.raises(ValueError, match=r"rank 3 \(one example\) or 4 \(a batch\)"):
        fm.apply(flat, torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"\(Rearrange\): expected a tensor, got list"):
        fm.apply(fm.init(fm.key(0), nn.Rearrange("... c -> ... c")), [1.0])


# -- transformations ---------------------------------------------------------------------


def small_model(reduction: str = "mean") -> fm.Spec:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Rearrange("b c (h h2) (w w2) -> b (h w) (c h2 w2)", h2=2, w2=2),
        nn.Reduce("b s c -> b c", reduction),
        nn.Linear(16, 3),
    )


@pytest.mark.parametrize("reduction", ["mean", "max", "min", "sum", "prod"])
def test_per_sample_grads(reduction):
    params = fm.init(fm.key(2), small_model(reduction))
    x = fm.random.normal(fm.key(3), (4, 2, 4, 6))
    y = fm.random.normal(fm.key(4), (4, 3))
    assert_per_sample_grads_match(params, x, y)


# -- configs and files -------------------------------------------------------------------

SPECS = [
    nn.Rearrange("b c h w -> b (h w) c"),
    nn.Rearrange("b (h w) c -> b h w c", h=4),
    nn.Rearrange("b (h w) c -> b h w c", w=2, h=4),
    nn.Reduce("b c h w -> b c", "mean"),
    nn.Reduce("b (s k) c -> b s c", "max", k=3),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_config_round_trip(spec):
    config = spec.to_config()
    assert config["type"] == spec.type_name.lower()
    if spec.axes_lengths:
        assert config["params"]["axes_lengths"] == [list(p) for p in spec.axes_lengths]
    else:
        assert "axes_lengths" not in config["params"]
    for doc in (config, spec.to_config(defaults=True)):
        assert fm.from_config(doc) == spec
        assert fm.from_config(json.loads(json.dumps(doc))) == spec
    chain = nn.Sequential(nn.Linear(4, 12), spec, nn.ReLU())
    assert fm.from_config(json.loads(json.dumps(chain.to_config()))) == chain


def test_config_names():
    assert lookup("rearrange") is nn.Rearrange and lookup("reduce") is nn.Reduce
    config = [
        {
            "type": "rearrange",
            "params": {"pattern": "b (h w) -> b h w", "axes_lengths": [["h", 2]]},
        },
        {"type": "reduce", "params": {"pattern": "b h w -> b w", "reduction": "max"}},
    ]
    spec = fm.from_config(config, input_shape=(6,))
    assert spec.layers == (
        ("layer_0", nn.Rearrange("b (h w) -> b h w", h=2)),
        ("layer_1", nn.Reduce("b h w -> b w", "max")),
    )
    with pytest.raises(ValueError, match=r"config\[0\].*divisible by 2.*\(5,\)"):
        fm.from_config(config, input_shape=(5,))
    with pytest.raises(ValueError, match=r"config\[1\].*Reduce: reduction must be one of"):
        fm.from_config(
            [config[0], {"type": "reduce", "params": {"pattern": "b -> b", "reduction": "avg"}}]
        )


# -- torch.nn bridge ---------------------------------------------------------------------


def test_to_module_makes_einops_layers_that_trace_and_export():
    params = fm.init(fm.key(0), small_model())
    module = transforms.to_module(params)
    assert [type(m) for m in module] == [
        torch.nn.Conv2d,
        RearrangeModule,
        ReduceModule,
        torch.nn.Linear,
    ]
    assert isinstance(module[1], einops_torch.Rearrange)
    assert isinstance(module[2], einops_torch.Reduce)
    assert (module[1].pattern, module[1].axes_lengths) == (
        "b c (h h2) (w w2) -> b (h w) (c h2 w2)",
        {"h2": 2, "w2": 2},
    )
    assert module[2].reduction == "mean"
    x = fm.random.normal(fm.key(1), (3, 2, 4, 6))
    with torch.no_grad():
        want = fm.apply(params, x)
        torch.testing.assert_close(module(x), want, atol=1e-6, rtol=1e-5)
        traced = torch.fx.symbolic_trace(module)
        torch.testing.assert_close(traced(x), want, atol=1e-6, rtol=1e-5)
        # The trace does not fix the batch size.
        torch.testing.assert_close(traced(x[:2]), want[:2], atol=1e-6, rtol=1e-5)
        exported = torch.export.export(module, (x,))
        torch.testing.assert_close(exported.module()(x), want, atol=1e-6, rtol=1e-5)
    back, _ = transforms.from_module(module)
    assert back.spec == params.spec
    assert all(torch.equal(back[k], v) for k, v in params.flat().items())


def test_from_module_reads_einops_own_layers():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        einops_torch.Rearrange("b (h w) -> b h w", w=4),
        einops_torch.Reduce("b h w -> b w", "max"),
    ).eval()
    params, _ = transforms.from_module(module)
    assert params.spec == nn.Sequential(
        nn.Linear(6, 8), nn.Rearrange("b (h w) -> b h w", w=4), nn.Reduce("b h w -> b w", "max")
    )
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, x), module(x), atol=1e-6, rtol=1e-5)
    custom = torch.nn.Sequential(einops_torch.Reduce("b c -> b", lambda t, axes: t.sum(axes)))
    with pytest.raises(
        TypeError, match=re.escape("module '0' (Reduce): Reduce: reduction must be a string")
    ):
        transforms.from_module(custom)
