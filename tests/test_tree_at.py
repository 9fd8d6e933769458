"""fm.tree.at: a tree with leaves or sub-trees replaced by dotted path (Equinox's
``tree_at``), on Params, State and plain containers; the input is never changed; a
wrong-shaped or wrong-dtype tensor for a Params entry and an unknown path are refused
with the entry or the near names in the message."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.func import vmap

import funcmodels as fm

nn = fm.nn


def mlp() -> fm.Spec:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def snapshot(tree) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Each leaf's path, the leaf object and a copy of its values."""
    out: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep(path: str, leaf):
        if isinstance(leaf, torch.Tensor):
            out.append((path, leaf, leaf.clone()))

    fm.tree.map_with_path(keep, tree)
    return out


def assert_unchanged(before) -> None:
    for path, t, copy in before:
        assert torch.equal(t, copy), path


def test_one_entry_of_params_is_replaced_and_nothing_else_moves():
    params = fm.init(fm.key(0), mlp())
    before = snapshot(params)
    w = torch.arange(12.0).reshape(4, 3)
    new = fm.tree.at(params, "0.weight", w)
    assert type(new) is fm.Params and new.spec is params.spec
    assert new["0.weight"] is w
    for name in ("0.bias", "2.weight", "2.bias"):
        assert new[name] is params[name]  # shared, not copied
    assert_unchanged(before)
    assert params["0.weight"] is not w
    x = fm.random.normal(fm.key(1), (5, 3))
    want = torch.relu(x @ w.T + params["0.bias"]) @ params["2.weight"].T + params["2.bias"]
    torch.testing.assert_close(fm.apply(new, x), want, atol=0, rtol=0)


def test_a_list_of_paths_takes_a_list_of_values_or_one_function():
    params = fm.init(fm.key(0), mlp())
    b0, b2 = torch.ones(4), torch.full((2,), 2.0)
    new = fm.tree.at(params, ["0.bias", "2.bias"], [b0, b2])
    assert new["0.bias"] is b0 and new["2.bias"] is b2
    doubled = fm.tree.at(params, ("0.weight", "2.bias"), fn=lambda t: 2 * t)
    assert torch.equal(doubled["0.weight"], 2 * params["0.weight"])
    assert torch.equal(doubled["2.bias"], 2 * params["2.bias"])
    assert doubled["0.bias"] is params["0.bias"]


def test_a_layer_path_replaces_that_layers_sub_tree():
    params = fm.init(fm.key(0), mlp())
    head = fm.init(fm.key(9), nn.Linear(4, 2))
    new = fm.tree.at(params, "2", head)
    assert new["2.weight"] is head["weight"] and new["2.bias"] is head["bias"]
    assert new["0.weight"] is params["0.weight"]
    x = fm.random.normal(fm.key(1), (5, 3))
    hidden = fm.apply(fm.extend.subtree(params, "0"), x).relu()
    torch.testing.assert_close(fm.apply(new, x), fm.apply(head, hidden), atol=0, rtol=0)
    zeroed = fm.tree.at(params, "2", fn=lambda sub: fm.tree.map(torch.zeros_like, sub))
    assert not fm.apply(zeroed, x).any()


def test_state_and_plain_containers_of_tensors():
    spec = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    _, state = fm.init_with_state(fm.key(0), spec)
    mean = torch.tensor([1.0, 2.0, 3.0])
    new_state = fm.tree.at(state, "1.running_mean", mean)
    assert type(new_state) is fm.State and new_state["1.running_mean"] is mean
    assert new_state["1.num_batches_tracked"] is state["1.num_batches_tracked"]

    Pair = collections.namedtuple("Pair", "count trace")
    tree = {
        "a": [torch.zeros(2), (torch.ones(3), 5)],
        "b": Pair(torch.tensor(0), {"w": torch.ones(1)}),
    }
    before = snapshot(tree)
    new = fm.tree.at(tree, ["a.1.0", "a.1.1", "b.trace.w"], [torch.zeros(3), 6, torch.zeros(1)])
    assert torch.equal(new["a"][1][0], torch.zeros(3)) and new["a"][1][1] == 6
    assert type(new["b"]) is Pair and torch.equal(new["b"].trace["w"], torch.zeros(1))
    assert new["a"][0] is tree["a"][0] and tree["a"][1][1] == 5
    assert_unchanged(before)
    swapped = fm.tree.at(tree, "a", [torch.ones(2), (torch.zeros(3), 7)])
    assert swapped["a"][1][1] == 7 and swapped["b"] is not None


