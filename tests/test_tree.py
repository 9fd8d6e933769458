"""fm.tree: map, paths, ravel, partition/combine for freezing, index/unstack/stack."""

from __future__ import annotations

import optree
import pytest
import torch
from torch.func import grad

import funcmodels as fm

nn = fm.nn


def model():
    return nn.Sequential(
        {"body": nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "head": nn.Linear(4, 2)}
    )


def test_map_and_paths():
    params, state = fm.init_with_state(fm.key(0), model())
    doubled = fm.tree.map(lambda t: t * 2, params)
    assert doubled.spec is params.spec and torch.equal(
        doubled["head.weight"], 2 * params["head.weight"]
    )
    paths = fm.tree.map_with_path(lambda path, t: path, params)
    assert list(paths.flat().values()) == list(params.flat())
    both = fm.tree.map_with_path(lambda path, t: path, (state, {"lr": torch.ones(())}))
    assert list(both[0].flat().values()) == ["0." + k for k in state.flat()]
    assert both[1] == {"lr": "1.lr"}
    summed = fm.tree.map(lambda a, b: a + b, params, doubled)
    assert torch.equal(summed["body.0.bias"], 3 * params["body.0.bias"])
    with pytest.raises(ValueError, match="do not have the same structure"):
        fm.tree.map_with_path(lambda p, a, b: a, params, {"x": 1})
    assert [t.shape for t in fm.tree.leaves(params)] == [t.shape for t in params.flat().values()]


def test_ravel_round_trips_with_dtypes():
    tree = {
        "a": torch.arange(6.0).view(2, 3),
        "b": torch.tensor([1, 2], dtype=torch.float64),
        "c": torch.ones(()),
    }
    flat, unravel = fm.tree.ravel(tree)
    assert flat.shape == (9,) and flat.dtype == torch.float64
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 1, 2, 1]
    back = unravel(flat * 2)
    assert back["a"].dtype == torch.float32 and back["a"].shape == (2, 3)
    assert back["b"].tolist() == [2.0, 4.0] and back["c"].shape == ()
    params = fm.init(fm.key(0), model())
    vec, unravel = fm.tree.ravel(params)
    assert vec.shape == (sum(t.numel() for t in params.flat().values()),)
    assert unravel(vec).spec is params.spec
    with pytest.raises(ValueError, match="expects a vector of"):
        unravel(vec[:-1])


def test_partition_by_path_and_by_layer_type():
    params = fm.init(fm.key(0), model())
    head, rest = fm.tree.partition(params, lambda path, t: path.startswith("head"))
    assert [k for k, v in head.flat().items() if v is not fm.tree.HOLE] == [
        "head.weight",
        "head.bias",
    ]
    assert fm.tree.leaves(head) == [params["head.weight"], params["head.bias"]]
    bn, _ = fm.tree.partition(params, nn.BatchNorm1d)
    assert [k for k, v in bn.flat().items() if v is not fm.tree.HOLE] == [
        "body.1.weight",
        "body.1.bias",
    ]
    linear, _ = fm.tree.partition(params, (nn.Linear,))
    assert len(fm.tree.leaves(linear)) == 4
    merged = fm.tree.combine(head, rest)
    assert all(merged[k] is v for k, v in params.flat().items())
    assert len(optree.tree_leaves(head)) == 2  # optree sees no leaf in a hole either
    with pytest.raises(TypeError, match="must return a bool"):
        fm.tree.partition(params, lambda path, t: 1)
    with pytest.raises(TypeError, match="a function \\(path, leaf\\) -> bool or a layer type"):
        fm.tree.partition(params, "head")


def test_freezing_with_partition_trains_only_the_selected_part():
    params, state = fm.init_with_state(fm.key(0), model())
    x = fm.random.normal(fm.key(1), (8, 3))
    y = fm.random.normal(fm.key(2), (8, 2))
    train, frozen = fm.tree.partition(params, lambda path, t: path.startswith("head"))

    def loss(trainable, fixed):
        return ((fm.apply(fm.tree.combine(trainable, fixed), x, state=state) - y) ** 2).mean()

    opt = fm.optim.adam(0.1)
    opt_state = opt.init(train)
    for _ in range(3):
        g = grad(loss)(train, frozen)
        updates, opt_state = opt.update(g, opt_state, train)
        train = fm.optim.apply_updates(train, updates)
    trained = fm.tree.combine(train, frozen)
    for k in ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"):
        assert torch.equal(trained[k], params[k])
    assert not torch.equal(trained["head.weight"], params["head.weight"])
    with pytest.raises(ValueError, match="is a hole left by fm.tree.partition"):
        fm.apply(train, x, state=state)


def test_index_unstack_and_stack():
    spec = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ens = fm.init(fm.key(0), nn.Stack(spec, 3))
    member = fm.tree.index(ens, 1)
    assert member.spec == spec
    x = fm.random.normal(fm.key(1), (5, 3))
    torch.testing.assert_close(fm.apply(member, x), fm.apply(ens, x)[1], atol=1e-6, rtol=1e-5)
    members = fm.tree.unstack(ens)
    assert len(members) == 3 and all(m.spec == spec for m in members)
    again = fm.tree.stack(members, as_stack=True)
    assert again.spec == ens.spec and all(torch.equal(again[k], ens[k]) for k in ens.flat())
    plain = fm.tree.stack(members)  # as vmap(fm.init) makes an ensemble: same spec
    assert plain.spec == spec and plain["0.weight"].shape == (3, 4, 3)
    assert torch.equal(fm.tree.index(plain, 2)["2.bias"], members[2]["2.bias"])
    with pytest.raises(IndexError, match="member 3 of a Stack of 3"):
        fm.tree.index(ens, 3)
    grads = {"w": torch.arange(6.0).view(3, 2)}
    assert [g["w"].tolist() for g in fm.tree.unstack(grads)] == [[0, 1], [2, 3], [4, 5]]
