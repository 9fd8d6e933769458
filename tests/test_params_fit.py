"""Params and State fit their spec: the public constructors refuse a wrong shape or dtype
(issue 20 item 9), ``fm.check_params`` checks names, shapes and dtypes in both its forms,
``with_spec`` swaps the spec over the same tensors, checked, and the trees that
legitimately have other shapes (per-sample gradients, ensembles, trees under vmap) are
still made. A vmap over Stack params says what they are and what to write instead
(issue 20 item 19)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels.extend import unchecked

nn = fm.nn


def mlp() -> fm.Spec:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


# -- the constructors and check_params ------------------------------------------------------


def test_a_transposed_weight_is_refused_by_the_constructor_and_check_params():
    spec = mlp()
    params = fm.init(fm.key(0), spec)
    flat = {**params.flat(), "0.weight": params["0.weight"].T}
    entry = r"entry '0\.weight' \(layer '0', Linear\) has shape \(3, 4\), expected \(4, 3\)"
    with pytest.raises(ValueError, match=r"Params\(Sequential, \.\.\.\) does not fit.*" + entry):
        fm.Params(spec, flat)
    misfit = unchecked(fm.Params, spec, flat)
    with pytest.raises(ValueError, match=r"fm\.check_params: Params do not fit .*" + entry):
        fm.check_params(spec, misfit)
    with pytest.raises(ValueError, match=entry):
        fm.check_params(misfit)
    assert fm.check_params(params) is None
    assert fm.check_params(spec, params) is None


def test_dtypes_params_floating_and_buffers_as_their_layer_says():
    spec = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    params, state = fm.init_with_state(fm.key(0), spec)
    with pytest.raises(ValueError, match=r"'0\.bias'.*dtype torch\.int64, expected a floating"):
        fm.Params(spec, {**params.flat(), "0.bias": torch.zeros(3, dtype=torch.int64)})
    count = state["1.num_batches_tracked"].double()
    with pytest.raises(ValueError, match=r"num_batches_tracked'.*float64, expected torch\.int64"):
        fm.State(spec, {**state.flat(), "1.num_batches_tracked": count})
    mean = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"running_mean'.*int32, expected a floating dtype"):
        fm.State(spec, {**state.flat(), "1.running_mean": mean})
    # Any floating dtype, layer by layer (a layer kept in float32 among bfloat16 ones).
    mixed = fm.Params(spec, {**params.flat(), "0.weight": params["0.weight"].bfloat16()})
    assert mixed["0.weight"].dtype == torch.bfloat16


def test_check_params_names_every_problem_and_refuses_non_trees():
    spec = mlp()
    params = fm.init(fm.key(0), spec)
    flat = params.flat()
    flat["2.bias"] = torch.zeros(3)
    flat["0.weight"] = flat["0.weight"].long()
    flat["9.weight"] = torch.zeros(1)
    del flat["0.bias"]
    misfit = unchecked(fm.Params, spec, flat)
    with pytest.raises(ValueError) as err:
        fm.check_params(misfit)
    message = str(err.value)
    for part in (
        "missing entries ['0.bias']",
        "unexpected entries ['9.weight']",
        "'0.weight' (layer '0', Linear) has dtype torch.int64",
        "'2.bias' (layer '2', Linear) has shape (3,), expected (2,)",
    ):
        assert part in message, message
    with pytest.raises(TypeError, match=r"expected Params \(or a spec and Params\), got Linear"):
        fm.check_params(nn.Linear(3, 4))
    with pytest.raises(TypeError, match="expected Params, got dict"):
        fm.check_params(spec, flat)
    _, state = fm.init_with_state(fm.key(0), nn.BatchNorm1d(3))
    fm.check_params(state)


def test_trees_of_other_shapes_are_still_made_by_the_trusted_paths():
    spec = mlp()
    params = fm.init(fm.key(0), spec)
    x, y = fm.random.normal(fm.key(1), (5, 3)), torch.arange(5) % 2

    def loss(p, xi, yi):
        return F.cross_entropy(fm.apply(p, xi), yi)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)  # pytree unflatten
    assert type(per_sample) is fm.Params and per_sample["0.weight"].shape == (5, 4, 3)
    ensemble = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 3), spec)
    assert ensemble["2.bias"].shape == (3, 2)
    assert fm.tree.map(lambda t: t[None], params)["2.bias"].shape == (1, 2)
    assert fm.tree.stack([params, params])["0.weight"].shape == (2, 4, 3)
    # The constructor inside vmap sees each member's shape: it fits.
    rebuilt = vmap(lambda p: fm.Params(spec, p.flat()))(ensemble)
    assert rebuilt["0.weight"].shape == (3, 4, 3)
    with pytest.raises(ValueError, match=r"has shape \(3, 4, 3\), expected \(4, 3\) \(a leading"):
        fm.Params(spec, ensemble.flat())
    assert unchecked(fm.Params, spec, ensemble.flat())["0.weight"].shape == (3, 4, 3)


# -- with_spec ------------------------------------------------------------------------------


def test_with_spec_changes_a_hyperparameter_over_the_same_tensors():
    expert = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    spec = transforms.MoE(expert=expert, num_experts=4, top_k=2)
    tight = dataclasses.replace(spec, capacity_factor=0.5)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (32, 8))
    swapped = params.with_spec(tight)
    assert swapped.spec is tight and swapped["gate.weight"] is params["gate.weight"]
    want = fm.apply(fm.init(fm.key(0), tight), x)  # the same tensors, made for that spec
    torch.testing.assert_close(fm.apply(swapped, x), want, atol=0, rtol=0)
    assert not torch.equal(want, fm.apply(params, x))  # the capacity drops tokens


def test_with_spec_keeps_the_layout_of_stacked_trees_and_state():
    spec = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    ensemble = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 3), spec)
    other = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    assert ensemble.with_spec(other).spec is other  # entries alike under both specs
    with pytest.raises(ValueError, match=r"'0\.weight'.*\(3, 4, 4\), expected \(8, 4\)"):
        ensemble.with_spec(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5)))
    stack = fm.init(fm.key(0), nn.Stack(nn.Linear(4, 2), 3))
    mapped = stack.with_spec(nn.Stack(nn.Linear(4, 2), 3, in_axis=0))
    x = fm.random.normal(fm.key(1), (3, 5, 4))
    want = torch.stack([fm.apply(fm.tree.index(stack, i), x[i]) for i in range(3)])
    torch.testing.assert_close(fm.apply(mapped, x), want, atol=1e-6, rtol=1e-6)
    bn = nn.BatchNorm1d(3)
    _, state = fm.init_with_state(fm.key(0), bn)
    assert state.with_spec(nn.BatchNorm1d(3, momentum=0.5))["running_var"] is state["running_var"]


def test_with_spec_turns_stack_params_into_repeat_params():
    """The same stacked tensors, run in sequence: member i on member i - 1's output."""
    block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    stack = fm.init(fm.key(0), nn.Stack(block, 3))
    repeat = stack.with_spec(nn.Repeat(block, 3))
    assert repeat.spec == nn.Repeat(block, 3) and repeat["0.weight"] is stack["0.weight"]
    x = fm.random.normal(fm.key(1), (2, 4))
    h = x
    for i in range(3):
        h = fm.apply(fm.tree.index(stack, i), h)
    torch.testing.assert_close(fm.apply(repeat, x), h, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"'0\.weight'.*\(3, 4, 4\), expected \(4, 4, 4\)"):
        stack.with_spec(nn.Repeat(block, 4))


