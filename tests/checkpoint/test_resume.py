"""examples/resume.py killed with SIGKILL mid-run and mid-save, then resumed, ends with the
params, optimiser state and key of a run that never stopped, bit for bit.

Both kills are deterministic. The killed runs go through a small driver (below) that calls
the example's ``train`` and stops at a chosen place until it is killed: after step 30's
update, between checkpoints (mid-run), or inside the next save, right after its file was
synced and before the rename that publishes it (``os.fsync`` wrapped, in the driver only;
nothing of it ships). The kill is sent once the driver prints that it is there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import funcmodels as fm
from tests.helpers import ROOT

STEPS, EVERY = 60, 20
DRIVER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[3])
    import resume

    mode, directory = sys.argv[1], sys.argv[2]

    def log(line):
        print(line, flush=True)
        if mode == "run" and line.startswith("step 30 "):
            print("PAUSED", flush=True)
            time.sleep(300)

    if mode == "save":
        real_fsync = os.fsync

        def fsync(fd):
            real_fsync(fd)
            print("PAUSED", flush=True)
            time.sleep(300)

        os.fsync = fsync
    resume.train(directory, steps={steps}, every={every}, log=log)
    """
).format(steps=STEPS, every=EVERY)
# One thread everywhere: the same arithmetic in every process, and no thread contention
# on a loaded machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )


def kill_when_paused(mode: str, directory) -> list[str]:
    """Run the driver in ``mode``; SIGKILL it once it pauses; its output lines."""
    proc = launch("-c", DRIVER, mode, str(directory), str(ROOT / "examples"))
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == "PAUSED":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, lines[-5:]
    return lines


def same(a, b, path="root"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, (fm.Params, dict)):
        a, b = (a.flat(), b.flat()) if isinstance(a, fm.Params) else (a, b)
        assert list(a) == list(b), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}.{i}")
    else:
        assert a == b, path


@pytest.mark.slow
def test_killed_mid_run_and_mid_save_the_run_resumes_bit_for_bit(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = launch("examples/resume.py", "--dir", str(whole), "--steps", str(STEPS),
                       "--every", str(EVERY))  # fmt: skip
    # Killed after step 30's update: step 20 is the latest checkpoint.
    lines = kill_when_paused("run", broken)
    assert lines[-2].startswith("step 30 ")
    assert fm.checkpoint.Manager(broken).all_steps() == [20]
    # Resumed, and killed inside the save of step 40: its file is written and synced but
    # not yet published.
    lines = kill_when_paused("save", broken)
    assert lines[0] == "resumed from step 20" and lines[-2].startswith("step 40 ")
    left = [n for n in os.listdir(broken) if n.startswith(".tmp~step_40~")]
    assert len(left) == 1 and os.listdir(broken / left[0]) == ["checkpoint.safetensors"]
    assert fm.checkpoint.Manager(broken).all_steps() == [20]  # the partial one is not listed
    # Resumed once more, to the end, by the plain command.
    resumed = launch("examples/resume.py", "--dir", str(broken), "--steps", str(STEPS),
                     "--every", str(EVERY))  # fmt: skip
    out = resumed.communicate(timeout=300)[0].splitlines()
    assert resumed.returncode == 0 and out[0] == "resumed from step 20"
    assert reference.wait(timeout=300) == 0
    assert sorted(os.listdir(broken)) == ["step_40", "step_60"]  # the leftover cleaned up
    got, want = fm.checkpoint.Manager(broken).restore(), fm.checkpoint.Manager(whole).restore()
    assert got["step"] == want["step"] == STEPS
    same(got, want)
