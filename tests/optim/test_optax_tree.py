"""fm.optim.tree against optax.tree 0.2.8, side by side in float64 on a nested tree (dict,
tuple, list, a 0-dim leaf): every function with default and non-default arguments to 1e-10
absolute (values of order 1-10); signatures name for name; the lookups (get/set) on a
state of NamedTuples and dicts, paths compared entry by entry; the random functions by
shape, determinism and statistics (the bits are fm.random's, not JAX's)."""

from __future__ import annotations

import dataclasses
import inspect
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels.optim import tree, tree_utils

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10
D = torch.float64
NAMES = sorted(n for n in dir(optax.tree) if not n.startswith("_"))


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def nested(seed, positive=False):
    """A dict (keys in sorted order, as JAX flattens them) of a matrix, a tuple holding a
    vector and a list with a 0-dim leaf."""
    f = (lambda x: x.abs() + 0.5) if positive else (lambda x: x)
    return {
        "a": f(randn(3, 4, seed=seed)),
        "b": (f(randn(5, seed=seed + 1)), [f(randn(seed=seed + 2)), f(randn(2, 3, seed=seed + 3))]),
    }


def cnested(seed):
    return pytree.tree_map(lambda x: torch.complex(x, randn(*x.shape, seed=seed + 9)), nested(seed))


def _to_jax(obj):
    if isinstance(obj, torch.Tensor):
        return jnp.asarray(obj.numpy())
    if isinstance(obj, torch.dtype):
        return jnp.dtype(str(obj).removeprefix("torch."))
    if isinstance(obj, (dict, list, tuple)):
        return pytree.tree_map(_to_jax, obj, is_leaf=lambda x: isinstance(x, torch.dtype))
    return obj


def assert_same(ours, theirs):
    """Same structure, shapes and values (to TOL) of our tree and optax's."""
    theirs = jax.tree.map(lambda x: torch.from_numpy(np.array(x)), theirs)
    if not isinstance(ours, (dict, list, tuple)):
        ours, theirs = [ours], [theirs]
    assert pytree.tree_structure(ours) == pytree.tree_structure(theirs)
    for a, b in zip(pytree.tree_leaves(ours), pytree.tree_leaves(theirs), strict=True):
        a = torch.as_tensor(a)
        assert a.shape == b.shape
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


X, Y, Z, P = nested(0), nested(10), nested(20), nested(30, positive=True)
C, CY = cnested(0), cnested(10)
F32 = pytree.tree_map(lambda x: x.float(), X)

