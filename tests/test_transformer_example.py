"""examples/transformer.py runs end to end: it trains, its per-sample gradients are right,
and the torch.nn module and torch.export program it ships predict as fm.apply does."""

from __future__ import annotations

import re

import pytest

from tests.helpers import parse_float, run_example


@pytest.mark.slow
def test_transformer_example_trains_and_ships():
    # Over seeds 0-5, three epochs reach a test accuracy of 0.76-0.90 (chance is 0.1; ten
    # epochs, the default, 0.94-0.97); the vmap and single-example gradients agree to
    # 1e-6 relative, the shipped module and program to 3e-6.
    out = run_example("transformer.py", "--epochs", "3")
    assert parse_float(r"test accuracy: ([0-9.]+)", out) > 0.6
    assert parse_float(r"relative difference ([0-9.e+-]+)", out) < 1e-4
    assert parse_float(r"to_module vs fm.apply: max difference ([0-9.e+-]+)", out) < 1e-4
    assert parse_float(r"torch.export \(7 of \d+\): max difference ([0-9.e+-]+)", out) < 1e-4
    assert "to_module predictions identical: True" in out
    # One line per attention tensor of the blocks (an fm.nn.Repeat of 2):
    # (16 examples, 2 blocks, *its shape).
    shapes = dict(re.findall(r"^  (blocks\.self_attn\.\S+)\s+(\(.*\))$", out, re.M))
    assert shapes == {
        "blocks.self_attn.in_proj_weight": "(16, 2, 96, 32)",
        "blocks.self_attn.in_proj_bias": "(16, 2, 96)",
        "blocks.self_attn.out_proj.weight": "(16, 2, 32, 32)",
        "blocks.self_attn.out_proj.bias": "(16, 2, 32)",
    }
    assert "to_module: RepeatModule of 2 blocks" in out
