"""fm.checkpoint.save / load: exact round trips of any tree, the pinned file layout, the
registry of named tuple types, like=, and the errors for bad trees."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import funcmodels as fm
from funcmodels.checkpoint import _registry

nn = fm.nn

DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.uint32,
    torch.int64,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def same(a, b, path="root"):
    """Exactly equal: the same types all the way down, tensors bit for bit (NaNs included),
    floats by their bits."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.requires_grad) == (b.dtype, b.shape, b.requires_grad), path
        bits = lambda t: t.detach().resolve_conj().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(bits(a), bits(b)), path
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), (path, a, b)
    elif isinstance(a, (fm.Params, fm.State)):
        assert a.spec == b.spec, path
        same(a.flat(), b.flat(), path)
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}.{i}")
    else:
        assert a == b, path


class Point(NamedTuple):
    x: object
    y: object


_registry.register(Point, "tests.checkpoint.Point")


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    seed = draw(st.integers(0, 2**31 - 1))
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(
        0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    t = raw.view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # a non-contiguous view
    return t


def leaves():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**200), 2**200),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(width=64).map(lambda x: -x),
        st.text(max_size=8),
        tensors(),
    )


def trees():
    return st.recursive(
        leaves(),
        lambda kids: st.one_of(
            st.lists(kids, max_size=3),
            st.lists(kids, max_size=3).map(tuple),
            st.dictionaries(st.text(max_size=6), kids, max_size=3),
            st.dictionaries(st.text(max_size=6), kids, max_size=3).map(OrderedDict),
            st.tuples(kids, kids).map(lambda xy: Point(*xy)),
        ),
        max_leaves=12,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_any_tree_round_trips_exactly(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("rt") / "c.safetensors"
    fm.checkpoint.save(path, tree)
    same(fm.checkpoint.load(path, like=tree), tree)


def test_nan_payloads_signed_zeros_and_huge_ints_round_trip_exactly(tmp_path):
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF0000000000123))[0]
    tree = {
        "nan": float("nan"),
        "odd_nan": odd_nan,
        "neg_zero": -0.0,
        "inf": [float("inf"), -float("inf")],
        "tiny": 5e-324,
        "big": 2**53 + 1,
        "huge": -(3**300),
        "tensor_nan": torch.tensor([float("nan"), -0.0, float("inf")]),
    }
    fm.checkpoint.save(tmp_path / "c", tree)
    got = fm.checkpoint.load(tmp_path / "c")
    same(got, tree)
    assert got["big"] == 9007199254740993 and type(got["big"]) is int


def test_params_state_keys_and_optimiser_states_round_trip(tmp_path):
    spec = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    params, state = fm.init_with_state(fm.key(0), spec)
    selected, rest = fm.tree.partition(params, lambda path, t: path.startswith("3"))
    opts = [
        fm.optim.adamw(fm.optim.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)),
        fm.optim.chain(fm.optim.clip_by_global_norm(1.0), fm.optim.lion(1e-3)),
        fm.optim.chain(
            fm.optim.scale_by_adam(), fm.optim.inject_hyperparams(fm.optim.scale)(step_size=-0.1)
        ),
        fm.optim.multi_transform(
            {"a": fm.optim.sgd(0.1, momentum=0.9), "b": fm.optim.rmsprop(1e-2, centered=True)},
            lambda p: fm.tree.map_with_path(lambda path, _: "a" if path < "1" else "b", p),
        ),
        fm.optim.multi_steps(fm.optim.adagrad(0.1), every_k=2),
    ]
    x = fm.random.normal(fm.key(1), (5, 3))
    loss = lambda p: fm.apply(p, x, state=state).square().sum()
    grads = torch.func.grad(loss)(params)
    for i, opt in enumerate(opts):
        s = opt.init(params)
        _, s = opt.update(grads, s, params)  # a state past its first step
        tree = {
            "params": params,
            "state": state,
            "opt": s,
            "key": fm.fold_in(fm.key(7), 3),
            "step": 1,
            "frozen": rest,
        }
        fm.checkpoint.save(tmp_path / f"c{i}", tree)
        got = fm.checkpoint.load(tmp_path / f"c{i}", like=tree)
        same(got, tree)
        # the next update from the loaded state is the same, bit for bit
        want_u, want_s = opt.update(grads, s, params)
        got_u, got_s = opt.update(grads, got["opt"], got["params"])
        same(got_u, want_u)
        same(got_s, want_s)
    assert fm.tree.combine(selected, got["frozen"]).spec == spec