CASES = {
    "add": ("add", X, Y),
    "add_three": ("add", X, Y, Z),
    "sub": ("sub", X, Y),
    "mul": ("mul", X, Y),
    "div": ("div", X, P),
    "scale": ("scale", 0.3, X),
    "scale_tensor": ("scale", torch.tensor(-1.7, dtype=D), X),
    "add_scale": ("add_scale", X, 0.7, Y),
    "vdot": ("vdot", X, Y),
    "vdot_complex": ("vdot", C, CY),
    "sum": ("sum", X),
    "sum_associative": ("sum", X, True),
    "max": ("max", X),
    "min": ("min", X),
    "size": ("size", X),
    "conj": ("conj", C),
    "real": ("real", C),
    "batch_shape": ("batch_shape", X, (2, 3)),
    "batch_shape_default": ("batch_shape", X),
    "zeros_like": ("zeros_like", X),
    "zeros_like_dtype": ("zeros_like", X, torch.float32),
    "ones_like": ("ones_like", X),
    "ones_like_dtype": ("ones_like", X, torch.int32),
    "full_like": ("full_like", X, 2.5),
    "full_like_dtype": ("full_like", X, 3, torch.int64),
    "clip": ("clip", X, -0.5, 0.4),
    "clip_min": ("clip", X, -0.2),
    "clip_max": ("clip", X, None, 0.1),
    "where_true": ("where", True, X, Y),
    "where_false": ("where", False, X, Y),
    "allclose_near": ("allclose", X, pytree.tree_map(lambda x: x + 1e-9, X)),
    "allclose_far": ("allclose", X, Y),
    "allclose_tol": ("allclose", X, pytree.tree_map(lambda x: x * 1.01, X), 0.02, 0.0),
    "update_moment": ("update_moment", X, Y, 0.9, 2),
    "update_moment_1": ("update_moment", X, Y, 0.8, 1),
    "update_infinity_moment": ("update_infinity_moment", X, P, 0.9, 1e-3),
    "update_moment_per_elem_norm": ("update_moment_per_elem_norm", X, P, 0.9, 2),
    "update_moment_per_elem_norm_complex": ("update_moment_per_elem_norm", C, P, 0.9, 2),
    "bias_correction": ("bias_correction", X, 0.9, 3),
    "cast": ("cast", X, torch.float32),
    "cast_none": ("cast", X, None),
    "cast_like": ("cast_like", X, F32),
    "dtype": ("dtype", X),
    "dtype_promote": ("dtype", {"a": X["a"], "f": F32["a"]}, "promote"),
    "dtype_highest": ("dtype", {"a": X["a"], "f": F32["a"]}, "highest"),
    "dtype_lowest": ("dtype", {"a": X["a"], "f": F32["a"]}, "lowest"),
    "dtype_empty": ("dtype", {}),
}
for _ord in (None, 1, 2, float("inf"), "inf", "infinity"):
    for _sq in (False, True):
        CASES[f"norm_{_ord}_{_sq}"] = ("norm", X, _ord, _sq)
