"""examples/distributed.py runs under torchrun on 2 gloo processes: the data- and
expert-parallel training follows the single-process one step by step, and the gathered
checkpoint loads in one process and predicts as the distributed model does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT, parse_float


@pytest.mark.slow
def test_distributed_example_matches_single_process_training(tmp_path):
    out_file = tmp_path / "moe.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port: safe next to other runs
            "--nproc-per-node",
            "2",
            str(ROOT / "examples" / "distributed.py"),
            "--epochs",
            "1",
            "--out",
            str(out_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exited with {proc.returncode}:\n{out}\n{proc.stderr[-3000:]}"
    # One epoch, 22 steps: the curves differ by ~2e-7, the params by ~4e-6 (Adam's
    # normalised steps carry the rounding along); accuracy ~0.70 (chance is 0.1).
    assert "2 process(es), gloo on cpu: 4 experts, 2 on each rank" in out
    assert "distributed training: 1 epoch(s), 22 steps" in out
    assert parse_float(r"max \|distributed - single-process\| = ([0-9.e+-]+)", out) < 1e-5
    assert parse_float(r"reference: max difference ([0-9.e+-]+)", out) < 1e-4
    assert parse_float(r"test accuracy \(distributed\): ([0-9.]+)", out) > 0.4
    assert "replicated params identical on every rank: True" in out
    assert (
        parse_float(r"max \|logit difference\| vs the distributed model ([0-9.e+-]+)", out) < 1e-5
    )
    assert "predictions identical: True" in out
    assert "the file sharded again equals the trained params: True" in out
    assert out_file.exists()