def test_the_file_layout_is_pinned(tmp_path):
    spec = nn.Linear(2, 1)
    params = fm.Params(spec, {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])})
    tree = {
        "params": params,
        "opt": (fm.optim.ScaleByScheduleState(count=torch.tensor(3)), fm.optim.EmptyState()),
        "step": 3,
        "lr": 0.1,
        "names": ["a", None, True],
        "shape": (2, 1),
    }
    fm.checkpoint.save(tmp_path / "c", tree)
    with safe_open(tmp_path / "c", framework="pt") as f:
        meta = f.metadata()
        names = sorted(f.keys())
    assert meta["format"] == "funcmodels.checkpoint" and meta["version"] == "1"
    assert json.loads(meta["specs"]) == [
        {"type": "linear", "params": {"in_features": 2, "out_features": 1, "bias": True}}
    ]
    assert json.loads(meta["tree"]) == {
        "dict": {
            "params": {
                "params": 0,
                "entries": {
                    "weight": {"tensor": "params.weight"},
                    "bias": {"tensor": "params.bias"},
                },
            },
            "opt": {
                "tuple": [
                    {
                        "namedtuple": "funcmodels.optim.ScaleByScheduleState",
                        "fields": {"count": {"tensor": "opt.0.count"}},
                    },
                    {"namedtuple": "funcmodels.optim.EmptyState", "fields": {}},
                ]
            },
            "step": {"int": "3"},
            "lr": {"float": "0.1"},
            "names": {"list": ["a", None, True]},
            "shape": {"tuple": [{"int": "2"}, {"int": "1"}]},
        }
    }
    assert names == ["opt.0.count", "params.bias", "params.weight"]
    # the header is padded so the data start 64-byte aligned in the file
    raw = (tmp_path / "c").read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 64 == 0
    # plain safetensors readers read the tensors
    assert torch.equal(load_file(tmp_path / "c")["params.weight"], params["weight"])


def test_loaded_tensors_are_fresh_aligned_and_inputs_untouched(tmp_path):
    base = torch.arange(40, dtype=torch.float32)
    tree = {"view": base[3:11].reshape(2, 4).t(), "same": [base, base], "grad": torch.ones(3)}
    tree["grad"].requires_grad_(True)
    before = base.clone()
    fm.checkpoint.save(tmp_path / "c", tree)
    got = fm.checkpoint.load(tmp_path / "c")
    assert torch.equal(base, before)
    same(got, tree)
    flat = [got["view"], *got["same"], got["grad"]]
    assert all(t.data_ptr() % 64 == 0 for t in flat)
    assert len({t.untyped_storage().data_ptr() for t in flat}) == 4  # no aliasing
    assert got["grad"].requires_grad and got["grad"].is_leaf


@pytest.fixture
def scratch_types(monkeypatch):
    """Named tuple types registered during the test are forgotten after it."""
    monkeypatch.setattr(_registry, "_by_name", dict(_registry._by_name))
    monkeypatch.setattr(_registry, "_by_type", dict(_registry._by_type))


