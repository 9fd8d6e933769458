"""Taps are local to a thread: another thread's fm.run is not tapped and may tap its own.

Real threads, with barriers forcing the interleaving that went wrong when the tap was one
global: thread B runs while thread A is inside its ``tapping`` block.
"""

from __future__ import annotations

import threading

import torch

import funcmodels as fm
from funcmodels import extend

nn = fm.nn


def run_threads(*targets) -> None:
    """Run each target in its own thread; re-raise the first error one of them raised."""
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(e)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def test_a_tap_sees_only_its_own_threads_calls():
    spec = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    params = fm.init(fm.key(0), spec)
    x = torch.ones(2, 3)
    expected = fm.apply(params, x)
    inside, done = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    seen_a: list[str] = []
    seen_b: list[str] = []
    outputs = {}

    def record(seen):
        def tap(ctx, inp, out):
            seen.append(ctx.path)
            return out

        return tap

    def a():
        with extend.tapping(record(seen_a)):
            inside.wait()  # B runs now, while A's tap is active
            done.wait()
            outputs["a"] = fm.apply(params, x)

    def b():
        inside.wait()
        outputs["b_plain"] = fm.apply(params, x)
        with extend.tapping(record(seen_b)):  # "taps do not nest" with one global tap
            outputs["b_tapped"] = fm.apply(params, x)
        done.wait()

    run_threads(a, b)
    assert seen_a == ["0", "1", ""]
    assert seen_b == ["0", "1", ""]
    for out in outputs.values():
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
