"""Bad checkpoint files fail at once with an error naming the file: truncated files, wrong
headers, hostile sizes (refused before anything is allocated), tampered descriptions."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import funcmodels as fm

nn = fm.nn


def raw_file(path, header, data=b"", size=None):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if size is None else size) + text + data)
    return path


def good(tmp_path):
    tree = {"p": fm.init(fm.key(0), nn.Linear(3, 2)), "step": 5, "w": torch.arange(6.0)}
    fm.checkpoint.save(tmp_path / "good", tree)
    return tmp_path / "good"


def test_missing_files_and_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load\('.*nothing'\): no such file"):
        fm.checkpoint.load(tmp_path / "nothing")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fm.checkpoint.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"the directory .*nowhere' does not exist"):
        fm.checkpoint.save(tmp_path / "nowhere" / "c", {})
    with pytest.raises(IsADirectoryError, match="is a directory, expected a file path"):
        fm.checkpoint.save(tmp_path, {})


def test_truncated_files_are_refused_wherever_they_end(tmp_path):
    raw = good(tmp_path).read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for cut in (0, 5, 8, 20, header_end - 1, header_end, header_end + 3, len(raw) - 1):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}'\): not a readable safetensors file"):
            fm.checkpoint.load(path)


@pytest.mark.parametrize(
    "header, data, size, pattern",
    [
        ({}, b"", 2**63, r"the header claims 9223372036854775808 bytes"),
        ({}, b"", 10**9, r"the header claims 1000000000 bytes"),
        ([1, 2], b"", None, "the header is a JSON list"),
        # 10^24 bytes claimed by a 4-byte tensor: refused before anything is allocated
        (
            {"x": {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            r"need 4000000000000000000000000",
        ),
        (
            {"x": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}},
            b"\0" * 4,
            None,
            r"the tensors hold 4000000000 bytes; the file has 4",
        ),
        (
            {"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            b"\0" * 8,
            None,
            r"starts at byte 4, expected 0 \(holes or overlaps\)",
        ),
        ({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "dtype 'Q7'"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        ({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, None, "expected dtype, shape and"),
        ({"__metadata__": {"a": 1}}, b"", None, "__metadata__ must map strings to strings"),
    ],
)
def test_hostile_headers_are_refused(tmp_path, header, data, size, pattern):
    path = raw_file(tmp_path / "bad", header, data, size)
    with pytest.raises(ValueError, match=r"load\('.*bad'\): not a readable safetensors file: "):
        fm.checkpoint.load(path)
    with pytest.raises(ValueError, match=pattern):
        fm.checkpoint.load(path)
    with pytest.raises(ValueError, match=pattern):  # fm.load reads through the same checks
        fm.load(path, nn.Linear(1, 1))


def test_a_name_listed_twice_is_refused(tmp_path):
    text = (
        b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"x":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}}'
    )
    path = tmp_path / "twice"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)
    with pytest.raises(ValueError, match="the header lists 'x' twice"):
        fm.checkpoint.load(path)
    with pytest.raises(ValueError, match="the header lists 'x' twice"):
        fm.load(path, nn.Linear(1, 1))


def rewrite(src, dst, drop=(), **changes):
    with safe_open(src, framework="pt") as f:
        meta = {k: v for k, v in {**f.metadata(), **changes}.items() if k not in drop}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, dst, metadata=meta)
    return dst


def _tree(node):
    return json.dumps({"dict": node})


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"format": "pt"}, r"not a funcmodels checkpoint \(format 'pt'"),
        ({"version": "9"}, r"unsupported checkpoint version '9'"),
        ({"tree": "{"}, r"the 'tree' entry is not valid JSON"),
        ({"tree": "[" * 100_000 + "]" * 100_000}, r"the 'tree' entry is nested too deeply"),
        ({"specs": '[{"type": "nothing"}]'}, r"cannot rebuild the stored spec 0"),
        ({"tree": '{"dict": {}, "dict": {}}'}, r"the key 'dict' appears twice"),
        ({"tree": _tree({"a": {"what": 1}})}, r"at 'a': not a node: keys \['what'\]"),
        ({"tree": _tree({"a": {"int": "1e5"}})}, r"at 'a': bad int '1e5'"),
        ({"tree": _tree({"a": {"int": 5}})}, r"at 'a': bad int 5"),
        ({"tree": _tree({"a": {"float": "0.10000000000000001"}})}, r"at 'a': bad float"),
        ({"tree": _tree({"a": {"float": "nan:0x0000000000000001"}})}, r"at 'a': bad float"),
        ({"tree": _tree({"a": {"tensor": "nope"}})}, r"at 'a': no stored tensor named 'nope'"),
        ({"tree": _tree({"a": {"tensor": "w"}, "b": {"tensor": "w"}})}, r"'w' is named twice"),
        ({"tree": _tree({"a": {"params": 3, "entries": {}}})}, r"at 'a': bad spec index 3"),
        (
            {"tree": _tree({"a": {"params": 0, "entries": {"weight": {"tensor": "w"}}}})},
            r"params of Linear must hold its spec's entries: missing \['bias'\]",
        ),
        ({"tree": _tree({"a": {"tensor": "w", "requires_grad": "yes"}})}, "bad requires_grad"),
        ({"tree": _tree({"a": {"tensor": "w", "complex": True}})}, "bad complex flag"),
        ({"tree": _tree({"a": {"list": {}}})}, r"at 'a': a list holds a JSON list"),
        ({"tree": _tree({"w": {"tensor": "w"}})}, r"tensors the tree does not name: \['p.bias'"),
    ],
)
def test_tampered_descriptions_are_refused_naming_the_path(tmp_path, changes, pattern):
    bad = rewrite(good(tmp_path), tmp_path / "bad", **changes)
    with pytest.raises(ValueError, match=pattern):
        fm.checkpoint.load(bad)


def test_other_files_say_what_they_are(tmp_path):
    params = fm.init(fm.key(0), nn.Linear(3, 2))
    fm.save(tmp_path / "model", params)
    with pytest.raises(ValueError, match=r"a model file written by fm.save; read it with fm.load"):
        fm.checkpoint.load(tmp_path / "model")
    with pytest.raises(ValueError, match=r"the checkpoint has no 'tree' entry"):
        fm.checkpoint.load(rewrite(good(tmp_path), tmp_path / "bad", drop=("tree",)))
    save_file({"w": torch.zeros(1)}, tmp_path / "plain")
    with pytest.raises(ValueError, match=r"not a funcmodels checkpoint \(format None"):
        fm.checkpoint.load(tmp_path / "plain")
