"""MADGRAD (Defazio and Jelassi, 2021) and AdaBelief's variant ACProp (Zhuang et al.,
2021), as optax.contrib's ``madgrad`` and ``acprop`` with their ``scale_by_*`` pieces."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    count_like,
    is_schedule,
    number,
)
from .._more_common import hyper, leafwise, per_leaf, rebuild, state_leaves, zeros
from .._more_scales import ScaleByBeliefState
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import bias_correction, safe_increment
from ._common import device_of


class MadgradState(NamedTuple):
    """The state of :func:`scale_by_madgrad` (and so of :func:`madgrad`)."""

    count: torch.Tensor
    """the step count (0-dim int32)"""
    grad_sum_sq: Any
    """the weighted sum of the squared updates"""
    s: Any
    """the weighted sum of the updates"""
    x0: Any
    """the params at the first step"""


def scale_by_madgrad(
    learning_rate: Scalar, momentum: float = 0.9, eps: float = 1e-6
) -> GradientTransformation:
    """MADGRAD's dual averaging (optax.contrib's ``scale_by_madgrad``): with ``lamb =
    (lr + eps) sqrt(t + 1)`` (the root in float32, as optax's), the params move to ``(1 -
    momentum) z + momentum x``, ``z = x0 - s / (cbrt(G) + eps)``; it includes the
    learning rate and the sign.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule of the count from 0.
        momentum: the weight of the current params.
        eps: added to the learning rate and to the cube root.

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state is a
            :class:`MadgradState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_madgrad"
    learning_rate = number(where, "learning_rate", learning_rate, schedule=True)
    momentum, eps = number(where, "momentum", momentum), number(where, "eps", eps)

    def init(params):
        count = torch.zeros((), dtype=torch.int32, device=device_of(params))
        return MadgradState(
            count, zeros(params), zeros(params), pytree.tree_map(torch.clone, params)
        )

    def step(us, state, ps, spec):
        check_state(state, MadgradState, where)
        lr = learning_rate(state.count) if is_schedule(learning_rate) else learning_rate
        # JAX takes the square root of the int32 count in float32, and a number times it
        # stays float32 (a schedule's float64 value promotes it): optax's arithmetic
        lamb = (lr + eps) * torch.sqrt((state.count + 1).to(torch.float32))
        fields = [state_leaves(getattr(state, f), spec, f) for f in ("grad_sum_sq", "s", "x0")]

        def leaf(g, gsq, s, x0, x):
            lam = lamb.to(g.dtype)
            gsq = gsq + lam * g**2
            s = s + lam * g
            z = x0 - s / (gsq ** (1 / 3) + hyper(eps, g))
            m = hyper(momentum, g)
            return (1 - m) * z + m * x - x, gsq, s, x0

        out, gsq, s, x0 = per_leaf(leaf, us, *fields, inputs=[ps])
        new = MadgradState(safe_increment(state.count), *rebuild(spec, gsq, s, x0))
        return out, new

    return leafwise(where, init, step, needs_params=True)


def madgrad(
    learning_rate: Scalar, momentum: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-6
) -> GradientTransformation:
    """MADGRAD (optax.contrib's ``madgrad``): ``chain(add_decayed_weights(weight_decay),
    scale_by_madgrad(learning_rate, momentum, eps))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        momentum: as :func:`scale_by_madgrad`'s.
        weight_decay: an L2 term added to the gradients first.
        eps: as :func:`scale_by_madgrad`'s.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate=learning_rate, momentum=momentum, eps=eps),
    )


def scale_by_acprop(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-16, eps_root: Scalar = 1e-16
) -> GradientTransformation:
    """ACProp's scaling (optax.contrib's ``scale_by_acprop``): the updates divided by the
    root of the previous step's bias-corrected second moment of the prediction error
    (1 at the first step).

    Arguments:
        b1: the decay rate of the first moment.
        b2: the decay rate of the prediction error's second moment.
        eps: added to the denominator outside the square root.
        eps_root: added to the error's second moment.

    Returns:
        A GradientTransformation; its state is a ``ScaleByBeliefState`` (as optax's).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_acprop"
    b1, b2 = number(where, "b1", b1), number(where, "b2", b2)
    eps, eps_root = number(where, "eps", eps), number(where, "eps_root", eps_root)

    def init(params):
        return ScaleByBeliefState(count_like(params), zeros(params), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByBeliefState, where)
        initial = state.count == 0
        count = safe_increment(state.count)
        t = torch.where(initial, count, state.count)

        def leaf(g, mu, nu):
            new_mu = (1 - hyper(b1, g)) * g + hyper(b1, g) * mu
            err = g - mu
            new_nu = (1 - hyper(b2, g)) * err**2 + hyper(b2, g) * nu + hyper(eps_root, g)
            nu_hat = torch.where(initial, torch.ones_like(nu), bias_correction(nu, b2, t))
            return g / (nu_hat.sqrt() + hyper(eps, g)), new_mu, new_nu

        mus, nus = state_leaves(state.mu, spec, "mu"), state_leaves(state.nu, spec, "nu")
        out, mus, nus = per_leaf(leaf, us, mus, nus)
        return out, ScaleByBeliefState(count, *rebuild(spec, mus, nus))

    return leafwise(where, init, step)


def acprop(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """ACProp (optax.contrib's ``acprop``): ``chain(scale_by_acprop(...),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment.
        b2: the decay rate of the prediction error's second moment.
        eps: added to the denominator outside the square root.
        eps_root: added to the error's second moment.
        weight_decay: decoupled weight decay.
        mask: which params decay.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        scale_by_acprop(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
