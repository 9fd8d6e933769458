"""The core: Params/State pytrees, init, apply, ensembles, derivatives, state_dict I/O, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optree
import pytest
import scipy.stats
import torch
import torch.utils._pytree as pytree
from torch.func import hessian, jacrev, vmap

import funcmodels as fm
from tests.helpers import torch_twin

nn = torch.nn


@dataclass(frozen=True)
class _Shift(fm.Spec):
    """A minimal stateful layer: adds a buffer to its input (no parameters)."""

    n: int = 3

    def state_shapes(self):
        return {"shift": ((self.n,), None)}

    def init_state(self, key, *, dtype, device):
        return {"shift": torch.arange(self.n, dtype=dtype, device=device)}

    def forward(self, ctx, x):
        return x + ctx.buffer("shift")


def _mlp(out: int = 2) -> fm.Spec:
    return fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.ReLU(), fm.nn.Linear(4, out))


def _torch_mlp(out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, out))


def _cnn() -> fm.Spec:
    return fm.nn.Sequential(
        fm.nn.Conv2d(1, 2, 3), fm.nn.ReLU(), fm.nn.Flatten(), fm.nn.Linear(2 * 4 * 4, 3)
    )


def _torch_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def _equal_trees(a, b) -> bool:
    fa, fb = fm.to_state_dict(a), fm.to_state_dict(b)
    return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def _member(tree, i: int):
    return pytree.tree_map(lambda t: t[i], tree)


# -- Params / State as pytrees -----------------------------------------------------------


def test_pytree_leaves_follow_state_dict_order():
    params = fm.init(fm.key(0), _mlp())
    names = list(_torch_mlp().state_dict())
    assert list(fm.to_state_dict(params)) == names
    want = [params[n] for n in names]
    for leaves in (pytree.tree_flatten(params)[0], optree.tree_flatten(params)[0]):
        assert len(leaves) == len(want)
        assert all(a is b for a, b in zip(leaves, want, strict=True))


def test_torch_tree_map_keeps_spec_and_names():
    params = fm.init(fm.key(0), _mlp())
    doubled = pytree.tree_map(lambda t: 2 * t, params)
    assert isinstance(doubled, fm.Params) and doubled.spec == params.spec
    assert list(fm.to_state_dict(doubled)) == list(fm.to_state_dict(params))
    assert torch.equal(doubled["2.bias"], 2 * params["2.bias"])
    paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(params)[0]]
    assert paths == [f"[{n!r}]" for n in fm.to_state_dict(params)]


def test_optree_map_keeps_spec_and_names():
    params = fm.init(fm.key(0), _mlp())
    doubled = optree.tree_map(lambda t: 2 * t, params)
    assert isinstance(doubled, fm.Params) and doubled.spec == params.spec
    assert list(fm.to_state_dict(doubled)) == list(fm.to_state_dict(params))
    assert torch.equal(doubled["0.weight"], 2 * params["0.weight"])


def test_indexing_iteration_and_len():
    spec = _mlp()
    params = fm.init(fm.key(0), spec)
    assert params["0"]["weight"] is params["0.weight"]
    sub = params["0"]
    assert isinstance(sub, fm.Params) and sub.spec == spec["0"]
    assert list(sub) == ["weight", "bias"] and len(sub) == 2
    assert list(params) == ["0", "2"] and len(params) == 2  # the ReLU has no params
    assert dict(params.items()).keys() == {"0", "2"}


def test_nested_indexing():
    spec = fm.nn.Sequential({"body": _mlp(), "head": fm.nn.Linear(2, 1)})
    params = fm.init(fm.key(0), spec)
    assert params["body"]["2"]["bias"] is params["body.2.bias"]
    assert params["body.2"].spec == spec["body"]["2"]
    assert list(params) == ["body", "head"]


def test_key_error_names_the_available_entries():
    params = fm.init(fm.key(0), _mlp())
    with pytest.raises(KeyError, match=r"no entry '1'; entries: \['0', '2'\]"):
        params["1"]
    with pytest.raises(KeyError, match=r"no entry 'kernel'; entries: \['weight', 'bias'\]"):
        params["0"]["kernel"]
    # A Sequential index given as an int (spec[0] works on specs) is a missing name too.
    with pytest.raises(KeyError, match=r"no entry 0.*entries: \['0', '2'\]"):
        params[0]
    assert 0 not in params and "0" in params


def test_state_is_a_pytree_too():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 3), _Shift(3))
    _, state = fm.init_with_state(fm.key(0), spec)
    leaves, treespec = pytree.tree_flatten(state)
    assert [t.tolist() for t in leaves] == [[0.0, 1.0, 2.0]]
    back = pytree.tree_unflatten([leaves[0] + 1], treespec)
    assert isinstance(back, fm.State) and back.spec == spec
    assert back["1"]["shift"].tolist() == [1.0, 2.0, 3.0]


# -- init --------------------------------------------------------------------------------


def test_same_key_same_params_different_keys_differ():
    spec = _cnn()
    a, b = fm.init(fm.key(3), spec), fm.init(fm.key(3), spec)
    assert _equal_trees(a, b)
    c = fm.init(fm.key(4), spec)
    for name in fm.to_state_dict(a):
        assert not torch.equal(a[name], c[name]), name


def test_params_of_different_layers_and_tensors_differ():
    # Each layer and each tensor gets its own key: equal shapes must not get equal values.
    spec = fm.nn.Sequential(fm.nn.Linear(4, 4), fm.nn.Linear(4, 4))
    p = fm.init(fm.key(0), spec)
    assert not torch.equal(p["0.weight"], p["1.weight"])
    assert not torch.equal(p["0.bias"], p["1.bias"])
    assert not torch.equal(p["0.weight"][0], p["0.bias"])


def test_adding_a_sibling_keeps_existing_params():
    old = fm.nn.Sequential({"a": fm.nn.Linear(3, 4), "b": fm.nn.Linear(4, 2)})
    new = fm.nn.Sequential(
        {"a": fm.nn.Linear(3, 4), "extra": fm.nn.Linear(4, 4), "b": fm.nn.Linear(4, 2)}
    )
    po, pn = fm.init(fm.key(5), old), fm.init(fm.key(5), new)
    assert _equal_trees(po["a"], pn["a"])
    assert _equal_trees(po["b"], pn["b"])


def test_init_dtype_float64_matches_torch_in_float64():
    spec = _mlp()
    params = fm.init(fm.key(6), spec, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in pytree.tree_leaves(params))
    module = torch_twin(_torch_mlp().double(), params)
    x = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3)
    torch.testing.assert_close(fm.apply(params, x), module(x), atol=0, rtol=0)


def test_init_matches_torch_default_distribution():
    # torch.nn.Linear: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
    params = fm.init(fm.key(7), fm.nn.Linear(100, 200))
    bound = 100**-0.5
    for name in ("weight", "bias"):
        t = params[name].double()
        assert t.abs().max() <= bound
        ks = scipy.stats.kstest(t.flatten().numpy(), "uniform", args=(-bound, 2 * bound))
        assert ks.pvalue > 1e-3, name


def test_stateless_model_has_empty_state():
    spec = _mlp()
    params, state = fm.init_with_state(fm.key(0), spec)
    assert isinstance(state, fm.State) and state.spec == spec
    assert len(state) == 0 and pytree.tree_leaves(state) == []
    assert _equal_trees(params, fm.init(fm.key(0), spec))
    assert list(fm.to_state_dict(params, state)) == list(fm.to_state_dict(params))


@pytest.mark.slow
def test_same_params_in_a_fresh_process():
    # Child names are folded in with CRC32; a salted hash() would change with the seed.
    code = (
        "import funcmodels as fm; from tests.test_core import _cnn; "
        "p = fm.init(fm.key(8), _cnn()); "
        "print({n: t.tolist() for n, t in fm.to_state_dict(p).items()})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    )
    here = fm.to_state_dict(fm.init(fm.key(8), _cnn()))
    assert res.stdout.strip() == repr({n: t.tolist() for n, t in here.items()})


# -- known answers -----------------------------------------------------------------------
# Values drawn with the current key streams, pasted in as numbers: a change of how init
# derives a layer's key from its path, or of the draws themselves, must be a deliberate
# change of these lists. Each float literal is exactly a float32 value.


def _assert_leading_values(params: fm.Params, want: dict[str, list[float]]) -> None:
    got = fm.to_state_dict(params)
    assert list(got) == list(want)
    for name, values in want.items():
        assert got[name].dtype == torch.float32, name
        leading = got[name].flatten()[: len(values)]
        torch.testing.assert_close(leading, torch.tensor(values), atol=0, rtol=0, msg=name)


def test_known_init_of_a_small_mlp():
    spec = fm.nn.Sequential(fm.nn.Linear(2, 3), fm.nn.ReLU(), fm.nn.Linear(3, 1))
    want = {
        "0.weight": [
            -0.08078312873840332,
            0.6626964211463928,
            0.09298461675643921,
            -0.3063088655471802,
        ],
        "0.bias": [-0.2842809855937958, -0.08540284633636475, 0.48672741651535034],
        "2.weight": [0.009495437145233154, 0.07604360580444336, -0.5568001866340637],
        "2.bias": [-0.29578515887260437],
    }
    _assert_leading_values(fm.init(fm.key(0), spec), want)


def test_known_init_of_nested_layers():
    # 'a.b.0' is three levels down: every name on the path is folded into its key.
    spec = fm.nn.Sequential(
        {
            "a": fm.nn.Sequential({"b": fm.nn.Sequential(fm.nn.Linear(2, 2))}),
            "c": fm.nn.Sequential(fm.nn.Linear(2, 2)),
        }
    )
    want = {
        "a.b.0.weight": [
            0.5588708519935608,
            -0.49671897292137146,
            0.36418694257736206,
            0.22885668277740479,
        ],
        "a.b.0.bias": [-0.5425052046775818, 0.16710948944091797],
        "c.0.weight": [
            -0.4567614197731018,
            0.1921202540397644,
            -0.06414860486984253,
            -0.08405411243438721,
        ],
        "c.0.bias": [0.44891661405563354, 0.4548303484916687],
    }
    _assert_leading_values(fm.init(fm.key(0), spec), want)


def test_same_leaf_name_under_different_parents_gets_different_params():
    # '0.0' and '1.0' share the leaf name; 'a.x' and 'b.x' too.
    inner = fm.nn.Sequential(fm.nn.Linear(4, 4))
    p = fm.init(fm.key(0), fm.nn.Sequential(inner, inner))
    assert not torch.equal(p["0.0.weight"], p["1.0.weight"])
    named = fm.nn.Sequential(
        {
            "a": fm.nn.Sequential({"x": fm.nn.Linear(4, 4)}),
            "b": fm.nn.Sequential({"x": fm.nn.Linear(4, 4)}),
        }
    )
    q = fm.init(fm.key(0), named)
    assert not torch.equal(q["a.x.weight"], q["b.x.weight"])


# -- ensembles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_spec", "x"),
    [(_mlp, torch.linspace(-2, 2, 15).reshape(5, 3)), (_cnn, torch.rand(5, 1, 6, 6))],
    ids=["mlp", "cnn"],
)
def test_vmapped_init_is_an_ensemble_of_inits(make_spec, x):
    spec = make_spec()
    keys = fm.split(fm.key(9), 4)
    ens = vmap(fm.init, in_dims=(0, None))(keys, spec)
    assert isinstance(ens, fm.Params) and ens.spec == spec
    members = [fm.init(k, spec) for k in keys]
    for i, member in enumerate(members):
        assert _equal_trees(_member(ens, i), member), i
    assert not _equal_trees(members[0], members[1])
    # A vmapped apply over the ensemble equals a loop of applies (batched matmul may
    # round differently, hence the float32 tolerance).
    got = vmap(fm.apply, in_dims=(0, None))(ens, x)
    want = torch.stack([fm.apply(m, x) for m in members])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# -- derivatives -------------------------------------------------------------------------


def _smooth_mlp_f64():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 5), fm.nn.Tanh(), fm.nn.Linear(5, 2))
    params = fm.init(fm.key(10), spec, dtype=torch.float64)
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    return spec, params, x


def _as_function_of_leaves(params, f):
    names = list(fm.to_state_dict(params))

    def g(*leaves):
        return f(fm.Params(params.spec, dict(zip(names, leaves, strict=True))))

    return names, tuple(params[n] for n in names), g


def test_jacrev_wrt_input_matches_finite_differences():
    _, params, x = _smooth_mlp_f64()
    jac = jacrev(lambda xx: fm.apply(params, xx))(x)  # (4, 2, 4, 3)
    eps = 1e-6
    fd = torch.empty_like(jac)
    for idx in torch.cartesian_prod(torch.arange(4), torch.arange(3)).tolist():
        dx = torch.zeros_like(x)
        dx[tuple(idx)] = eps
        fd[:, :, idx[0], idx[1]] = (fm.apply(params, x + dx) - fm.apply(params, x - dx)) / (2 * eps)
    # Central differences in float64 are accurate to about eps**2 + 1e-16 / eps.
    torch.testing.assert_close(jac, fd, atol=1e-8, rtol=1e-6)


def test_jacrev_wrt_params_matches_autograd():
    _, params, x = _smooth_mlp_f64()
    jac = jacrev(lambda p: fm.apply(p, x))(params)
    names, leaves, g = _as_function_of_leaves(params, lambda p: fm.apply(p, x))
    ref = torch.autograd.functional.jacobian(g, leaves)
    for n, r in zip(names, ref, strict=True):
        torch.testing.assert_close(jac[n], r, atol=1e-12, rtol=1e-10, msg=n)


def test_hessian_wrt_params_and_input_matches_autograd():
    _, params, x = _smooth_mlp_f64()
    y = torch.ones(4, 2, dtype=torch.float64)

    def loss(p, xx):
        return ((fm.apply(p, xx) - y) ** 2).sum()

    h = hessian(loss)(params, x)
    names, leaves, g = _as_function_of_leaves(params, lambda p: loss(p, x))
    ref = torch.autograd.functional.hessian(g, leaves)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            torch.testing.assert_close(h[a][b], ref[i][j], atol=1e-12, rtol=1e-10)
    hx = hessian(loss, argnums=1)(params, x)
    ref_x = torch.autograd.functional.hessian(lambda xx: loss(params, xx), x)
    torch.testing.assert_close(hx, ref_x, atol=1e-12, rtol=1e-10)


# -- apply -------------------------------------------------------------------------------


def test_unbatched_conv_example_equals_batch_of_one():
    params = fm.init(fm.key(11), _cnn())
    xb = torch.rand(3, 1, 6, 6)
    for i in range(3):
        one = fm.apply(params, xb[i])
        assert one.shape == (3,)
        torch.testing.assert_close(one, fm.apply(params, xb[i : i + 1])[0], atol=0, rtol=0)
    per_sample = vmap(lambda xi: fm.apply(params, xi))(xb)
    torch.testing.assert_close(per_sample, fm.apply(params, xb), atol=1e-6, rtol=1e-5)


def test_apply_matches_torch_cnn():
    params = fm.init(fm.key(12), _cnn())
    module = torch_twin(_torch_cnn(), params)
    x = torch.rand(4, 1, 6, 6)
    torch.testing.assert_close(fm.apply(params, x), module(x), atol=0, rtol=0)


def test_apply_never_mutates_inputs():
    spec = fm.nn.Sequential(
        fm.nn.Conv2d(1, 2, 3),
        fm.nn.ReLU(),
        fm.nn.BatchNorm2d(2),
        fm.nn.Dropout(0.5),
        fm.nn.Flatten(),
        fm.nn.Linear(2 * 4 * 4, 3),
    )
    params, state = fm.init_with_state(fm.key(13), spec)
    x = torch.randn(4, 1, 6, 6)
    key = fm.key(14)
    before = [t.clone() for t in (x, key, *pytree.tree_leaves((params, state)))]
    fm.apply(params, x, state=state)
    out = fm.run(params, x, state=state, key=key, train=True)
    after = [x, key, *pytree.tree_leaves((params, state))]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert isinstance(out.state, fm.State) and out.state.spec == spec


# -- state_dict conversion ---------------------------------------------------------------


def _bn_pair():
    spec = fm.nn.Sequential(fm.nn.Conv2d(1, 2, 3), fm.nn.BatchNorm2d(2), fm.nn.ReLU())
    return spec, nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())


# name -> (spec and torch module of the same layout, one batch's input shape)
_PAIRS = {
    "mlp": (lambda: (_mlp(), _torch_mlp()), (2, 3)),
    "cnn": (lambda: (_cnn(), _torch_cnn()), (2, 1, 6, 6)),
    "bn": (_bn_pair, (2, 1, 6, 6)),
}


@pytest.mark.parametrize("name", list(_PAIRS))
def test_state_dict_keys_and_round_trip(name):
    spec, module = _PAIRS[name][0]()
    params, state = fm.init_with_state(fm.key(15), spec)
    sd = fm.to_state_dict(params, state)
    assert list(sd) == list(module.state_dict())
    p2, s2 = fm.from_state_dict(spec, sd)
    assert p2.spec == spec and s2.spec == spec
    sd2 = fm.to_state_dict(p2, s2)
    assert list(sd2) == list(sd)
    assert all(torch.equal(sd[k], sd2[k]) and sd[k].dtype == sd2[k].dtype for k in sd)


@pytest.mark.parametrize("name", list(_PAIRS))
def test_loading_a_torch_state_dict_gives_equal_outputs(name):
    make, shape = _PAIRS[name]
    spec, module = make()
    with torch.no_grad():  # non-trivial buffers, so running stats are really used
        for buf in module.buffers():
            if buf.is_floating_point():
                buf.copy_(torch.linspace(0.5, 1.5, buf.numel()).reshape(buf.shape))
    module.eval()
    params, state = fm.from_state_dict(spec, module.state_dict())
    x = torch.rand(shape)
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=0, rtol=0)


def test_from_state_dict_copies():
    module = _torch_mlp()
    sd = module.state_dict()
    params, _ = fm.from_state_dict(_mlp(), sd)
    kept = fm.to_state_dict(pytree.tree_map(torch.clone, params))
    with torch.no_grad():
        for t in sd.values():
            t.add_(1.0)
    assert _equal_trees(params, fm.Params(params.spec, kept))


def test_from_state_dict_lists_every_problem():
    sd = dict(_torch_mlp().state_dict())
    del sd["0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["2.weight"] = torch.zeros(3, 4)
    sd["0.weight"] = torch.zeros(4, 3, dtype=torch.int64)
    with pytest.raises(ValueError) as info:
        fm.from_state_dict(_mlp(), sd)
    msg = str(info.value)
    assert "missing entries: ['0.bias']" in msg
    assert "unexpected entries: ['extra.weight']" in msg
    assert "'2.weight': expected shape (2, 4), got (3, 4)" in msg
    assert "'0.weight': expected a floating dtype, got torch.int64" in msg


def test_from_state_dict_bad_arguments():
    with pytest.raises(TypeError, match="expected a layer spec"):
        fm.from_state_dict({"0.weight": torch.zeros(1)}, _mlp())
    with pytest.raises(TypeError, match="expected a mapping of names to tensors, got list"):
        fm.from_state_dict(_mlp(), [torch.zeros(1)])
    sd = dict(_torch_mlp().state_dict())
    sd["0.bias"] = [0.0] * 4
    with pytest.raises(ValueError, match="'0.bias': expected a tensor, got list"):
        fm.from_state_dict(_mlp(), sd)


# -- errors ------------------------------------------------------------------------------


def test_apply_rejects_a_dict_of_params():
    params = fm.init(fm.key(0), _mlp())
    with pytest.raises(TypeError, match="expected Params from fm.init.*got dict"):
        fm.apply(fm.to_state_dict(params), torch.zeros(2, 3))


def test_apply_rejects_a_non_key():
    params = fm.init(fm.key(0), _mlp())
    with pytest.raises(TypeError, match=r"key: expected a PRNG key.*got int"):
        fm.apply(params, torch.zeros(2, 3), key=0, train=True)
    with pytest.raises(TypeError, match=r"PRNG key.*float32 tensor of shape \(2,\)"):
        fm.apply(params, torch.zeros(2, 3), key=torch.zeros(2), train=True)


def test_stateful_spec_without_state_names_the_layer_and_the_fix():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 3), _Shift(3))
    params, state = fm.init_with_state(fm.key(0), spec)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"layer '1' \(_Shift\): has state.*fm.init_with_state"):
        fm.apply(params, x)
    want = (params["0.bias"] + torch.arange(3.0)).expand(2, 3)
    torch.testing.assert_close(fm.apply(params, x, state=state), want, atol=0, rtol=0)


def test_batchnorm_without_state_names_the_layer():
    spec, _ = _bn_pair()
    params = fm.init(fm.key(0), spec)
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm2d\).*fm.init_with_state"):
        fm.apply(params, torch.zeros(2, 1, 6, 6))


def test_check_params_names_where_specs_differ():
    params = fm.init(fm.key(0), _mlp(out=2))
    fm.check_params(_mlp(out=2), params)  # equal specs pass
    with pytest.raises(ValueError, match=r"different spec: layer '2'.*out_features=3"):
        fm.check_params(_mlp(out=3), params)
    other = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.Tanh(), fm.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '1': expected Tanh, got ReLU"):
        fm.check_params(other, params)
    shorter = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.ReLU())
    with pytest.raises(ValueError, match="expected 3 layers, got 4"):
        fm.check_params(shorter, params)
    with pytest.raises(TypeError, match="expected Params, got dict"):
        fm.check_params(_mlp(), {})


def test_state_of_another_spec_names_where_specs_differ():
    spec_a = fm.nn.Sequential(fm.nn.Linear(3, 3), _Shift(3))
    spec_b = fm.nn.Sequential(fm.nn.Linear(3, 3), _Shift(3), fm.nn.ReLU())
    params_a = fm.init(fm.key(0), spec_a)
    _, state_b = fm.init_with_state(fm.key(0), spec_b)
    with pytest.raises(ValueError, match="state belongs to a different spec.*3 layers, got 4"):
        fm.apply(params_a, torch.zeros(2, 3), state=state_b)
    with pytest.raises(TypeError, match="state must be the State from fm.init_with_state"):
        fm.apply(params_a, torch.zeros(2, 3), state={"1.shift": torch.zeros(3)})


def test_wrong_features_name_the_layer_path():
    params = fm.init(fm.key(0), fm.nn.Sequential({"body": _mlp(), "head": fm.nn.Linear(5, 1)}))
    with pytest.raises(
        ValueError, match=r"layer 'body.0' \(Linear\): expected input \(\*, 3\), got shape \(2, 4\)"
    ):
        fm.apply(params, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"layer 'head' \(Linear\).*\(\*, 5\).*\(2, 2\)"):
        fm.apply(params, torch.zeros(2, 3))


def test_wrong_rank_and_channels_name_the_layer():
    params = fm.init(fm.key(0), _cnn())
    with pytest.raises(ValueError, match=r"'<root>' \(Sequential\).*rank 3.*or 4.*\(6, 6\)"):
        fm.apply(params, torch.zeros(6, 6))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\).*C=1.*\(2, 3, 6, 6\)"):
        fm.apply(params, torch.zeros(2, 3, 6, 6))


def test_sequential_rejects_bad_children_naming_the_container():
    with pytest.raises(ValueError, match=r"Sequential: invalid layer name 'a\.b'"):
        fm.nn.Sequential({"a.b": fm.nn.ReLU()})
    with pytest.raises(ValueError, match=r"Sequential: invalid layer name ''"):
        fm.nn.Sequential({"": fm.nn.ReLU()})
    with pytest.raises(TypeError, match=r"Sequential: a layer name must be a string, got int 1"):
        fm.nn.Sequential({1: fm.nn.ReLU()})
    with pytest.raises(TypeError, match=r"Sequential: child '1' must be a layer spec, got ReLU"):
        fm.nn.Sequential(fm.nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(TypeError, match=r"Sequential: child 'head' must be a layer spec, got int"):
        fm.nn.Sequential({"body": fm.nn.ReLU(), "head": 3})
    # Fields read from a file may repeat a name, which a dict of children cannot.
    layers = [("a", fm.nn.ReLU()), ("b", fm.nn.Tanh()), ("a", fm.nn.Tanh())]
    with pytest.raises(ValueError, match=r"Sequential: duplicate child names \['a'\]"):
        fm.nn.Sequential.from_fields({"layers": layers})
