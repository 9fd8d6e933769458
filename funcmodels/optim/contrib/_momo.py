"""MoMo (Schaipp et al., 2023): momentum with a Polyak-type step size from the loss's
value, on SGD's momentum and on Adam's, as optax.contrib's ``momo`` and ``momo_adam``.

``update(updates, state, params, *, value)`` takes the loss as ``value=`` (optax's
``GradientTransformationExtraArgs``): call it directly (inside ``chain`` once fm.optim's
chain forwards extra arguments)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

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
from .._more_common import flag, hyper, rebuild, zeros
from .._utilities import safe_increment
from ._common import device_of, lowest_dtype, need_params, scalar, tree_sum, vdot


class MomoState(NamedTuple):
    """The state of :func:`momo`."""

    exp_avg: Any
    """the momentum of the updates"""
    barf: torch.Tensor
    """the momentum of the loss values (0-dim, the params' lowest dtype)"""
    gamma: torch.Tensor
    """the momentum of ``<updates, params>`` (0-dim)"""
    lb: torch.Tensor
    """the loss's lower bound (0-dim)"""
    count: torch.Tensor
    """the step count (0-dim int32)"""


class MomoAdamState(NamedTuple):
    """The state of :func:`momo_adam`."""

    exp_avg: Any
    """the first moment"""
    exp_avg_sq: Any
    """the second moment"""
    barf: torch.Tensor
    """the momentum of the loss values (0-dim, the params' lowest dtype)"""
    gamma: torch.Tensor
    """the momentum of ``<updates, params>`` (0-dim)"""
    lb: torch.Tensor
    """the loss's lower bound (0-dim)"""
    count: torch.Tensor
    """the step count (0-dim int32)"""


def _scalars(params: Any, lower_bound: Any) -> list[torch.Tensor]:
    dtype, device = lowest_dtype(params), device_of(params)
    zero = torch.zeros((), dtype=dtype, device=device)
    count = torch.zeros((), dtype=torch.int32, device=device)
    return [zero, zero.clone(), scalar(lower_bound, dtype, device), count]


def _step_size(s: dict, hp: dict, bc1: Any = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tau, new lower bound)`` from the 0-dim ``barf``, ``gamma``, ``iprod``, ``norm``,
    ``lb``, ``alpha`` in ``s`` (optax's arithmetic; ``bc1`` is Adam's first bias
    correction, 1 for SGD's momentum)."""
    alpha, wd, floor = s["alpha"], hp["weight_decay"], hp["lower_bound"]
    barf, gamma, iprod, norm, lb = s["barf"], s["gamma"], s["iprod"], s["norm"], s["lb"]
    decay = 1 + alpha * wd
    lb_w = hyper(floor, barf) if isinstance(floor, torch.Tensor) else floor
    if hp["adapt"]:
        cap = decay * (barf - gamma) + iprod
        raised = torch.clamp_min(cap / (2 * bc1 * decay), lb_w)
        lb = torch.where(cap < decay * bc1 * lb, raised, lb)
    t1 = torch.clamp_min(decay * (barf - bc1 * lb - gamma) + iprod, 0.0) / norm
    t1 = torch.where(norm <= torch.finfo(torch.float64).eps, torch.zeros_like(t1), t1)
    tau = torch.minimum(scalar(alpha / bc1, t1.dtype, t1.device), t1)
    if hp["adapt"]:
        new_lb = torch.clamp_min(((barf + iprod - gamma) - 0.5 * tau * norm) / bc1, lb_w)
    else:
        new_lb = s["lb"]
    return tau, new_lb


def _check(where: str, learning_rate, lower_bound, weight_decay, adapt) -> dict:
    flag(where, "adapt_lower_bound", adapt)
    return dict(
        learning_rate=number(where, "learning_rate", learning_rate, schedule=True),
        lower_bound=number(where, "lower_bound", lower_bound, lo=-float("inf")),
        weight_decay=number(where, "weight_decay", weight_decay),
        adapt=adapt,
    )


def _alpha(hp: dict, count: torch.Tensor) -> Any:
    lr = hp["learning_rate"]
    return lr(count) if is_schedule(lr) else lr


def momo(
    learning_rate: Scalar = 1.0,
    beta: Scalar = 0.9,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformation:
    """MoMo on SGD's momentum (optax.contrib's ``momo``): the step is ``min(learning_rate,
    (f_bar - lb - gamma + <d, x>)_+ / |d|^2)`` along the momentum ``d``.

    Arguments:
        learning_rate: the largest step (a number, 0-dim tensor or schedule).
        beta: the momentum.
        lower_bound: a lower bound of the loss.
        weight_decay: decoupled weight decay.
        adapt_lower_bound: raise the lower bound as the run goes.

    Returns:
        A GradientTransformation whose ``update(updates, state, params, *, value)``
            needs the params and the loss; its state is a :class:`MomoState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.momo"
    hp = _check(where, learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    beta = number(where, "beta", beta)

    def init(params):
        return MomoState(zeros(params), *_scalars(params, lower_bound))

    def update(updates, state, params=None, *, value, **extra_args):
        check_state(state, MomoState, where)
        need_params(where, params)
        us, spec = flatten(updates)
        ps = flatten_like(params, spec, "the params", "the updates")
        eas = flatten_like(state.exp_avg, spec, "exp_avg", "the updates")
        dtype = state.barf.dtype
        bt = torch.where(state.count == 0, scalar(0.0, dtype, None), scalar(beta, dtype, None))
        value = scalar(value, dtype, state.barf.device)
        barf = bt * state.barf + (1 - bt) * value
        new_eas = [
            bt.to(g.dtype) * ea + (1 - bt.to(g.dtype)) * g for ea, g in zip(eas, us, strict=True)
        ]
        wide = torch.promote_types(dtype, us[0].dtype) if us else dtype
        gamma = bt * state.gamma + (1 - bt) * vdot(us, ps, wide)
        s = dict(barf=barf, gamma=gamma, lb=state.lb, alpha=_alpha(hp, state.count))
        s.update(iprod=vdot(new_eas, ps, wide), norm=tree_sum([e.square() for e in new_eas], wide))
        tau, lb = _step_size(s, hp)
        a, wd = s["alpha"], weight_decay
        shrink = -(a * wd) / (1 + a * wd)
        out = [hyper(shrink, p) * p - tau.to(p.dtype) * e for e, p in zip(new_eas, ps, strict=True)]
        new = MomoState(
            rebuild(spec, new_eas)[0],
            barf.to(dtype),
            gamma.to(dtype),
            lb.to(dtype),
            safe_increment(state.count),
        )
        return unflatten(out, spec), new

    return GradientTransformation(init, update)


def _adam_moments(us, eas, sqs, b1, b2) -> tuple[list, list]:
    new_eas, new_sqs = [], []
    for g, ea, sq in zip(us, eas, sqs, strict=True):
        c1, c2 = hyper(b1, g), hyper(b2, g)
        new_eas.append(c1 * ea + (1 - c1) * g)
        new_sqs.append(c2 * sq + (1 - c2) * g * g)
    return new_eas, new_sqs


def momo_adam(
    learning_rate: Scalar = 1e-2,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformation:
    """MoMo on Adam's moments (optax.contrib's ``momo_adam``): MoMo's step size in Adam's
    preconditioned geometry.

    Arguments:
        learning_rate: the largest step (a number, 0-dim tensor or schedule).
        b1: the decay rate of the first moment (and of the loss's average).
        b2: the decay rate of the second moment.
        eps: added to the preconditioner.
        lower_bound: a lower bound of the loss.
        weight_decay: decoupled weight decay.
        adapt_lower_bound: raise the lower bound as the run goes.

    Returns:
        A GradientTransformation whose ``update(updates, state, params, *, value)``
            needs the params and the loss; its state is a :class:`MomoAdamState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.momo_adam"
    hp = _check(where, learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    b1, b2, eps = number(where, "b1", b1), number(where, "b2", b2), number(where, "eps", eps)

    def init(params):
        return MomoAdamState(zeros(params), zeros(params), *_scalars(params, lower_bound))

    def update(updates, state, params=None, *, value, **extra_args):
        check_state(state, MomoAdamState, where)
        need_params(where, params)
        us, spec = flatten(updates)
        ps = flatten_like(params, spec, "the params", "the updates")
        eas, sqs = (
            flatten_like(t, spec, n, "the updates")
            for t, n in ((state.exp_avg, "exp_avg"), (state.exp_avg_sq, "exp_avg_sq"))
        )
        dtype, count = state.barf.dtype, safe_increment(state.count)
        barf = hyper(b1, state.barf) * state.barf + (1 - hyper(b1, state.barf)) * scalar(
            value, dtype, state.barf.device
        )
        eas, sqs = _adam_moments(us, eas, sqs, b1, b2)
        t = count.to(torch.float64)
        bc1, bc2 = ((1 - hyper(b, t) ** t).to(dtype) for b in (b1, b2))
        precs = [hyper(eps, q) + (q / bc2.to(q.dtype)).sqrt() for q in sqs]
        wide = torch.promote_types(dtype, us[0].dtype) if us else dtype
        gamma = hyper(b1, state.gamma) * state.gamma + (1 - hyper(b1, state.gamma)) * vdot(
            us, ps, wide
        )
        s = dict(barf=barf, gamma=gamma, lb=state.lb, alpha=_alpha(hp, state.count))
        s.update(
            iprod=vdot(eas, ps, wide),
            norm=vdot(eas, [e / q for e, q in zip(eas, precs, strict=True)], wide),
        )
        tau, lb = _step_size(s, hp, bc1)
        a, wd = s["alpha"], weight_decay
        shrink = -(a * wd) / (1 + a * wd)
        out = [
            hyper(shrink, p) * p - tau.to(p.dtype) * e / q
            for e, q, p in zip(eas, precs, ps, strict=True)
        ]
        ea_tree, sq_tree = rebuild(spec, eas, sqs)
        new = MomoAdamState(ea_tree, sq_tree, barf.to(dtype), gamma.to(dtype), lb.to(dtype), count)
        return unflatten(out, spec), new

    return GradientTransformation(init, update)
