"""Mechanic (Cutkosky et al., 2023): a learning-rate tuner around any optimiser, as
optax.contrib's ``mechanize``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import (
    GradientTransformation,
    Scalar,
    as_transformation,
    check_state,
    flatten,
    flatten_like,
    number,
    unflatten,
)
from .._more_common import hyper
from .._utilities import safe_increment, with_extra_args_support
from ._common import device_of, lowest_dtype, need_params, tree_sum, vdot


class MechanicState(NamedTuple):
    """The state of :func:`mechanize`."""

    base_optimizer_state: Any
    """the base optimiser's state"""
    count: torch.Tensor
    """the step count (0-dim int32)"""
    r: torch.Tensor
    """per beta, the reward (shape ``(num_betas,)``, the params' lowest dtype)"""
    m: torch.Tensor
    """per beta, the largest |h| so far"""
    v: torch.Tensor
    """per beta, the sum of h squared"""
    s: torch.Tensor
    """per beta, the scale"""
    x0: Any
    """the params at the first step"""


def _norm(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return tree_sum([x.square() for x in xs], dtype).sqrt()


def _tuner(state: MechanicState, h: torch.Tensor, hp: dict) -> tuple:
    """The new ``(r, m, v, s)`` from the inner product ``h`` (0-dim)."""
    m, s = state.m, state.s
    h = h.to(m.dtype)
    n = hp["num_betas"]
    betas = torch.tensor([1.0 - 0.1**i for i in range(1, n + 1)], dtype=s.dtype, device=s.device)
    clipped = torch.clamp(torch.ones_like(m) * h, -m, m)
    m = torch.maximum(betas * m, h.abs() + hyper(hp["eps"], h))
    v = betas**2 * state.v + h**2
    r = betas * state.r + clipped * s
    wealth = (hyper(hp["s_init"], h) / n) * m + torch.clamp_min(r, 0.0)
    return r, m, v, wealth / (v.sqrt() + hyper(hp["eps"], h))


def mechanize(
    base_optimizer: GradientTransformation,
    weight_decay: Scalar = 1e-2,
    eps: Scalar = 1e-8,
    s_init: Scalar = 1e-6,
    num_betas: int = 6,
) -> GradientTransformation:
    """Mechanic around ``base_optimizer`` (optax.contrib's ``mechanize``): the base
    optimiser's updates are accumulated from the first params ``x0`` and scaled by a
    factor tuned online, ``x = x0 + sum(s) * delta``.

    Arguments:
        base_optimizer: the GradientTransformation to tune.
        weight_decay: the weight decay of the tuner's inner products.
        eps: a small number for stability.
        s_init: the first scale.
        num_betas: how many decay rates ``1 - 0.1**i`` the tuner runs.

    Returns:
        A GradientTransformation whose ``update`` needs the params (and passes extra
            keyword arguments to the base optimiser); its state is a :class:`MechanicState`.

    Raises:
        ValueError: a hyperparameter out of range (``num_betas`` not a positive int).
        TypeError: a hyperparameter of the wrong type, a base optimiser that is not one.
    """
    where = "fm.optim.contrib.mechanize"
    base = with_extra_args_support(as_transformation(where, "base_optimizer", base_optimizer))
    hp = dict(wd=number(where, "weight_decay", weight_decay), eps=number(where, "eps", eps))
    hp.update(s_init=number(where, "s_init", s_init), num_betas=num_betas)
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"{where}: num_betas must be a positive int, got {num_betas!r}")

    def init(params):
        dtype, device = lowest_dtype(params), device_of(params)

        def vec():
            return torch.zeros(num_betas, dtype=dtype, device=device)

        s = torch.ones(num_betas, dtype=dtype, device=device) * hyper(s_init, vec())
        count = torch.zeros((), dtype=torch.int32, device=device)
        x0 = pytree.tree_map(torch.clone, params)
        return MechanicState(base.init(params), count, vec(), vec(), vec(), s, x0)

    def update(updates, state, params=None, **extra_args):
        check_state(state, MechanicState, where)
        need_params(where, params)
        neg, base_state = base.update(updates, state.base_optimizer_state, params, **extra_args)
        us, spec = flatten(updates)
        ps = flatten_like(params, spec, "the params", "the updates")
        negs = flatten_like(neg, spec, "the base optimizer's updates", "the updates")
        first = state.count == 0
        old_x0s = flatten_like(state.x0, spec, "x0")
        x0s = [torch.where(first, p, x) for p, x in zip(ps, old_x0s, strict=True)]
        s_sum = state.s.sum()
        wide = torch.promote_types(s_sum.dtype, us[0].dtype) if us else s_sum.dtype
        factor = hyper(hp["wd"], s_sum) * s_sum * _norm(us, wide) / (_norm(ps, wide) + hp["eps"])
        us = [u + factor.to(u.dtype) * p for u, p in zip(us, ps, strict=True)]
        prev = [(x0 - p) / (s_sum + hp["eps"]).to(p.dtype) for p, x0 in zip(ps, x0s, strict=True)]
        delta = [d - n for d, n in zip(prev, negs, strict=True)]
        r, m, v, s = _tuner(state, vdot(us, prev, wide), hp)
        total = s.sum()
        out = [x0 - total.to(d.dtype) * d - p for x0, d, p in zip(x0s, delta, ps, strict=True)]
        x0_tree = unflatten(x0s, spec)
        return unflatten(out, spec), MechanicState(
            base_state, safe_increment(state.count), r, m, v, s, x0_tree
        )

    return GradientTransformation(init, update)
