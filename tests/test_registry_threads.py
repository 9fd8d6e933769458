"""The registry while spec classes are being defined in another thread: config lookups
(which iterate the type table for a name written in another case) never see a table
changing under them. Real threads; a short switch interval makes the interleaving
that failed ("dictionary changed size during iteration") happen within a few classes."""

from __future__ import annotations

import dataclasses
import sys
import threading

import funcmodels as fm
from funcmodels import _registry
from tests.test_tap import run_threads


def test_lookups_while_300_classes_are_defined():
    start = threading.Barrier(2, timeout=30)
    defined: list[type] = []
    finished = threading.Event()
    found: list[type | None] = []

    def define():
        start.wait()
        try:
            for i in range(300):
                cls = dataclasses.dataclass(frozen=True)(
                    type(f"ThreadRaceLayer{i}", (fm.Spec,), {"__module__": __name__})
                )
                defined.append(cls)
        finally:
            finished.set()

    def look_up():
        start.wait()
        while not finished.is_set():
            # Names in another case, and the list of known names, iterate the tables.
            found.append(_registry.lookup("Conv_Transpose1d"))
            _registry.known_names()
            fm.from_config([{"type": "RE-LU"}])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        run_threads(define, look_up)
    finally:
        sys.setswitchinterval(old)
        for cls in defined:
            _registry.remove_type(cls)
    assert len(defined) == 300
    assert found and all(cls is fm.nn.ConvTranspose1d for cls in found)