def test_an_optimiser_state_inside_a_run_tree():
    params = fm.init(fm.key(0), mlp())
    opt = fm.optim.chain(fm.optim.clip_by_global_norm(1.0), fm.optim.adam(1e-3))
    run = {"params": params, "opt": opt.init(params), "step": 3}
    new = fm.tree.at(run, ["step", "opt.1.0.mu.2.bias"], [4, torch.ones(2)])
    assert new["step"] == 4 and run["step"] == 3
    assert torch.equal(new["opt"][1][0].mu["2.bias"], torch.ones(2))
    assert new["opt"][1][0].nu["2.bias"] is run["opt"][1][0].nu["2.bias"]
    assert not run["opt"][1][0].mu["2.bias"].any()


def test_stacked_trees_keep_their_layout_and_work_under_vmap():
    ensemble = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 3), nn.Linear(4, 2))
    stacked = torch.zeros(3, 2, 4)
    assert fm.tree.at(ensemble, "weight", stacked)["weight"] is stacked  # the leaf's shape
    halved = vmap(lambda p: fm.tree.at(p, "weight", fn=lambda w: w / 2))(ensemble)
    torch.testing.assert_close(halved["weight"], ensemble["weight"] / 2, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"'weight'.*has shape \(2, 4\), expected .*\(3, 2, 4\)"):
        fm.tree.at(ensemble, "weight", torch.zeros(2, 4))


def test_a_wrong_shaped_or_typed_value_for_an_entry_is_refused_naming_it():
    params = fm.init(fm.key(0), mlp())
    with pytest.raises(
        ValueError,
        match=r"'0\.weight' \(Params entry '0\.weight' of Sequential\) has shape "
        r"\(3, 4\), expected the entry's \(4, 3\)",
    ):
        fm.tree.at(params, "0.weight", torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"'2\.bias'.*dtype torch\.float64, expected .*float32"):
        fm.tree.at(params, "2.bias", torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'2\.bias'.*is a float, not a tensor"):
        fm.tree.at(params, "2.bias", 1.0)
    with pytest.raises(ValueError, match=r"'params\.0\.bias'.*has shape \(3,\)"):
        fm.tree.at({"params": params}, "params.0.bias", torch.zeros(3))
    other_head = fm.init(fm.key(1), nn.Linear(4, 3))
    with pytest.raises(
        ValueError, match=r"value for '2' does not have the structure.*out_features=3"
    ):
        fm.tree.at(params, "2", other_head)


def test_an_unknown_path_lists_near_names():
    params = fm.init(fm.key(0), mlp())
    with pytest.raises(ValueError, match=r"nothing at '0\.weigth'.*near names: \['0\.weight'"):
        fm.tree.at(params, "0.weigth", torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"nothing at '1\.weight'.*no entry"):
        fm.tree.at(params, "1.weight", torch.zeros(4, 3))  # the ReLU has none
    run = {"params": params, "step": 3}
    with pytest.raises(ValueError, match=r"nothing at 'stpe'; near names: \['step'\]"):
        fm.tree.at(run, "stpe", 4)
    with pytest.raises(ValueError, match=r"nothing at 'zzz'; the tree's top-level names: "):
        fm.tree.at(run, "zzz", 4)
    stack = fm.init(fm.key(0), nn.Stack(mlp(), 2))
    with pytest.raises(ValueError, match="not a layer but part of the names"):
        fm.tree.at(stack, "0", fn=lambda t: t)  # a Stack adds no name level


def test_bad_arguments():
    params = fm.init(fm.key(0), mlp())
    with pytest.raises(TypeError, match="either value .* or fn"):
        fm.tree.at(params, "0.bias")
    with pytest.raises(TypeError, match="either value .* or fn"):
        fm.tree.at(params, "0.bias", torch.zeros(4), fn=lambda t: t)
    with pytest.raises(TypeError, match="for 2 paths, value must be a list of 2"):
        fm.tree.at(params, ["0.bias", "2.bias"], torch.zeros(4))
    with pytest.raises(TypeError, match="where must be a dotted path"):
        fm.tree.at(params, 0, torch.zeros(4))
    with pytest.raises(ValueError, match="'0' and '0.bias' overlap"):
        fm.tree.at(params, ["0", "0.bias"], fn=lambda t: t)
    with pytest.raises(ValueError, match="'2.bias' and '2.bias' overlap"):
        fm.tree.at(params, ["2.bias", "2.bias"], fn=lambda t: t)
