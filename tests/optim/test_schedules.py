"""Schedules against closed forms and torch.optim.lr_scheduler; tensor counts, vmap."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from funcmodels import optim

STEPS = 40


def values(schedule, steps: int = STEPS) -> list[float]:
    return [float(schedule(torch.tensor(t))) for t in range(steps)]


def torch_lrs(make_scheduler, lr: float, steps: int = STEPS) -> list[float]:
    """The learning rate torch's scheduler gives at each of ``steps`` optimiser steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def close(a: list[float], b: list[float], rtol: float = 1e-12, atol: float = 1e-15) -> None:
    torch.testing.assert_close(
        torch.tensor(a, dtype=torch.float64),
        torch.tensor(b, dtype=torch.float64),
        rtol=rtol,
        atol=atol,
    )


def test_constant_and_linear_match_torch():
    close(values(optim.constant_schedule(0.3)), [0.3] * STEPS)
    ours = values(optim.linear_schedule(0.1 * 0.25, 0.1, transition_steps=10))
    theirs = torch_lrs(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.25, 1.0, total_iters=10), 0.1
    )
    close(ours, theirs, rtol=1e-12)
    begin = values(optim.linear_schedule(1.0, 0.0, 4, transition_begin=3), 10)
    close(begin, [1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0])


def test_cosine_decay_matches_torch_and_the_closed_form():
    ours = values(optim.cosine_decay_schedule(0.1, decay_steps=25, alpha=0.1))
    theirs = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=25, eta_min=0.01), 0.1
    )
    close(ours[:26], theirs[:26], rtol=1e-10)
    assert ours[25:] == [ours[25]] * (STEPS - 25)  # held at the end value
    powered = values(optim.cosine_decay_schedule(2.0, 10, exponent=2.0), 11)
    close(powered, [2.0 * (0.5 * (1 + math.cos(math.pi * t / 10))) ** 2 for t in range(11)])


def test_warmup_cosine_decay_closed_form():
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=5, decay_steps=15, end_value=0.1)
    got = values(s, 20)
    want = [t / 5 for t in range(5)] + [
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t - 5, 10) / 10)) for t in range(5, 20)
    ]
    close(got, want)
    assert got[5] == 1.0 and abs(got[15] - 0.1) < 1e-15


def test_exponential_decay_matches_torch():
    ours = values(optim.exponential_decay(0.5, transition_steps=1, decay_rate=0.9))
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), 0.5)
    close(ours, theirs, rtol=1e-12)
    stairs = values(
        optim.exponential_decay(0.5, transition_steps=7, decay_rate=0.5, staircase=True)
    )
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), 0.5)
    close(stairs, theirs)
    bounded = values(optim.exponential_decay(1.0, 1, 0.5, end_value=0.2), 6)
    close(bounded, [1.0, 0.5, 0.25, 0.2, 0.2, 0.2])


def test_piecewise_constant_matches_multistep_lr():
    ours = values(optim.piecewise_constant_schedule(0.3, {10: 0.1, 25: 0.1}))
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [10, 25], gamma=0.1), 0.3)
    close(ours, theirs, rtol=1e-12)


def test_join_and_polynomial():
    s = optim.join_schedules(
        [optim.constant_schedule(1.0), optim.linear_schedule(2.0, 0.0, 4)], [3]
    )
    close(values(s, 9), [1, 1, 1, 2, 1.5, 1, 0.5, 0, 0])
    p = values(optim.polynomial_schedule(1.0, 0.0, power=2.0, transition_steps=4), 6)
    close(p, [1, 0.5625, 0.25, 0.0625, 0, 0])


def test_schedules_take_tensor_counts_under_vmap_and_ints():
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10)
    counts = torch.arange(12)
    batched = vmap(s)(counts)
    close(batched.tolist(), values(s, 12))
    assert batched.dtype == torch.float64
    assert float(s(4)) == float(s(torch.tensor(4)))


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (
            lambda: optim.cosine_decay_schedule(1.0, 0),
            ValueError,
            "decay_steps must be positive",
        ),
        (
            lambda: optim.cosine_decay_schedule("1", 10),
            TypeError,
            "init_value must be a finite number",
        ),
        (
            lambda: optim.warmup_cosine_decay_schedule(0, 1, 10, 5),
            ValueError,
            "decay_steps \\(5\\) must exceed",
        ),
        (
            lambda: optim.join_schedules([optim.constant_schedule(1)], [3]),
            ValueError,
            "need 0 boundaries",
        ),
        (lambda: optim.exponential_decay(1.0, 1, -0.5), ValueError, "decay_rate must be >= 0"),
    ],
)
def test_bad_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_degenerate_lengths_give_a_constant_as_optax():
    # optax holds init_value where there is no transition (and counts a negative begin as 0)
    assert values(optim.linear_schedule(1.0, 0.0, 0), 3) == [1.0] * 3
    assert values(optim.exponential_decay(0.5, 0, 0.1), 3) == [0.5] * 3
    assert values(optim.exponential_decay(0.5, 2, 0.0), 3) == [0.5] * 3
    assert values(optim.linear_schedule(1.0, 0.0, 2, transition_begin=-5), 3) == [1.0, 0.5, 0.0]
