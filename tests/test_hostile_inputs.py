"""Hostile and ambiguous files and configs: each refused at once with an error naming the
file or the entry, before anything big is built.

Bounds are asserted by the error (a budget check that raises before allocation names the
budget), never by wall time; the time each refusal takes is measured in NOTES.md.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import funcmodels as fm

nn = fm.nn


def stored(tmp_path, spec_json: str, tensors: dict | None = None):
    """A safetensors file whose funcmodels metadata holds ``spec_json`` as the spec."""
    path = tmp_path / "hostile.safetensors"
    metadata = {"format": "funcmodels", "version": "2", "spec": spec_json}
    save_file(tensors or {"w": torch.zeros(1)}, path, metadata=metadata)
    return path


def lstm(num_layers: int) -> dict:
    return {"type": "lstm", "params": {"input_size": 4, "hidden_size": 4, "num_layers": num_layers}}


def encoder(num_layers: int) -> dict:
    layer = {"type": "TransformerEncoderLayer", "params": {"d_model": 8, "nhead": 2}}
    params = {"encoder_layer": layer, "num_layers": num_layers}
    return {"type": "TransformerEncoder", "params": params}


# -- item 1: every count against one budget -----------------------------------------------


@pytest.mark.parametrize(
    "entry, field",
    [
        (lstm(10**9), "LSTM: num_layers=1000000000"),
        (encoder(10**9), "TransformerEncoder: num_layers=1000000000"),
        ({"type": "stack", "params": {"spec": {"type": "relu"}, "n": 10**9}}, "Stack: n="),
        ({"type": "repeat", "params": {"spec": {"type": "relu"}, "n": 10**9}}, "Repeat: n="),
        (
            {"type": "transformer", "params": {"num_encoder_layers": 10**9}},
            "TransformerEncoder: num_layers=1000000000",
        ),
    ],
)
def test_a_count_field_is_bounded_in_configs_and_files(tmp_path, entry, field):
    budget = r"layers; a spec holds at most 100000"
    with pytest.raises(ValueError, match=rf"config\[0\] \(name 'layer_0', .*{field}.*{budget}"):
        fm.from_config([entry])
    path = stored(tmp_path, json.dumps([entry]))
    with pytest.raises(ValueError, match=rf"hostile.safetensors'\): cannot rebuild .*{budget}"):
        fm.load(path)
    yaml_path = tmp_path / "counts.json"
    yaml_path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=budget):
        fm.from_config(fm.load_config(yaml_path))


def test_counts_multiply_through_nesting_and_add_up_over_a_document():
    # Each entry is within the budget; 3 levels of Stack, or 1000 entries, are not.
    inner = {"type": "stack", "params": {"spec": {"type": "relu"}, "n": 100}}
    middle = {"type": "stack", "params": {"spec": inner, "n": 100}}
    stack = {"type": "stack", "params": {"spec": {"type": "relu"}, "n": 199}}
    with pytest.raises(ValueError, match=r"Stack: n=100 makes it 1010101 layers"):
        fm.from_config([{"type": "stack", "params": {"spec": middle, "n": 100}}])
    with pytest.raises(
        ValueError, match=r"config: the document stands for 200000 layers .* at most 100000"
    ):
        fm.from_config([stack] * 1000)
    # Within the budget, fine.
    assert fm.from_config([stack] * 10).layer_count() == 1 + 10 * 200


def test_a_count_is_bounded_at_direct_construction():
    with pytest.raises(ValueError, match=r"LSTM: num_layers=1000000000 makes it"):
        nn.LSTM(4, 4, num_layers=10**9)
    with pytest.raises(ValueError, match=r"GRU: num_layers=60000 makes it 120000 layers"):
        nn.GRU(4, 4, num_layers=60_000, bidirectional=True)
    with pytest.raises(ValueError, match=r"Stack: n=about 10\^500\d makes it"):
        nn.Stack(nn.ReLU(), 10**5001)
    layer = nn.TransformerDecoderLayer(8, 2)
    with pytest.raises(ValueError, match=r"TransformerDecoder: num_layers=100000 makes it"):
        nn.TransformerDecoder(layer, 100_000)


def test_layer_count_is_the_number_of_layers():
    assert nn.ReLU().layer_count() == 1
    assert nn.Sequential(nn.Linear(2, 2), nn.ReLU()).layer_count() == 3
    assert nn.Stack(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 5).layer_count() == 1 + 5 * 3
    assert nn.LSTM(2, 2, num_layers=3, bidirectional=True).layer_count() == 6
    # A deep plain composite is counted without recursion.
    deep = nn.ReLU()
    for _ in range(3000):
        deep = nn.Sequential(deep)
    assert deep.layer_count() == 3001


# -- item 2: alias bombs --------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """About 600 bytes of YAML aliases that stand for 10^levels ints in kernel_size."""
    ones = ", ".join(["1"] * 10)
    lines = ["- type: maxpool2d", "  params:", f"    kernel_size: &l0 [{ones}]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"    padding: &l{i} [{refs}]" if i == 1 else f"    p{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_by_the_value_budget(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1000
    with pytest.raises(
        ValueError,
        match=r"bomb.yaml'.*stands for more than 2000000 values \(aliases counted as copies\)",
    ):
        fm.load_config(path)


def test_shared_lists_passed_to_from_config_are_bounded():
    # Python data can share lists as YAML aliases do: 10^9 ints in a few hundred objects.
    value: list = [1] * 10
    for _ in range(8):
        value = [value] * 10
    with pytest.raises(
        ValueError, match=r"config\[0\] \(name 'layer_0', type 'maxpool2d'\): .*more than 2000000"
    ):
        fm.from_config([{"type": "maxpool2d", "params": {"kernel_size": value}}])


# -- item 3: big documents ------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".yaml", ".json"])
def test_an_oversized_config_is_refused_before_it_is_read(tmp_path, ext):
    path = tmp_path / f"big{ext}"
    entry = "- type: relu\n" if ext == ".yaml" else '{"type": "relu"},'
    with open(path, "w") as f:
        f.write("" if ext == ".yaml" else "[")
        f.write(entry * (5 * 2**20 // len(entry)))
    limit = 524288 if ext == ".yaml" else 4194304
    with pytest.raises(
        ValueError, match=rf"big{ext}'.*the document is \d+ bytes; .* up to {limit} bytes"
    ):
        fm.load_config(path)


def test_yaml_uses_the_c_loader_where_present(monkeypatch):
    yaml = pytest.importorskip("yaml")
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML built without libyaml")
    from funcmodels import _documents

    assert issubclass(_documents._yaml_loader("x"), yaml.CSafeLoader)


def test_a_config_of_many_entries_reads(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("- type: relu\n" * 20_000)
    assert len(fm.load_config(path)) == 20_000


# -- item 4: integers longer than Python converts -----------------------------------------


def test_a_5000_digit_integer_names_the_file_and_the_entry(tmp_path):
    digits = "7" * 5000
    path = tmp_path / "long.json"
    path.write_text(f'[{{"type": "linear", "params": {{"out_features": {digits}}}}}]')
    with pytest.raises(
        ValueError,
        match=r"long.json'.*config\[0\]\.params\.out_features is an integer of 5000 digits",
    ):
        fm.load_config(path)
    path = tmp_path / "long.yaml"
    path.write_text(f"- type: linear\n  params:\n    out_features: {digits}\n")
    with pytest.raises(ValueError, match=r"long.yaml', line 3: an integer of 5000 digits"):
        fm.load_config(path)
    spec_json = f'{{"type": "linear", "params": {{"in_features": 1, "out_features": {digits}}}}}'
    with pytest.raises(
        ValueError,
        match=r"hostile.safetensors'\): the stored spec: spec\.params\.out_features is an "
        r"integer of 5000 digits",
    ):
        fm.load(stored(tmp_path, spec_json))
    with pytest.raises(
        ValueError,
        match=r"config\[0\] .*config\[0\]\.params\.out_features is an integer of about 5000",
    ):
        fm.from_config([{"type": "linear", "params": {"out_features": 7 * 10**4999}}])


# -- item 5: ambiguous files ----------------------------------------------------------------


def test_a_stored_spec_with_a_repeated_key_is_refused(tmp_path):
    spec_json = '{"type": "relu", "type": "gelu"}'
    with pytest.raises(
        ValueError, match=r"hostile.safetensors'\): the stored spec: the key 'type' appears twice"
    ):
        fm.load(stored(tmp_path, spec_json))


def test_a_safetensors_file_naming_one_tensor_twice_is_refused(tmp_path):
    # Written by hand: safetensors' own writer cannot repeat a name.
    header = (
        b'{"weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "weight": {"dtype": "F16", "shape": [1], "data_offsets": [4, 6]}}'
    )
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(6))
    with pytest.raises(ValueError, match=r"twice.safetensors'\): .*lists 'weight' twice"):
        fm.load(path, nn.Linear(1, 1, bias=False))


def test_mixed_float_dtypes_within_a_layer_are_refused(tmp_path):
    spec = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = fm.to_state_dict(fm.init(fm.key(0), spec))
    sd["0.bias"] = sd["0.bias"].double()
    with pytest.raises(
        ValueError,
        match=r"layer '0' mixes floating dtypes \('0.weight' torch.float32, '0.bias' "
        r"torch.float64\)",
    ):
        fm.from_state_dict(spec, sd)
    path = tmp_path / "mixed.safetensors"
    save_file(sd, path)
    with pytest.raises(ValueError, match=r"mixed.safetensors'\).*layer '0' mixes floating"):
        fm.load(path, spec)
    # Layers of different dtypes are a model's choice, and load.
    sd = fm.to_state_dict(fm.init(fm.key(0), spec))
    sd["1.weight"], sd["1.bias"] = sd["1.weight"].double(), sd["1.bias"].double()
    params, _ = fm.from_state_dict(spec, sd)
    assert params["1.weight"].dtype == torch.float64


def test_an_int32_running_mean_is_refused_at_load(tmp_path):
    spec = nn.BatchNorm1d(3)
    params, state = fm.init_with_state(fm.key(0), spec)
    sd = fm.to_state_dict(params, state)
    sd["running_mean"] = sd["running_mean"].to(torch.int32)
    path = tmp_path / "int_stats.safetensors"
    save_file(sd, path)
    with pytest.raises(
        ValueError,
        match=r"'running_mean': expected a floating dtype \(the params'\), got torch.int32",
    ):
        fm.load(path, spec)


# -- item 6: YAML merge keys -----------------------------------------------------------------


def test_yaml_merge_keys_are_read(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "- &base\n"
        "  type: linear\n"
        "  params: {in_features: 4, out_features: 8}\n"
        "- <<: *base\n"
        "  params: {in_features: 8, out_features: 2}\n"
        "  name: head\n"
    )
    config = fm.load_config(path)
    assert config == [
        {"type": "linear", "params": {"in_features": 4, "out_features": 8}},
        {"type": "linear", "params": {"in_features": 8, "out_features": 2}, "name": "head"},
    ]
    spec = fm.from_config(config)
    assert spec == nn.Sequential({"layer_0": nn.Linear(4, 8), "head": nn.Linear(8, 2)})
    # A key repeated in the mapping itself is still refused.
    path.write_text("- <<: {type: relu}\n  name: a\n  name: b\n")
    with pytest.raises(ValueError, match=r"merge.yaml', line 3: the key 'name' appears twice"):
        fm.load_config(path)
