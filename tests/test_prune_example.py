"""examples/prune.py runs end to end: the masks end at 90% sparsity, the compressed model
predicts exactly as the sparse one, its file is smaller, and the plot is written."""

from __future__ import annotations

import re

import pytest

from tests.helpers import parse_float, run_example


@pytest.mark.slow
def test_prune_example_prunes_to_90_percent_and_compresses(tmp_path):
    plot = tmp_path / "prune.png"
    out = run_example("prune.py", "--epochs", "2", "--repeats", "3", "--plot", str(plot))
    # Two dense epochs and two of pruning land far above chance (0.1) over seeds 0-2: dense
    # 0.85-0.92, 90% sparse 0.77-0.91; a broken step or a revived mask would not.
    assert parse_float(r"test accuracy \(dense\): ([0-9.]+)", out) > 0.6
    assert parse_float(r"test accuracy \(90% sparse\): ([0-9.]+)", out) > 0.5
    # Every layer's mask, and all of them together, prune round(0.9 * numel) weights.
    line = re.search(r"^mask sparsity: (.*)$", out, re.M)
    assert line, out
    sparsity = {n: float(s) for n, s in re.findall(r"(\w+) ([0-9.]+)", line.group(1))}
    assert set(sparsity) == {"1", "3", "5", "all"}, sparsity
    assert all(abs(s - 0.9) < 1e-3 for s in sparsity.values()), sparsity
    # The schedule climbs to the final sparsity and ends there.
    levels = [float(s) for s in re.findall(r"([0-9.]+): [0-9.]+", out.split("gradual")[1])]
    assert levels == sorted(levels) and levels[0] == 0.0 and levels[-1] == 0.9, levels
    # At 90% every layer is past the crossover: all three are stored in CSR form, and the
    # sparse kernel of SparseLinear and CompressedLinear give the same logits.
    assert "compressed layers: CompressedLinear, CompressedLinear, CompressedLinear" in out
    assert "predictions identical: True" in out
    assert parse_float(r"max logit difference ([0-9.e+-]+)", out) < 1e-5
    # 10% of the weights as float32 values plus int32 column indices, and the row pointers.
    dense_kib = parse_float(r"fm.save file: dense ([0-9.]+) KiB", out)
    assert parse_float(r"compressed ([0-9.]+) KiB", out) < 0.3 * dense_kib
    parse_float(r"\(compressed ([0-9.]+)x faster\)", out)  # reported; speed: benchmarks/
    assert f"plot saved to {plot}" in out
    assert plot.stat().st_size > 0
