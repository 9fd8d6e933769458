"""Using transforms.qat prints nothing of torchao's import (its optional kernels failing
to load, torch's deprecation of its Enum registration), and hides nothing after it: a
warning logged by torchao once imported still reaches the user. In a subprocess, since
torchao is imported once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torchao")

SCRIPT = """
import logging
import torch
import funcmodels as fm
import transforms
module = transforms.to_module(fm.init(fm.key(0), fm.nn.Sequential(fm.nn.Linear(4, 4))))
transforms.qat.prepare(module, (torch.randn(2, 4),))
logging.getLogger("torchao").warning("Failed to load the user's own torchao thing")
"""


def test_torchaos_import_noise_is_silenced_and_later_warnings_are_not():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    lines = done.stderr.splitlines()
    assert not [line for line in lines if "_C_" in line and "Failed to load" in line]
    assert not [line for line in lines if "is an Enum subclass" in line]
    assert "Failed to load the user's own torchao thing" in lines
