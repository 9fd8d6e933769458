"""fm.checkpoint.Manager: numbered checkpoints, the newest kept, atomic saves that leave the
earlier checkpoints whole when the disk is full, the directory read-only or the process
killed, and leftovers of crashed writers never listed and cleaned up safely."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import funcmodels as fm
from funcmodels import _safetensors

nn = fm.nn


def tree(step: int):
    params = fm.init(fm.key(step), nn.Linear(4, 3))
    return {"params": params, "step": step, "key": fm.fold_in(fm.key(0), step)}


def hidden(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def test_save_list_restore_and_keep_the_newest(tmp_path):
    mgr = fm.checkpoint.Manager(tmp_path / "run", keep=3)
    assert mgr.all_steps() == [] and mgr.latest_step() is None
    with pytest.raises(FileNotFoundError, match=r"restore\(step=None\): no checkpoint in"):
        mgr.restore()
    for step in (0, 10, 20, 30, 40):
        assert mgr.save(step, tree(step)) == os.path.join(mgr.directory, f"step_{step}")
    assert mgr.all_steps() == [20, 30, 40] and mgr.latest_step() == 40
    assert sorted(os.listdir(mgr.directory)) == ["step_20", "step_30", "step_40"]
    got = mgr.restore(like=tree(0))
    assert got["step"] == 40 and torch.equal(got["params"]["weight"], tree(40)["params"]["weight"])
    assert mgr.restore(30)["step"] == 30
    with pytest.raises(FileNotFoundError, match=r"steps saved: \[20, 30, 40\]"):
        mgr.restore(10)
    with pytest.raises(ValueError, match=r"differs from like= at 'step': the file has a int"):
        mgr.restore(like={**tree(0), "step": 1.0})
    # a second manager on the same directory sees the same checkpoints
    assert fm.checkpoint.Manager(mgr.directory, keep=None).all_steps() == [20, 30, 40]


def test_keep_none_keeps_everything_and_steps_must_increase(tmp_path):
    mgr = fm.checkpoint.Manager(tmp_path, keep=None)
    for step in range(5):
        mgr.save(step, {"step": step})
    assert mgr.all_steps() == [0, 1, 2, 3, 4]
    for step, pattern in [
        (4, "holds step 4 already; steps must increase"),
        (2, "holds step 4 already"),
        (-1, "step must be an int >= 0"),
        (True, "step must be an int >= 0"),
        (5.0, "step must be an int >= 0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            mgr.save(step, {"step": 0})
    with pytest.raises(ValueError, match="keep must be an int >= 1 or None"):
        fm.checkpoint.Manager(tmp_path, keep=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot create the directory"):
        fm.checkpoint.Manager(tmp_path / "file")


def test_a_tree_that_cannot_be_saved_writes_nothing(tmp_path):
    mgr = fm.checkpoint.Manager(tmp_path)
    mgr.save(1, tree(1))
    with pytest.raises(TypeError, match=r"'bad' is a object"):
        mgr.save(2, {"bad": object()})
    assert os.listdir(tmp_path) == ["step_1"]


@pytest.mark.parametrize("fail_at", ["write", "rename"])
def test_a_full_disk_leaves_the_earlier_checkpoints_whole(tmp_path, monkeypatch, fail_at):
    mgr = fm.checkpoint.Manager(tmp_path, keep=1)
    mgr.save(1, tree(1))
    before = (tmp_path / "step_1" / "checkpoint.safetensors").read_bytes()
    real_write = _safetensors.write_to

    def half_then_full(f, tensors, metadata):
        f.write(b"x" * 100)  # some bytes made it, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_rename(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_at == "write":
        monkeypatch.setattr(_safetensors, "write_to", half_then_full)
    else:
        monkeypatch.setattr(os, "rename", no_rename)
    with pytest.raises(
        OSError, match=r"could not write the checkpoint in '.*': .*No space left"
    ) as e:
        mgr.save(2, tree(2))
    assert e.value.errno == errno.ENOSPC and "checkpoints saved before are unchanged" in str(
        e.value
    )
    monkeypatch.setattr(_safetensors, "write_to", real_write)
    assert os.listdir(tmp_path) == ["step_1"]  # no partial checkpoint, nothing hidden left
    assert (tmp_path / "step_1" / "checkpoint.safetensors").read_bytes() == before
    assert mgr.restore()["step"] == 1


def test_a_failed_single_file_save_leaves_the_old_file(tmp_path, monkeypatch):
    fm.checkpoint.save(tmp_path / "c", tree(1))
    fm.save(tmp_path / "m", tree(1)["params"])
    old_c, old_m = (tmp_path / "c").read_bytes(), (tmp_path / "m").read_bytes()

    def full(f, tensors, metadata):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_safetensors, "write_to", full)
    with pytest.raises(OSError, match=r"save\('.*c'\): could not write the file: .*No space") as e:
        fm.checkpoint.save(tmp_path / "c", tree(2))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"fm.save\('.*m'\): could not write the file: .*No space"):
        fm.save(tmp_path / "m", tree(2)["params"])
    assert (tmp_path / "c").read_bytes() == old_c and (tmp_path / "m").read_bytes() == old_m
    assert sorted(os.listdir(tmp_path)) == ["c", "m"]


@contextlib.contextmanager
def read_only(path):
    """``path`` made read-only: by its mode, or (root ignores modes) immutable."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        undo = ["chmod", "755", str(path)]
    else:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without chattr: cannot make a directory read-only")
        undo = ["chattr", "-i", str(path)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_read_only_directory_gives_an_oserror_naming_it(tmp_path):
    mgr = fm.checkpoint.Manager(tmp_path, keep=1)
    mgr.save(1, tree(1))
    with read_only(tmp_path):
        with pytest.raises(OSError, match=rf"could not write the checkpoint in '{tmp_path}'") as e:
            mgr.save(2, tree(2))
        assert e.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        assert mgr.all_steps() == [1] and mgr.restore()["step"] == 1
    assert os.listdir(tmp_path) == ["step_1"]


def test_leftovers_of_dead_writers_are_hidden_and_cleaned_the_rest_left_alone(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ran and is gone (and reaped)
    names = {
        f".tmp~step_9~{host}~{dead.pid}~abcd": "dead writer here",
        f".trash~step_1~{host}~{dead.pid}~ef01": "dead deleter here",
        f".tmp~step_9~{host}~{os.getpid()}~abcd": "a live writer",
        f".tmp~step_9~elsewhere~{dead.pid}~abcd": "another host",
        ".tmp~odd": "not ours",
    }
    for name in names:
        os.mkdir(tmp_path / name)
        (tmp_path / name / "checkpoint.safetensors").write_bytes(b"partial")
    os.mkdir(tmp_path / "step_3")  # a whole checkpoint's name only is listed
    os.mkdir(tmp_path / "step_x")
    os.mkdir(tmp_path / "step_04")
    mgr = fm.checkpoint.Manager(tmp_path)
    assert mgr.all_steps() == [3]
    assert hidden(tmp_path) == sorted(n for n, why in names.items() if "dead" not in why)


SLOW_FULL_DISK = textwrap.dedent(
    """
    import os, resource, signal, sys
    import torch
    import funcmodels as fm

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    mgr = fm.checkpoint.Manager(sys.argv[1], keep=1)
    mgr.save(1, {"w": torch.ones(10)})
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        mgr.save(2, {"w": torch.ones(1 << 20)})  # 4 MB into a 1 MB limit
    except OSError as e:
        print("OSError", e.errno, e)
    print(sorted(os.listdir(sys.argv[1])), mgr.restore()["w"].sum().item())
    """
)


@pytest.mark.slow
def test_a_real_write_past_the_file_size_limit_leaves_the_earlier_checkpoint(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SLOW_FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"OSError {errno.EFBIG} ")
    assert f"could not write the checkpoint in '{tmp_path}'" in lines[0]
    assert lines[1] == "['step_1'] 10.0"