CASES["norm_complex"] = ("norm", C)
CASES["norm_complex_1"] = ("norm", C, 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax(case):
    name, *args = CASES[case]
    ours = getattr(tree, name)(*args)
    theirs = getattr(optax.tree, name)(*[_to_jax(a) for a in args])
    if name == "dtype":
        # an empty tree: each library's default dtype (JAX's is float64 under x64)
        assert ours == (
            torch.get_default_dtype() if case == "dtype_empty" else _to_torch_dtype(theirs)
        )
    elif name == "size":
        assert ours == theirs == 24
    else:
        assert_same(ours, theirs)


def _to_torch_dtype(d):
    return getattr(torch, np.dtype(d).name)


def test_max_min_of_empty_and_int_trees():
    """optax reduces from -inf/inf: an empty tree gives them, integer leaves give floats."""
    assert tree.max({}) == -float("inf") and tree.min([]) == float("inf")
    ints = {"a": torch.tensor([3, -4]), "b": torch.zeros(0)}
    assert tree.max(ints).is_floating_point() and tree.max(ints) == 3
    assert tree.min(ints) == -4
    assert float(optax.tree.max({"a": jnp.array([3, -4])})) == 3


# --- lookups by key -------------------------------------------------------------------

Adam = namedtuple("Adam", "count mu nu")
Hyper = namedtuple("Hyper", "count hyperparams inner_state")


def state(lib_tensor):
    t = lib_tensor
    return Hyper(
        count=t(1.0),
        hyperparams={"b1": t(0.9), "learning_rate": t(0.1)},
        inner_state=(Adam(count=t(3.0), mu={"w": t([1.0, 2.0])}, nu={"w": t([3.0, 4.0])}), {}),
    )


def _torch_t(v):
    return torch.tensor(v, dtype=D)


def _jax_t(v):
    return jnp.asarray(v, dtype=jnp.float64)


def _path(path):
    """A path of either library as plain tuples, entry by entry."""
    out = []
    for e in path:
        if hasattr(e, "tuple_name"):
            out.append(("nt", e.tuple_name, e.name))
        elif hasattr(e, "key"):
            out.append(("key", e.key))
        elif hasattr(e, "idx"):
            out.append(("idx", e.idx))
        else:
            out.append(("attr", e.name))
    return tuple(out)


def _adam_only(path, value):
    return getattr(path[-1], "tuple_name", None) == "Adam"


@pytest.mark.parametrize(
    "key,filtering",
    [("count", None), ("mu", None), ("learning_rate", None), ("Adam", None)]
    + [("count", _adam_only), ("w", None), ("absent", None)],
)
def test_get_all_with_path_matches_optax(key, filtering):
    ours = tree.get_all_with_path(state(_torch_t), key, filtering)
    theirs = optax.tree.get_all_with_path(state(_jax_t), key, filtering)
    assert [_path(p) for p, _ in ours] == [_path(p) for p, _ in theirs]
    assert len(ours) == len(theirs)
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        assert_same(a, b)


def test_get_matches_optax():
    s, js = state(_torch_t), state(_jax_t)
    assert_same(tree.get(s, "mu"), optax.tree.get(js, "mu"))
    assert_same(
        tree.get(s, "count", filtering=_adam_only),
        optax.tree.get(js, "count", filtering=_adam_only),
    )
    assert tree.get(s, "absent", default=5) == optax.tree.get(js, "absent", default=5) == 5
    with pytest.raises(KeyError, match="several values for 'count'"):
        tree.get(s, "count")
    with pytest.raises(KeyError):
        optax.tree.get(js, "count")


@pytest.mark.parametrize(
    "filtering,kwargs",
    [
        (None, {"count": 7.0}),
        (_adam_only, {"count": 7.0}),
        (None, {"learning_rate": 0.5, "w": -1.0}),
        (None, {"Adam": "adam"}),
    ],
)
def test_set_matches_optax(filtering, kwargs):
    def new(t):
        return {k: (t(v) if isinstance(v, float) else v) for k, v in kwargs.items()}

    ours = tree.set(state(_torch_t), filtering, **new(_torch_t))
    theirs = optax.tree.set(state(_jax_t), filtering, **new(_jax_t))
    theirs = jax.tree.map(
        lambda x: x if isinstance(x, str) else torch.from_numpy(np.array(x)), theirs
    )
    assert pytree.tree_structure(ours) == pytree.tree_structure(theirs)
    for a, b in zip(pytree.tree_leaves(ours), pytree.tree_leaves(theirs), strict=True):
        if isinstance(a, str):
            assert a == b
        else:
            torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_set_keeps_types_and_refuses_unknown_keys():
    s = state(_torch_t)
    out = tree.set(s, count=_torch_t(9.0))
    assert type(out) is Hyper and type(out.inner_state[0]) is Adam
    # as optax: a match is replaced in its node and the dicts and NamedTuples below it, not
    # below a plain tuple (the Adam state in inner_state keeps its count)
    assert out.count == 9.0 and out.inner_state[0].count == 3.0
    assert s.count == 1.0 and s.inner_state[0].count == 3.0, "input changed"
    with pytest.raises(KeyError, match="no value matches 'absent'"):
        tree.set(s, absent=1.0)
    with pytest.raises(KeyError, match="given the filtering"):
        tree.set(s, lambda p, v: False, count=1.0)


# --- signatures and names -------------------------------------------------------------


def _default(value):
    """optax's default as ours: its sampler ``jax.random.normal`` is ``fm.random.normal``."""
    return fm.random.normal if value is jax.random.normal else value


@pytest.mark.parametrize("name", NAMES)
def test_signatures_match_optax(name):
    ours = inspect.signature(getattr(tree, name)).parameters
    theirs = inspect.signature(getattr(optax.tree, name)).parameters
    assert list(ours) == list(theirs)
    for key, p in theirs.items():
        q = ours[key]
        assert q.kind == p.kind, key
        assert _default(p.default) == q.default or p.default is q.default, (key, q.default)


def test_names_are_optax_names():
    assert sorted(tree.__all__) == NAMES and len(NAMES) == 35
    theirs = sorted(n for n in dir(optax.tree_utils) if n.startswith("tree_"))
    assert sorted(n for n in tree_utils.__all__ if n.startswith("tree_")) == theirs
    for name in theirs:
        assert getattr(tree_utils, name) is getattr(tree, name.removeprefix("tree_"))
    assert tree.map_params is fm.optim.tree_map_params
    assert tree.update_moment is fm.optim.update_moment
    assert [f.name for f in dataclasses.fields(tree_utils.NamedTupleKey)] == [
        "tuple_name",
        "name",
    ]
    assert str(tree_utils.NamedTupleKey("Adam", "mu")) == str(
        optax.tree_utils.NamedTupleKey("Adam", "mu")
    )


def test_map_params_matches_optax_on_adam():
    """The moments (trees like the params) get ``p + y``; the counts stay."""
    ours = tree.map_params(
        fm.optim.adam(0.1), lambda p, y: p + 2 * y, fm.optim.adam(0.1).init(Y), X
    )
    opt = optax.adam(0.1)
    theirs = optax.tree.map_params(opt, lambda p, y: p + 2 * y, opt.init(_to_jax(Y)), _to_jax(X))
    assert_same(ours[0].mu, theirs[0].mu)
    assert_same(ours[0].nu, theirs[0].nu)
    assert int(ours[0].count) == int(theirs[0].count) == 0


# --- random trees ---------------------------------------------------------------------


def test_split_key_like_gives_distinct_keys_per_leaf():
    keys = tree.split_key_like(fm.random.key(0), X)
    assert pytree.tree_structure(keys) == pytree.tree_structure(X)
    flat = pytree.tree_leaves(keys)
    assert all(k.shape == (2,) and k.dtype == torch.int64 for k in flat)
    assert len({tuple(k.tolist()) for k in flat}) == len(flat) == 4
    again = pytree.tree_leaves(tree.split_key_like(fm.random.key(0), X))
    assert all(torch.equal(a, b) for a, b in zip(flat, again, strict=True))
    assert tree.split_key_like(fm.random.key(0), {}) == {}


def test_random_like_shapes_dtypes_determinism_and_statistics():
    target = {
        "big": torch.zeros(200, 100, dtype=D),
        "small": (torch.zeros((), dtype=torch.float32),),
    }
    out = tree.random_like(fm.random.key(1), target)
    assert out["big"].shape == (200, 100) and out["big"].dtype == D
    assert out["small"][0].shape == () and out["small"][0].dtype == torch.float32
    # 20000 standard normal draws: mean within 5 sigma (0.035), std within 0.03 of 1
    assert abs(float(out["big"].mean())) < 0.035 and abs(float(out["big"].std()) - 1) < 0.03
    again = tree.random_like(fm.random.key(1), target)
    assert torch.equal(out["big"], again["big"]) and torch.equal(out["small"][0], again["small"][0])
    other = tree.random_like(fm.random.key(2), target)
    assert not torch.equal(out["big"], other["big"])
    uni = tree.random_like(fm.random.key(1), target, fm.random.uniform, torch.float32)
    assert uni["big"].dtype == torch.float32 and 0 <= float(uni["big"].min())
    assert float(uni["big"].max()) < 1 and abs(float(uni["big"].mean()) - 0.5) < 0.01


def test_unwrap_random_key_data_keeps_keys_and_leaves():
    t = {"key": fm.random.key(3), "x": X["a"]}
    out = tree.unwrap_random_key_data(t)
    assert torch.equal(out["key"], t["key"]) and torch.equal(out["x"], t["x"])


# --- bad input and no mutation --------------------------------------------------------


def test_bad_input_is_refused_clearly():
    with pytest.raises(
        ValueError, match=r"vdot: leaves of one shape expected, got \(2,\) and \(3,\)"
    ):
        tree.vdot([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(ValueError, match="norm: ord must be None, 1, 2 or inf, got 3"):
        tree.norm(X, 3)
    with pytest.raises(ValueError, match=r"expected dtype=torch.float64 for \['f'\] but got"):
        tree.dtype({"a": X["a"], "f": F32["a"]})
    with pytest.raises(ValueError, match="mixed_dtype_handler must be None, 'promote'"):
        tree.dtype(X, "largest")
    with pytest.raises(ValueError, match="cannot order torch.uint8 and torch.int8"):
        tree.dtype([torch.zeros(1, dtype=torch.uint8), torch.zeros(1, dtype=torch.int8)], "highest")
    with pytest.raises(TypeError, match="cast: dtype must be a torch.dtype or None, got 'float32'"):
        tree.cast(X, "float32")
    with pytest.raises(TypeError, match="split_key_like: rng_key: expected a PRNG key"):
        tree.split_key_like(0, X)


def _calls():
    return [
        lambda t, u: tree.add(t, u, t),
        tree.sub,
        tree.mul,
        lambda t, u: tree.add_scale(t, 0.5, u),
        lambda t, u: tree.scale(2.0, t),
        tree.vdot,
        lambda t, u: tree.norm(t, 1, True),
        lambda t, u: tree.clip(t, -0.1, 0.1),
        lambda t, u: tree.clip(t),
        lambda t, u: tree.where(True, t, u),
        lambda t, u: tree.update_moment(t, u, 0.9, 2),
        lambda t, u: tree.update_infinity_moment(t, u, 0.9, 1e-8),
        lambda t, u: tree.bias_correction(t, 0.9, 2),
        lambda t, u: tree.cast(t, torch.float32),
        lambda t, u: tree.real(t),
        lambda t, u: tree.conj(t),
        lambda t, u: tree.full_like(t, torch.tensor(2.0)),
        lambda t, u: tree.set({"x": t, "y": u}, x=u),
    ]


@pytest.mark.parametrize("i", range(len(_calls())))
def test_nothing_is_mutated(i):
    t, u = nested(0), nested(10)
    t_copy, u_copy = pytree.tree_map(torch.clone, t), pytree.tree_map(torch.clone, u)
    out = _calls()[i](t, u)
    for leaf in pytree.tree_leaves(out):
        if isinstance(leaf, torch.Tensor) and leaf.numel() and not leaf.is_complex():
            # results are fresh tensors (other than the leaves passed in as they are, as
            # set's new values and cast's same-dtype leaves): writing them leaves the inputs
            if leaf.data_ptr() not in {x.data_ptr() for x in pytree.tree_leaves((t, u))}:
                leaf.add_(1.0)
    for a, b in zip(pytree.tree_leaves((t, u)), pytree.tree_leaves((t_copy, u_copy)), strict=True):
        assert torch.equal(a, b)


def test_params_and_fm_optimiser_states():
    """Params are trees like any other; an fm.optim state is searched as optax's is."""
    p = fm.init(fm.random.key(0), fm.nn.Linear(3, 2))
    flat = torch.cat([x.reshape(-1) for x in pytree.tree_leaves(p)])
    assert type(tree.add(p, p)) is type(p)
    torch.testing.assert_close(tree.norm(p), flat.norm(), atol=1e-6, rtol=0)
    torch.testing.assert_close(tree.vdot(p, p), flat @ flat, atol=1e-6, rtol=0)
    s = fm.optim.adam(0.1).init(p)
    assert tree.get(s, "mu") is s[0].mu
    [(path, count)] = tree.get_all_with_path(s, "count")
    assert str(path[-1]) == "ScaleByAdamState.count" and count is s[0].count
    s2 = tree.set(s, count=torch.tensor(5, dtype=torch.int32))
    assert int(s2[0].count) == 5 and int(s[0].count) == 0 and s2[0].nu is s[0].nu
