"""fm.summary: per-layer rows and totals, checked against the torch twin of the model."""

from __future__ import annotations

import re

import pytest
import torch

import funcmodels as fm
from tests.helpers import torch_shapes, torch_twin_of

fnn = fm.nn

SPEC = fnn.Sequential(
    {
        "stem": fnn.Conv2d(out_channels=8, kernel_size=3, padding=1, bias=False),
        "norm": fnn.BatchNorm2d(),
        "act": fnn.ReLU(),
        "block": fnn.ResidualBlock(out_channels=16, stride=2, use_se=True),
        "pool": fnn.AdaptiveAvgPool2d(1),
        "flat": fnn.Flatten(),
        "head": fnn.Linear(out_features=10),
    }
)
INPUT = (3, 8, 8)


def _params_and_module():
    params, state = fm.init_with_state(fm.key(0), SPEC, input_shape=INPUT)
    module = torch_twin_of(params.spec)
    module.load_state_dict(fm.to_state_dict(params, state), strict=True)
    return params, module


def test_rows_and_totals_match_the_torch_module():
    _, module = _params_and_module()
    s = fm.summary(SPEC, INPUT)
    torch_params = dict(module.named_parameters())
    torch_buffers = dict(module.named_buffers())
    assert s.trainable == sum(p.numel() for p in torch_params.values())
    assert s.state == sum(b.numel() for b in torch_buffers.values())
    assert s.param_bytes == sum(p.numel() * p.element_size() for p in torch_params.values())
    assert s.state_bytes == sum(b.numel() * b.element_size() for b in torch_buffers.values())
    assert s.bytes == s.param_bytes + s.state_bytes
    # One row per module, in torch's order, with its parameters counted recursively.
    modules = dict(module.named_modules())
    assert [r.path for r in s.rows] == list(modules)
    shapes = torch_shapes(module, torch.zeros(2, *INPUT))
    for r in s.rows:
        m = modules[r.path]
        assert r.params == sum(p.numel() for p in m.parameters()), r.path
        assert r.state == sum(b.numel() for b in m.buffers()), r.path
        assert r.out_shape == shapes[r.path], r.path
        assert r.type == type(m).__name__.removeprefix("Torch"), r.path


def test_table_lists_every_layer_with_shape_type_and_count():
    s = fm.summary(SPEC, INPUT)
    text = str(s)
    assert repr(s) == text
    lines = text.splitlines()
    assert re.match(r"layer\s+type\s+output shape\s+params$", lines[0])
    assert re.match(r"<input>\s+\(N, 3, 8, 8\)$", lines[2])
    for r in s.rows:
        name = r.path or "<root>"
        shape = "(N, " + ", ".join(map(str, r.out_shape)) + ")"
        pattern = rf"^\s*{re.escape(name)}\s+{r.type}\s+{re.escape(shape)}\s+{r.params:,}$"
        assert re.search(pattern, text, flags=re.M), pattern
    assert f"trainable parameters: {s.trainable:,} (" in text
    assert f"state (buffers):      {s.state:,} (" in text


def test_params_give_their_dtype_and_no_input_shape_gives_no_shapes():
    params = fm.init(fm.key(0), SPEC, input_shape=INPUT, dtype=torch.float64)
    s32, s64 = fm.summary(params.spec), fm.summary(params)
    assert s64.trainable == s32.trainable and s64.param_bytes == 2 * s32.param_bytes
    # running_mean/var follow the params' dtype; num_batches_tracked stays int64.
    assert s64.state_bytes > s32.state_bytes
    assert all(r.out_shape is None for r in s64.rows) and "<input>" not in str(s64)
    assert fm.summary(SPEC, INPUT, dtype=torch.float64).param_bytes == s64.param_bytes


def test_mistakes_are_reported():
    with pytest.raises(ValueError, match=r"layer 'stem' \(Conv2d\): in_channels omitted"):
        fm.summary(SPEC)
    with pytest.raises(ValueError, match=r"layer 'head' \(Linear\): expected 4 input features"):
        fm.summary(fnn.Sequential({"head": fnn.Linear(4, 2)}), (3,))
    with pytest.raises(TypeError, match="fm.summary: expected a layer spec or Params"):
        fm.summary([fnn.ReLU()], (3,))
    with pytest.raises(TypeError, match="fm.summary: input_shape must be"):
        fm.summary(SPEC, "3x8x8")
