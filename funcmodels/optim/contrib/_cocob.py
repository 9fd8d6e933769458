"""COCOB-Backprop (Orabona and Tommasi, 2017), a coin-betting optimiser without a learning
rate, as optax.contrib's ``cocob`` and ``scale_by_cocob``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import GradientTransformation, Scalar, chain, check_state, number
from .._more_common import hyper, leafwise, per_leaf, rebuild, state_leaves, zeros
from .._transforms import add_decayed_weights, scale_by_learning_rate


class COCOBState(NamedTuple):
    """The state of :func:`scale_by_cocob`."""

    init_particles: Any
    """the params at the first step"""
    cumulative_gradients: Any
    """the negated sum of the updates"""
    scale: Any
    """the largest absolute update so far (at least ``eps``)"""
    subgradients: Any
    """the sum of the absolute updates"""
    reward: Any
    """the reward of the bets so far"""


def scale_by_cocob(alpha: Scalar = 100.0, eps: Scalar = 1e-8) -> GradientTransformation:
    """COCOB-Backprop's bets (optax.contrib's ``scale_by_cocob``): the update moves the
    params to ``p0 + C / (L max(G + L, alpha L)) (L + R)``.

    Arguments:
        alpha: bounds the fraction of the wealth bet early on.
        eps: the first value of each element's scale ``L``.

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state is a
            :class:`COCOBState`. The updates include the sign (add them).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_cocob"
    alpha, eps = number(where, "alpha", alpha), number(where, "eps", eps)

    def init(params):
        z = zeros(params)
        scale = pytree.tree_map(lambda p: torch.ones_like(p) * hyper(eps, p), params)
        return COCOBState(pytree.tree_map(torch.clone, params), z, scale, zeros(params), z)

    def step(us, state, ps, spec):
        check_state(state, COCOBState, where)
        fields = [state_leaves(s, spec, n) for s, n in zip(state, COCOBState._fields, strict=True)]

        def leaf(c, p0, cum, big, sub, rew, p):
            big = torch.maximum(big, c.abs())
            sub = sub + c.abs()
            rew = torch.clamp_min(rew - c * (p - p0), 0)
            cum = cum - c
            bound = torch.maximum(sub + big, hyper(alpha, c) * big)
            return -p + (p0 + cum / (big * bound) * (big + rew)), p0, cum, big, sub, rew

        out, *news = per_leaf(leaf, us, *fields, inputs=[ps])
        return out, COCOBState(*rebuild(spec, *news))

    return leafwise(where, init, step, needs_params=True)


def cocob(
    learning_rate: Scalar = 1.0,
    alpha: Scalar = 100.0,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """COCOB (optax.contrib's ``cocob``): ``chain(add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate, flip_sign=False), scale_by_cocob(alpha, eps))``.

    Arguments:
        learning_rate: a factor on the gradients (1 in the paper).
        alpha: as :func:`scale_by_cocob`'s.
        eps: as :func:`scale_by_cocob`'s.
        weight_decay: an L2 term added to the gradients first.
        mask: which params decay.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