def test_registered_types_only(scratch_types):
    class Mine(NamedTuple):
        a: int

    with pytest.raises(TypeError, match=r"not registered; register it first"):
        fm.checkpoint.save("/nonexistent/never-written", {"s": Mine(1)})
    with pytest.raises(TypeError, match="expected a NamedTuple class"):
        fm.checkpoint.register(dict)
    with pytest.raises(ValueError, match="is taken by"):
        fm.checkpoint.register(Mine, "funcmodels.optim.ScaleByAdamState")
    assert fm.checkpoint.register(Point, "tests.checkpoint.Point") is Point  # again: no-op
    with pytest.raises(ValueError, match="is registered as 'tests.checkpoint.Point' already"):
        fm.checkpoint.register(Point, "other")
    # every named tuple fm.optim exports is known under its public name
    for name in fm.optim.__all__:
        cls = getattr(fm.optim, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and name.endswith("State"):
            assert _registry.resolve(f"funcmodels.optim.{name}") is cls


def test_a_user_type_round_trips_once_registered(tmp_path, scratch_types):
    @fm.checkpoint.register
    class Run(NamedTuple):
        epoch: int
        best: float

    fm.checkpoint.save(tmp_path / "c", [Run(3, 0.25)])
    assert fm.checkpoint.load(tmp_path / "c") == [Run(3, 0.25)]
    assert _registry.name_of(Run).endswith(
        "test_a_user_type_round_trips_once_registered.<locals>.Run"
    )


@pytest.mark.parametrize(
    "tree, error, pattern",
    [
        ({1: torch.zeros(1)}, TypeError, r"has the key 1 \(int\); checkpoint dicts take str keys"),
        ({"a": [object()]}, TypeError, r"'a\.0' is a object; checkpoints hold tensors"),
        ({"f": lambda: 0}, TypeError, r"'f' is a function"),
        ({"s": {1, 2}}, TypeError, r"'s' is a set"),
        ({"m": torch.nn.Linear(1, 1)}, TypeError, r"'m' is a Linear; .* fm.checkpoint.ModuleState"),
        ({"x": torch.zeros(2).to_sparse()}, TypeError, r"'x' is a torch.sparse_coo tensor"),
        ({"x": torch.zeros(2, dtype=torch.float8_e4m3fnuz)}, TypeError, "which safetensors cannot"),
        ({"x": torch.zeros(2, device="meta")}, ValueError, r"'x' is on the meta device"),
    ],
)
def test_trees_that_cannot_be_saved_are_refused_naming_the_path(tmp_path, tree, error, pattern):
    with pytest.raises(error, match=pattern):
        fm.checkpoint.save(tmp_path / "c", tree)
    assert list(tmp_path.iterdir()) == []


def test_deep_trees_are_refused_both_ways(tmp_path):
    deep: list = []
    for _ in range(150):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        fm.checkpoint.save(tmp_path / "c", deep)


LIKE = {
    "w": torch.zeros(2, 3),
    "step": 4,
    "lr": 0.5,
    "opt": (fm.optim.ScaleByScheduleState(count=torch.tensor(1)),),
    "sub": {"a": [1, 2]},
}


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            lambda t: t.update(w=torch.zeros(3, 2)),
            r"at 'w': the file has a float32 tensor of shape \(2, 3\), "
            r"like= has a float32 tensor of shape \(3, 2\)",
        ),
        (
            lambda t: t.update(w=torch.zeros(2, 3, dtype=torch.float64)),
            r"at 'w': .* like= has a float64 tensor",
        ),
        (lambda t: t.update(step=4.0), r"at 'step': the file has a int, like= has a float"),
        (
            lambda t: t["sub"].update(b=1),
            r"at 'sub': keys missing from the file \['b'\], keys only in the file \[\]",
        ),
        (lambda t: t["sub"]["a"].append(3), r"at 'sub\.a': the file has 2 items, like= has 3"),
        (
            lambda t: t.update(opt=(fm.optim.TraceState(trace=torch.tensor(1)),)),
            r"at 'opt\.0': the file has a ScaleByScheduleState, like= has a TraceState",
        ),
    ],
)
def test_like_names_the_first_path_that_differs(tmp_path, change, pattern):
    fm.checkpoint.save(tmp_path / "c", LIKE)
    fm.checkpoint.load(tmp_path / "c", like=LIKE)
    like = {**LIKE, "sub": {"a": [1, 2]}}
    change(like)
    with pytest.raises(ValueError, match=pattern):
        fm.checkpoint.load(tmp_path / "c", like=like)


def test_like_compares_specs_by_layer(tmp_path):
    p = fm.init(fm.key(0), nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    q = fm.init(fm.key(0), nn.Sequential(nn.Linear(2, 3), nn.Tanh()))
    fm.checkpoint.save(tmp_path / "c", {"p": p})
    with pytest.raises(
        ValueError, match=r"at 'p': the specs differ: layer '1': expected Tanh, got ReLU"
    ):
        fm.checkpoint.load(tmp_path / "c", like={"p": q})


def rewrite(src, dst, **changes):
    """A copy of a checkpoint with metadata entries replaced (a tampered file)."""
    with safe_open(src, framework="pt") as f:
        meta = {**f.metadata(), **changes}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, dst, metadata=meta)
    return dst


@pytest.mark.parametrize("name", ["os.system", "never_imported_module_x.Thing", "builtins.eval"])
def test_a_type_named_in_a_file_is_resolved_only_through_the_registry(tmp_path, name):
    fm.checkpoint.save(tmp_path / "c", {"s": fm.optim.EmptyState()})
    tree = {"dict": {"s": {"namedtuple": name, "fields": {}}}}
    bad = rewrite(tmp_path / "c", tmp_path / "t", tree=json.dumps(tree))
    with pytest.raises(
        ValueError, match=rf"t'\): the tree description at 's': the type '{name}' is not registered"
    ):
        fm.checkpoint.load(bad)
    assert "never_imported_module_x" not in sys.modules
