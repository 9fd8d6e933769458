"""Learning-rate-free Adam: D-Adaptation's AdamW (Defazio and Mishchenko, 2023) and
Prodigy (Mishchenko and Defazio, 2023), as optax.contrib's ``dadapt_adamw`` and
``prodigy``.

Their 0-dim scalars (``estim_lr``, ``numerator_weighted``) are kept in the params' lowest
floating dtype, as optax initialises them; optax lets JAX promote them to float64 after
the first step of a tree mixing float32 and float64 leaves, fm.optim stores them back in
their own dtype (the dtype rule).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import (
    GradientTransformation,
    Scalar,
    check_state,
    flatten,
    flatten_like,
    is_schedule,
    number,
    unflatten,
)
from .._more_common import hyper, rebuild, work_dtype, zeros
from .._utilities import safe_increment
from ._common import device_of, lowest_dtype, need_params, scalar, tree_sum, vdot


class DAdaptAdamWState(NamedTuple):
    """The state of :func:`dadapt_adamw`."""

    exp_avg: Any
    """the first moment of the scaled updates"""
    exp_avg_sq: Any
    """the second moment of the updates"""
    grad_sum: Any
    """the weighted sum of the scaled updates"""
    estim_lr: torch.Tensor
    """the estimated distance to the solution, D (0-dim)"""
    numerator_weighted: torch.Tensor
    """the numerator of D's estimate (0-dim)"""
    count: torch.Tensor
    """the step count (0-dim int32)"""


class ProdigyState(NamedTuple):
    """The state of :func:`prodigy`."""

    exp_avg: Any
    """the first moment of the scaled updates"""
    exp_avg_sq: Any
    """the second moment of the scaled updates"""
    grad_sum: Any
    """the weighted sum of the scaled updates"""
    params0: Any
    """the params at the first step"""
    estim_lr: torch.Tensor
    """the estimated distance to the solution, D (0-dim)"""
    numerator_weighted: torch.Tensor
    """the numerator of D's estimate (0-dim)"""
    count: torch.Tensor
    """the step count (0-dim int32)"""


