"""save / load: bit-exact round trips, torch interoperability, spec checks, bad files."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import funcmodels as fm
from tests.helpers import torch_twin

nn = fm.nn


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )


# What fm.save stores for cnn(): the config format, every field written.
CNN_FILE_SPEC = [
    {
        "type": "conv2d",
        "name": "0",
        "params": {
            "in_channels": 1,
            "out_channels": 4,
            "kernel_size": 3,
            "stride": 1,
            "padding": 1,
            "dilation": 1,
            "groups": 1,
            "bias": True,
            "padding_mode": "zeros",
        },
    },
    {
        "type": "batchnorm2d",
        "name": "1",
        "params": {
            "num_features": 4,
            "eps": 1e-05,
            "momentum": 0.1,
            "affine": True,
            "track_running_stats": True,
        },
    },
    {"type": "relu", "name": "2"},
    {"type": "flatten", "name": "3", "params": {"start_dim": 1, "end_dim": -1}},
    {
        "type": "linear",
        "name": "4",
        "params": {"in_features": 100, "out_features": 3, "bias": True},
    },
]

# What version 1 stored for cnn() (one layer dict per spec, type names as class names).
CNN_FILE_SPEC_V1 = {
    "type": "Sequential",
    "params": {
        "layers": [
            {
                "name": "0",
                "type": "Conv2d",
                "params": {
                    "in_channels": 1,
                    "out_channels": 4,
                    "kernel_size": [3, 3],
                    "stride": [1, 1],
                    "padding": [1, 1],
                    "dilation": [1, 1],
                    "groups": 1,
                    "bias": True,
                    "padding_mode": "zeros",
                },
            },
            {
                "name": "1",
                "type": "BatchNorm2d",
                "params": {
                    "num_features": 4,
                    "eps": 1e-05,
                    "momentum": 0.1,
                    "affine": True,
                    "track_running_stats": True,
                },
            },
            {"name": "2", "type": "ReLU", "params": {}},
            {"name": "3", "type": "Flatten", "params": {"start_dim": 1, "end_dim": -1}},
            {
                "name": "4",
                "type": "Linear",
                "params": {"in_features": 100, "out_features": 3, "bias": True},
            },
        ]
    },
}


def torch_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 3),
    )


def trained_state(dtype=torch.float32):
    """Params and a state that has seen two train batches (non-trivial running stats)."""
    params, state = fm.init_with_state(fm.key(0), cnn(), dtype=dtype)
    for i in range(2):
        x = fm.random.normal(fm.key(10 + i), (6, 1, 5, 5), dtype=dtype)
        state = fm.run(params, x, state=state, train=True).state
    return params, state


def assert_bit_equal(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_is_bit_exact_with_state(tmp_path, dtype):
    params, state = trained_state(dtype)
    assert int(state["1.num_batches_tracked"]) == 2
    path = tmp_path / "m.safetensors"
    fm.save(path, params, state)
    p2, s2 = fm.load(path)
    assert p2.spec == cnn() and s2.spec == cnn()
    assert_bit_equal(fm.to_state_dict(p2, s2), fm.to_state_dict(params, state))
    assert s2["1.num_batches_tracked"].dtype == torch.int64
    x = fm.random.normal(fm.key(5), (2, 1, 5, 5), dtype=dtype)
    assert torch.equal(fm.apply(p2, x, state=s2), fm.apply(params, x, state=state))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**31 - 1))
def test_round_trip_of_random_mlps(tmp_path_factory, width, depth, bias, seed):
    layers = [nn.Linear(3, width, bias=bias)]
    for _ in range(depth - 1):
        layers += [nn.Tanh(), nn.Linear(width, width, bias=bias)]
    spec = nn.Sequential(*layers)
    params = fm.init(fm.key(seed), spec, dtype=torch.float64)
    path = tmp_path_factory.mktemp("mlp") / "m.safetensors"
    fm.save(str(path), params)
    p2, s2 = fm.load(str(path), spec)
    assert_bit_equal(fm.to_state_dict(p2), fm.to_state_dict(params))
    assert fm.to_state_dict(p2, s2) == fm.to_state_dict(p2)  # empty state


def test_file_layout_and_torch_interop(tmp_path):
    params, state = trained_state()
    path = tmp_path / "m.safetensors"
    fm.save(path, params, state)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "funcmodels" and meta["version"] == "2"
    # The spec is stored in the config format with every field written: pinned, since
    # files written today must read the same tomorrow.
    assert json.loads(meta["spec"]) == CNN_FILE_SPEC
    assert fm.from_config(json.loads(meta["spec"])) == cnn()
    # The torch twin loads the file as is, strictly, and computes the same thing.
    module = torch_cnn().eval()
    module.load_state_dict(load_file(path), strict=True)
    x = fm.random.normal(fm.key(7), (3, 1, 5, 5))
    torch.testing.assert_close(module(x), fm.apply(params, x, state=state), rtol=1e-6, atol=1e-6)


def test_version_1_files_still_load(tmp_path):
    params, state = trained_state()
    path = tmp_path / "v1.safetensors"
    metadata = {"format": "funcmodels", "version": "1", "spec": json.dumps(CNN_FILE_SPEC_V1)}
    save_file(fm.to_state_dict(params, state), path, metadata=metadata)
    p2, s2 = fm.load(path)
    assert p2.spec == cnn()
    assert_bit_equal(fm.to_state_dict(p2, s2), fm.to_state_dict(params, state))


def test_torch_state_dict_file_loads_given_the_spec(tmp_path):
    module = torch_cnn()
    module.train()
    module(torch.randn(6, 1, 5, 5))  # move the running statistics away from init
    sd = module.state_dict()
    path = tmp_path / "torch.safetensors"
    save_file(sd, path)
    with pytest.raises(ValueError, match=r"no funcmodels metadata.*fm\.load\(path, spec\)"):
        fm.load(path)
    params, state = fm.load(path, cnn())
    assert_bit_equal(fm.to_state_dict(params, state), sd)
    module.eval()
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), rtol=0, atol=0)


def test_entries_are_checked_and_every_problem_listed(tmp_path):
    sd = dict(torch_cnn().state_dict())
    del sd["0.bias"]
    sd["4.weight"] = torch.zeros(3, 99)
    sd["1.num_batches_tracked"] = torch.tensor(0.0)
    sd["extra"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, path)
    with pytest.raises(ValueError) as info:
        fm.load(path, cnn())
    msg = str(info.value)
    for part in (
        "missing entries: ['0.bias']",
        "unexpected entries: ['extra']",
        "'4.weight': expected shape (3, 100), got (3, 99)",
        "'1.num_batches_tracked': expected dtype torch.int64, got torch.float32",
    ):
        assert part in msg


def test_stored_spec_must_match_the_given_one(tmp_path):
    params = fm.init(fm.key(0), cnn())
    path = tmp_path / "m.safetensors"
    fm.save(path, params)
    other = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, eps=1e-3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )
    with pytest.raises(ValueError, match=r"different spec: layer '1': expected BatchNorm2d"):
        fm.load(path, other)


def test_saved_without_state_loads_with_none(tmp_path):
    params, state = trained_state()
    path = tmp_path / "m.safetensors"
    fm.save(path, params)
    p2, s2 = fm.load(path)
    assert s2 is None
    assert_bit_equal(fm.to_state_dict(p2), fm.to_state_dict(params))


def test_inputs_are_not_mutated_and_views_are_saved(tmp_path):
    spec = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    base = torch.arange(36, dtype=torch.float32).reshape(4, 9)
    flat = {
        "0.weight": base[:3, :3],  # a view into a larger buffer
        "0.bias": base[0, ::3],  # non-contiguous
        "1.weight": base[:3, :3].t(),  # non-contiguous, overlapping 0.weight
        "1.bias": base[0, ::3],  # the same memory as 0.bias
    }
    params = fm.Params(spec, flat)
    before = {k: (v.clone(), v.stride(), v.data_ptr()) for k, v in flat.items()}
    path = tmp_path / "views.safetensors"
    fm.save(path, params)
    for k, (v, stride, ptr) in before.items():
        assert torch.equal(params[k], v) and params[k].stride() == stride
        assert params[k].data_ptr() == ptr
    p2, _ = fm.load(path)
    assert_bit_equal(fm.to_state_dict(p2), {k: v for k, (v, _, _) in before.items()})


def test_ensemble_member_and_grad_tensors_save(tmp_path):
    spec = nn.Linear(2, 3)
    ensemble = torch.func.vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 3), spec)
    member = fm.Params(spec, {k: v[1] for k, v in ensemble.flat().items()})  # views
    trainable = fm.Params(spec, {k: v.clone().requires_grad_() for k, v in member.flat().items()})
    for i, params in enumerate([member, trainable]):
        path = tmp_path / f"m{i}.safetensors"
        fm.save(path, params)
        p2, _ = fm.load(path)
        assert_bit_equal(fm.to_state_dict(p2), {k: v.detach() for k, v in params.flat().items()})


def test_parameter_free_model(tmp_path):
    spec = nn.Sequential(nn.ReLU(), nn.Flatten())
    path = tmp_path / "empty.safetensors"
    fm.save(path, fm.init(fm.key(0), spec))
    params, state = fm.load(path)
    assert params.spec == spec and len(params) == 0 and len(state) == 0


def test_save_rejects_bad_inputs(tmp_path):
    params, state = trained_state()
    with pytest.raises(TypeError, match="expected Params"):
        fm.save(tmp_path / "x", fm.to_state_dict(params))
    other = fm.init_with_state(fm.key(0), nn.BatchNorm2d(4))[1]
    with pytest.raises(ValueError, match="different spec"):
        fm.save(tmp_path / "x", params, other)
    misfit = {**params.flat(), "4.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"entry '4\.bias' \(layer '4', Linear\) has shape"):
        fm.Params(params.spec, misfit)  # the constructor refuses it; save checks anyway
    wrong = fm.extend.unchecked(fm.Params, params.spec, misfit)
    with pytest.raises(ValueError, match=r"'4\.bias': expected shape \(3,\), got \(5,\)"):
        fm.save(tmp_path / "x", wrong)
    assert not (tmp_path / "x").exists()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        fm.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fm.load(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fm.load(junk)
    junk.write_bytes(b"this is not a safetensors header at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fm.load(junk, cnn())
    with pytest.raises(TypeError, match="spec must be a layer spec"):
        fm.load(junk, "cnn")


def _with_metadata(tmp_path, metadata):
    path = tmp_path / "meta.safetensors"
    save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, path, metadata=metadata)
    return path


@pytest.mark.parametrize(
    "metadata, pattern",
    [
        ({"format": "funcmodels", "version": "3", "spec": "{}"}, "unsupported .* version '3'"),
        ({"format": "funcmodels", "version": "1"}, "without a 'spec' entry"),
        ({"format": "funcmodels", "version": "1", "spec": "{not json"}, "not valid JSON"),
        (
            {"format": "funcmodels", "version": "1", "spec": '{"type": "Nope", "params": {}}'},
            r"cannot rebuild the stored spec: spec \(type 'Nope'\): unknown layer type 'Nope'",
        ),
        ({"format": "pt"}, "no funcmodels metadata"),
    ],
)
def test_wrong_metadata(tmp_path, metadata, pattern):
    with pytest.raises(ValueError, match=pattern):
        fm.load(_with_metadata(tmp_path, metadata))


def test_file_with_foreign_metadata_loads_given_the_spec(tmp_path):
    path = _with_metadata(tmp_path, {"format": "pt"})
    params, state = fm.load(path, nn.Linear(2, 2))
    assert torch.equal(params["weight"], torch.zeros(2, 2)) and len(state) == 0
    module = torch_twin(torch.nn.Linear(2, 2), params)
    assert torch.equal(module.bias.detach(), torch.zeros(2))
