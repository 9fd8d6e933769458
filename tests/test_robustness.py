"""The robustness catalogue: mistakes a user can make, each refused with a clear error.

Errors are ``ValueError``/``TypeError`` (``OSError`` for files) naming the entry, layer or
path at fault; never a ``RecursionError``, a ``KeyError`` or a bare torch error. (Torch
errors raised inside a layer are tested in test_context.py; names torch refuses in
test_registry.py; devices and init mistakes in test_devices.py; the summary of a Stack in
nn/test_stack.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.utils._pytree as pytree
from safetensors.torch import save_file

import funcmodels as fm
import transforms

nn = fm.nn


def mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def nested(depth: int) -> dict:
    """A config entry ``depth`` sequentials deep."""
    entry: dict = {"type": "relu"}
    for _ in range(depth):
        entry = {"type": "sequential", "params": {"layers": [entry]}}
    return entry


# -- params that do not fit their spec ---------------------------------------------------


def test_params_missing_an_entry_are_refused_naming_it():
    params = fm.init(fm.key(0), mlp())
    flat = params.flat()
    del flat["2.bias"]
    with pytest.raises(
        ValueError,
        match=r"Params\(Sequential, ...\) does not fit its spec: missing entries \['2.bias'\]",
    ):
        fm.Params(mlp(), flat)
    with pytest.raises(ValueError, match=r"unexpected entries \['2.other'\]"):
        fm.Params(mlp(), {**params.flat(), "2.other": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"entry '0.weight' is NoneType, expected a tensor"):
        fm.Params(mlp(), {**params.flat(), "0.weight": None})


def test_a_none_leaf_after_tree_map_is_refused_naming_it():
    params = fm.init(fm.key(0), mlp())
    holes = pytree.tree_map(lambda t: None if t.dim() == 1 else t, params)
    with pytest.raises(
        ValueError,
        match=r"fm.run/fm.apply: Params do not fit their spec: entry '0.bias' \(layer '0'\) is "
        r"None \(did a tree_map return None for it\?\)",
    ):
        fm.apply(holes, torch.ones(2, 3))


def test_a_wrong_shape_is_refused_naming_the_entry():
    params = fm.init(fm.key(0), mlp())
    wrong = pytree.tree_map(lambda t: t[..., :2] if t.dim() == 2 else t, params)
    with pytest.raises(
        ValueError, match=r"entry '0.weight' \(layer '0'\) has shape \(4, 2\), expected \(4, 3\)"
    ):
        fm.apply(wrong, torch.ones(2, 3))
    params, state = fm.init_with_state(fm.key(0), nn.BatchNorm1d(3))
    bad_state = pytree.tree_map(lambda t: t.repeat(2) if t.dim() == 1 else t, state)
    with pytest.raises(ValueError, match=r"State do not fit their spec: entry 'running_mean'"):
        fm.apply(params, torch.ones(2, 3), state=bad_state)


def test_train_must_be_a_bool():
    params = fm.init(fm.key(0), mlp())
    for bad in (1, "yes", None, torch.tensor(True)):
        with pytest.raises(TypeError, match="fm.run/fm.apply: train must be a bool"):
            fm.apply(params, torch.ones(2, 3), train=bad)


# -- save, load and config reading never recurse without bound -------------------------------


def test_cyclic_and_deep_configs_are_refused():
    cyclic = {"type": "sequential", "params": {"layers": []}}
    cyclic["params"]["layers"].append(cyclic)
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        fm.from_config([cyclic])
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        fm.from_config([nested(2000)])
    # Deep in a parameter value too (a list in a list in ...).
    value: list = [1]
    for _ in range(2000):
        value = [value]
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        fm.from_config([{"type": "maxpool2d", "params": {"kernel_size": value}}])
    # Within the bound, fine.
    assert fm.from_config([nested(50)]) is not None


@pytest.mark.slow
def test_deep_and_cyclic_files_are_refused(tmp_path):
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply to read"):
        fm.load_config(deep_json)
    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="deep.yaml"):
        fm.load_config(deep_yaml)
    cyclic_yaml = tmp_path / "cyclic.yaml"
    cyclic_yaml.write_text("- &a\n  type: sequential\n  params:\n    layers: [*a]\n")
    # an alias inside its own anchor: refused when read, naming the file and line, before
    # anything walks the endless document
    with pytest.raises(ValueError, match=r"cyclic.yaml', line 1: an alias refers to a node"):
        fm.load_config(cyclic_yaml)
    too_many = tmp_path / "wide.json"
    too_many.write_text(json.dumps([{"type": "relu"}] * 100_001))
    with pytest.raises(ValueError, match="more than 100000 layers"):
        fm.from_config(fm.load_config(too_many))


def test_yaml_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("- type: linear\n  params: {out_features: 3}\n  type: relu\n")
    with pytest.raises(ValueError, match=r"dup.yaml', line 3: the key 'type' appears twice"):
        fm.load_config(path)
    path = tmp_path / "dup.json"
    path.write_text('[{"type": "linear", "type": "relu"}]')
    with pytest.raises(ValueError, match=r"the key 'type' appears twice"):
        fm.load_config(path)


def test_saving_a_too_deep_spec_is_refused(tmp_path):
    spec = nn.ReLU()
    for _ in range(2000):
        spec = nn.Sequential(spec)
    params = fm.Params(spec, {})
    with pytest.raises(
        ValueError, match=r"the spec is nested 2001 levels deep; files hold at most 100"
    ):
        fm.save(tmp_path / "deep.safetensors", params)


@pytest.mark.parametrize(
    "spec_json, pattern",
    [
        ("[" * 100_000 + "]" * 100_000, "the stored spec is nested too deeply to read"),
        (json.dumps([nested(150)]), "nested more than 100 levels deep"),
        (json.dumps({"type": "relu", "params": {"x": 1}}), "unknown parameter 'x'"),
        pytest.param(
            json.dumps([{"type": "relu"}] * 100_001),
            "more than 100000 layers",
            marks=pytest.mark.slow,
        ),
        ('"just a string"', "expected a list of layer entries or a layer dict, got str"),
        # a Stack of 10^12 members: refused by the layer budget, not 10^12 names built
        (
            json.dumps({"type": "stack", "params": {"spec": {"type": "relu"}, "n": 10**12}}),
            r"Stack: n=1000000000000 makes it 1000000000001 layers; a spec holds at most 100000",
        ),
        (
            json.dumps(
                {
                    "type": "stack",
                    "params": {
                        "spec": {"type": "linear", "params": {"in_features": 1, "out_features": 1}},
                        "n": 10**12,
                    },
                }
            ),
            r"Stack: n=1000000000000 makes it 1000000000001 layers",
        ),
    ],
)
def test_hostile_metadata_is_refused(tmp_path, spec_json, pattern):
    path = tmp_path / "hostile.safetensors"
    metadata = {"format": "funcmodels", "version": "2", "spec": spec_json}
    save_file({"w": torch.zeros(1)}, path, metadata=metadata)
    with pytest.raises(ValueError, match=pattern):
        fm.load(path)


def test_save_to_a_missing_directory_or_onto_a_directory_names_the_path(tmp_path):
    params = fm.init(fm.key(0), mlp())
    missing = tmp_path / "nowhere" / "m.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        fm.save(missing, params)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name}.*is a directory"):
        fm.save(tmp_path, params)
    assert isinstance(FileNotFoundError(), OSError) and isinstance(IsADirectoryError(), OSError)


# -- every accepted spec value is saveable --------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.BatchNorm1d(3, eps=float("inf")),
        lambda: nn.BatchNorm2d(3, momentum=float("nan")),
        lambda: nn.LayerNorm(3, eps=float("-inf")),
        lambda: nn.GroupNorm(1, 3, eps=float("nan")),
        lambda: nn.Dropout(float("nan")),
        lambda: nn.ResidualBlock(2, 2, se_ratio=float("inf")),
    ],
)
def test_non_finite_numbers_are_refused_at_construction(make):
    with pytest.raises(ValueError, match="must be a finite number"):
        make()


def test_every_built_in_spec_accepted_saves_and_loads(tmp_path):
    spec = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding="same", padding_mode="reflect"),
        nn.BatchNorm2d(2, eps=1e-3, momentum=None),
        nn.ResidualBlock(2, 4, stride=2, use_se=True, norm="group", norm_groups=2),
        nn.AdaptiveAvgPool2d((1, None)),
        nn.Flatten(),
        nn.Stack(nn.Sequential(nn.Linear(out_features=3), nn.Dropout(0.25)), 2),
    )
    params, state = fm.init_with_state(fm.key(0), spec, input_shape=(1, 6, 6))
    fm.save(tmp_path / "m.safetensors", params, state)
    loaded, _ = fm.load(tmp_path / "m.safetensors")
    assert loaded.spec == params.spec


# -- fold_batchnorm: exact or refused --------------------------------------------------------


def test_folded_linear_batchnorm_refuses_3d_input_like_fuse():
    spec = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    params, state = fm.init_with_state(fm.key(0), spec)
    state = fm.State(spec, {**state.flat(), "1.running_mean": torch.arange(5.0)})
    folded, folded_state = transforms.fold_batchnorm(params, state)
    assert type(folded.spec["1"]) is transforms.FoldedBatchNorm1d
    x2 = fm.random.normal(fm.key(1), (3, 4))
    torch.testing.assert_close(
        fm.apply(folded, x2, state=folded_state),
        fm.apply(params, x2, state=state),
        atol=1e-6,
        rtol=1e-5,
    )
    x3 = fm.random.normal(fm.key(1), (3, 5, 4))
    fm.apply(params, x3, state=state)  # the original runs (BatchNorm1d over dim 1) ...
    with pytest.raises(
        ValueError, match=r"layer '1' \(FoldedBatchNorm1d\): got an input of shape \(3, 5, 5\)"
    ):
        fm.apply(folded, x3, state=folded_state)  # ... the folded one refuses
    module = transforms.to_module(folded, folded_state)
    with pytest.raises(AssertionError, match="only valid for inputs"):
        module(x3)
    torch.testing.assert_close(module(x2), fm.apply(folded, x2), atol=0, rtol=0)
    assert transforms.from_module(module)[0].spec == folded.spec
    with pytest.raises(AssertionError, match="only valid for inputs"):
        transforms.fuse(module)(x3)
    with pytest.raises(ValueError, match=r"\(FoldedBatchNorm1d\): expected one example of shape"):
        fm.shapes(folded.spec, (5, 4))


# -- the optimiser names the layer where two models differ ------------------------------------


def test_optimiser_spec_mismatch_names_the_differing_layer():
    a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    pa, pb = fm.init(fm.key(0), a), fm.init(fm.key(0), b)
    opt = fm.optim.adam(1e-3)
    state = opt.init(pa)
    with pytest.raises(
        ValueError, match=r"grads .* a different model: layer '1': expected ReLU, got Tanh"
    ):
        opt.update(pb, state, pa)
    with pytest.raises(ValueError, match=r"updates .* a different model: layer '1'"):
        fm.optim.apply_updates(pa, pb)