def _bias(beta1: Any, beta2: Any, count: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - beta2**t) / (1 - beta1**t)`` in float64 (JAX's weak float)."""
    t = count.to(torch.float64)
    b1 = hyper(beta1, t)
    b2 = hyper(beta2, t)
    return (1 - b2**t) ** 0.5 / (1 - b1**t)


def _betas(where: str, betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    return number(where, "betas[0]", betas[0]), number(where, "betas[1]", betas[1])


def _scalars(params: Any, estim_lr0: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype, device = lowest_dtype(params), device_of(params)
    return (
        scalar(estim_lr0, dtype, device),
        torch.zeros((), dtype=dtype, device=device),
        torch.zeros((), dtype=torch.int32, device=device),
    )


def dadapt_adamw(
    learning_rate: Scalar = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
) -> GradientTransformation:
    """D-Adaptation AdamW (optax.contrib's ``dadapt_adamw``): Adam whose step size is
    estimated as it goes, ``learning_rate`` a factor on the estimate.

    Arguments:
        learning_rate: a factor on the estimated step (a number, 0-dim tensor or
            schedule of the count from 0).
        betas: the decay rates of the first and second moments.
        eps: added to the denominator outside the square root.
        estim_lr0: the first estimate of the distance to the solution.
        weight_decay: decoupled weight decay (times the estimated step).

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state is a
            :class:`DAdaptAdamWState`. The updates include the sign (add them).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.dadapt_adamw"
    learning_rate = number(where, "learning_rate", learning_rate, schedule=True)
    beta1, beta2 = _betas(where, betas)
    eps, wd = number(where, "eps", eps), number(where, "weight_decay", weight_decay)
    estim_lr0 = number(where, "estim_lr0", estim_lr0)

    def init(params):
        z = zeros(params)
        return DAdaptAdamWState(z, zeros(params), zeros(params), *_scalars(params, estim_lr0))

    def update(updates, state, params=None, **extra_args):
        check_state(state, DAdaptAdamWState, where)
        need_params(where, params)
        us, spec = flatten(updates)
        ps = flatten_like(params, spec, "the params", "the updates")
        eas, sqs, sums = (
            flatten_like(getattr(state, f), spec, f, "the updates")
            for f in ("exp_avg", "exp_avg_sq", "grad_sum")
        )
        lr = learning_rate(state.count) if is_schedule(learning_rate) else learning_rate
        count = safe_increment(state.count)
        nw = state.numerator_weighted
        sb2 = hyper(beta2, nw) ** 0.5
        dlr = (state.estim_lr * hyper(lr, state.estim_lr) * _bias(beta1, beta2, count)).to(nw.dtype)
        weighted = [s / (q.sqrt() + hyper(eps, q)) for s, q in zip(sums, sqs, strict=True)]
        acc = vdot(us, weighted, nw.dtype)
        cols: list[list[torch.Tensor]] = [[], [], [], []]
        for u, p, ea, sq, sm in zip(us, ps, eas, sqs, sums, strict=True):
            d = work_dtype(u, p, ea)
            u, p, d_lr = u.to(d), p.to(d), dlr.to(d)
            b1, b2, s2 = hyper(beta1, u), hyper(beta2, u), hyper(sb2, u)
            ea_n = b1 * ea.to(d) + (1 - b1) * d_lr * u
            sq_n = b2 * sq.to(d) + (1 - b2) * u * u
            sm_n = s2 * sm.to(d) + (1 - s2) * d_lr * u
            out = -hyper(wd, u) * d_lr * p - ea_n / (sq_n.sqrt() + hyper(eps, u))
            for col, x, old in zip(cols, (out, ea_n, sq_n, sm_n), (u, ea, sq, sm), strict=True):
                col.append(x.to(old.dtype) if old is not u else x)
        l1 = tree_sum([x.abs() for x in cols[3]], nw.dtype)
        nw_new = sb2 * nw + (1 - sb2) * dlr * acc
        estimate = nw_new / ((1 - sb2) * l1)
        estim_lr = torch.maximum(state.estim_lr, estimate.to(state.estim_lr.dtype))
        moments = rebuild(spec, *cols[1:])
        new = DAdaptAdamWState(*moments, estim_lr, nw_new.to(nw.dtype), count)
        return unflatten(cols[0], spec), new

    return GradientTransformation(init, update)


def prodigy(
    learning_rate: Scalar = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    beta3: Scalar | None = None,
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    estim_lr_coef: Scalar = 1.0,
    weight_decay: Scalar = 0.0,
    safeguard_warmup: bool = False,
) -> GradientTransformation:
    """Prodigy (optax.contrib's ``prodigy``): Adam on updates scaled by a step size
    estimated from the distance travelled since the first params.

    Arguments:
        learning_rate: a factor on the estimated step (a number, 0-dim tensor or
            schedule of the count from 0).
        betas: the decay rates of the first and second moments.
        beta3: the decay rate of the estimate's sums (``sqrt(betas[1])`` when ``None``).
        eps: added to the denominator, times the estimate.
        estim_lr0: the first estimate of the distance to the solution.
        estim_lr_coef: a factor on each new estimate.
        weight_decay: decoupled weight decay (times the estimated step).
        safeguard_warmup: leave the learning rate out of the estimate's sum.

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state is a
            :class:`ProdigyState`. The updates include the sign (add them).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.prodigy"
    learning_rate = number(where, "learning_rate", learning_rate, schedule=True)
    beta1, beta2 = _betas(where, betas)
    beta3 = hyper(beta2, torch.zeros((), dtype=torch.float64)) ** 0.5 if beta3 is None else beta3
    hp = dict(beta1=beta1, beta2=beta2, beta3=number(where, "beta3", beta3))
    hp.update(eps=number(where, "eps", eps), wd=number(where, "weight_decay", weight_decay))
    hp.update(lr0=number(where, "estim_lr0", estim_lr0), safeguard=safeguard_warmup)
    coef = number(where, "estim_lr_coef", estim_lr_coef)

    def init(params):
        ps = [zeros(params) for _ in range(3)]
        return ProdigyState(*ps, _copy(params), *_scalars(params, estim_lr0))

    def update(updates, state, params=None, **extra_args):
        check_state(state, ProdigyState, where)
        need_params(where, params)
        us, spec = flatten(updates)
        ps, p0s, eas, sqs, sums = (
            flatten_like(t, spec, f, "the updates")
            for t, f in zip(
                (params, state.params0, state.exp_avg, state.exp_avg_sq, state.grad_sum),
                ("the params", "params0", "exp_avg", "exp_avg_sq", "grad_sum"),
                strict=True,
            )
        )
        lr = learning_rate(state.count) if is_schedule(learning_rate) else learning_rate
        count = safe_increment(state.count)
        d, nw = state.estim_lr, state.numerator_weighted
        dlr = (d * hyper(lr, d) * _bias(beta1, beta2, count)).to(d.dtype)
        acc = vdot(us, [a - b for a, b in zip(p0s, ps, strict=True)], nw.dtype)
        out, cols = _prodigy_leaves(us, ps, eas, sqs, sums, d, dlr, hp)
        b3 = hyper(hp["beta3"], nw)
        nw_new = b3 * nw + (d / hyper(hp["lr0"], d)) * dlr * acc
        estimate = hyper(coef, nw) * nw_new / tree_sum([x.abs() for x in cols[2]], nw.dtype)
        estim_lr = torch.maximum(d, estimate.to(d.dtype))
        ea, sq, sm = rebuild(spec, *cols)
        new = ProdigyState(ea, sq, sm, state.params0, estim_lr, nw_new.to(nw.dtype), count)
        return unflatten(out, spec), new

    return GradientTransformation(init, update)


def _copy(params: Any) -> Any:
    return pytree.tree_map(torch.clone, params)


def _prodigy_leaves(us, ps, eas, sqs, sums, d, dlr, hp) -> tuple[list, list]:
    """Prodigy's per-leaf moments and updates: ``(updates, [exp_avg, exp_avg_sq,
    grad_sum])``, each state leaf in its own dtype."""
    out: list[torch.Tensor] = []
    cols: list[list[torch.Tensor]] = [[], [], []]
    for u, p, ea, sq, sm in zip(us, ps, eas, sqs, sums, strict=True):
        w = work_dtype(u, p, ea)
        u, p = u.to(w), p.to(w)
        dw, dlr_w = d.to(w), dlr.to(w)
        b1, b2, b3 = (hyper(hp[k], u) for k in ("beta1", "beta2", "beta3"))
        dg = dw * u
        ea_n = b1 * ea.to(w) + (1 - b1) * dg
        sq_n = b2 * sq.to(w) + (1 - b2) * dg * dg
        step = dw if hp["safeguard"] else dlr_w
        sm_n = b3 * sm.to(w) + step * dg / hyper(hp["lr0"], u)
        denom = sq_n.sqrt() + dw * hyper(hp["eps"], u)
        out.append(-hyper(hp["wd"], u) * dlr_w * p - dlr_w * ea_n / denom)
        for col, x, old in zip(cols, (ea_n, sq_n, sm_n), (ea, sq, sm), strict=True):
            col.append(x.to(old.dtype))
    return out, cols
