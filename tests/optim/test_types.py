"""optax's type names in fm.optim: usable in annotations, ``MaskedNode`` a childless node,
and ``fm.optim.Params`` never confused with ``funcmodels.Params``."""

from __future__ import annotations

import typing

import pytest
import torch
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels import optim

optax = pytest.importorskip("optax")

TYPE_NAMES = [
    "OptState",
    "Params",
    "Updates",
    "Schedule",
    "ScalarOrSchedule",
    "MaskOrFn",
    "MaskedNode",
    "TransformInitFn",
    "TransformUpdateFn",
    "TransformUpdateExtraArgsFn",
    "ShouldSkipUpdateFunction",
]


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_optax_type_names_exist(name):
    assert hasattr(optax, name)
    assert hasattr(optim, name)


def test_usable_in_annotations():
    def step(
        params: optim.Params,
        state: optim.OptState,
        lr: optim.ScalarOrSchedule,
        mask: optim.MaskOrFn,
    ) -> tuple[optim.Updates, optim.OptState]:
        return params, state

    # optax's ArrayTree is recursive through a string, as here: resolving it needs its module
    hints = typing.get_type_hints(step, globalns={**vars(optim._types), "optim": optim})
    assert set(hints) == {"params", "state", "lr", "mask", "return"}
    assert optim.Schedule in typing.get_args(hints["lr"])


def test_params_alias_is_not_funcmodels_params():
    assert optim.Params is not fm.Params
    assert "Params" not in optim.__all__
    namespace: dict = {}
    exec("from funcmodels import *\nfrom funcmodels.optim import *", namespace)
    assert namespace["Params"] is fm.Params


def test_masked_node_has_no_leaves():
    tree = {"a": torch.ones(2), "b": optim.MaskedNode()}
    assert len(pytree.tree_leaves(tree)) == 1
    doubled = pytree.tree_map(lambda t: 2 * t, tree)
    assert doubled["b"] == optim.MaskedNode() and torch.equal(doubled["a"], torch.full((2,), 2.0))


def test_protocols_match_what_fm_optim_makes():
    assert isinstance(optim.WrappedSchedule(optim.constant_schedule(1.0)), optim.StatefulSchedule)
    assert not isinstance(optim.constant_schedule(1.0), optim.StatefulSchedule)
    opt = optim.adam(1e-3)
    init: optim.TransformInitFn = opt.init
    update: optim.TransformUpdateFn = opt.update
    params = {"w": torch.ones(2)}
    updates, _ = update(params, init(params), params)
    assert updates["w"].shape == (2,)