def test_with_spec_refuses_other_entries_shapes_and_non_specs():
    params = fm.init(fm.key(0), mlp())
    with pytest.raises(
        ValueError, match=r"differ in their entries: these have entries \['2\.bias'\]"
    ):
        params.with_spec(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)))
    with pytest.raises(ValueError, match=r"Sequential has entries \['1\.weight', '1\.bias'\]"):
        params.with_spec(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)))
    narrow = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"entry '2\.weight'.*\(2, 4\), expected \(2, 2\)"):
        params.with_spec(narrow)
    with pytest.raises(TypeError, match="expected a Spec, got dict"):
        params.with_spec({})


# -- a vmap over Stack params -----------------------------------------------------------------


def test_vmap_over_stack_params_says_what_they_are_and_what_to_write():
    params = fm.init(fm.key(0), nn.Stack(nn.Linear(4, 8), 3))
    x = fm.random.normal(fm.key(1), (5, 4))
    with pytest.raises(ValueError) as err:
        vmap(fm.apply, in_dims=(0, None))(params, x)
    message = str(err.value)
    assert "has shape (8, 4), expected (3, 8, 4): one member's shape" in message
    assert "layer '<root>', a Stack of 3" in message
    assert "fm.apply(params, x) runs every member itself" in message
    fix = "vmap(fm.apply, in_dims=(0, None))(fm.tree.stack(fm.tree.unstack(params)), x)"
    assert fix in message
    # What the message says to write runs, and gives what the Stack computes.
    got = eval(fix, {"vmap": vmap, "fm": fm, "params": params, "x": x})
    torch.testing.assert_close(got, fm.apply(params, x), atol=1e-6, rtol=1e-6)


def test_a_member_shaped_tensor_inside_a_model_names_its_stack():
    spec = nn.Sequential(nn.Linear(4, 4), nn.Stack(nn.Linear(4, 8), 3))
    params = fm.init(fm.key(0), spec)
    member = {**params.flat(), "1.weight": params["1.weight"][0]}
    with pytest.raises(ValueError, match=r"layer '1', a Stack of 3.*without a vmap"):
        fm.Params(spec, member)
    with pytest.raises(ValueError, match=r"'1\.weight'.*one member's shape"):
        fm.apply(unchecked(fm.Params, spec, member), torch.zeros(2, 4))
    # A layer that stacks nothing gets no such hint.
    plain = {**params.flat(), "0.weight": torch.zeros(4)}
    with pytest.raises(ValueError) as err:
        fm.Params(spec, plain)
    assert "Stack" not in str(err.value)
