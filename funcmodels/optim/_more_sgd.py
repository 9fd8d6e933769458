"""More of optax's optimisers, as optax's chains of the pieces with optax's arguments and
defaults: the SGD-like ones (Rprop, LARS, Fromage, noisy SGD, Polyak SGD, SM3, optimistic
gradient descent)."""

from __future__ import annotations

from typing import Any

import torch

from ._alias import sgd
from ._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    Scalar,
    chain,
    is_schedule,
    number,
)
from ._moments import trace
from ._more_aliases import _lr
from ._more_pieces import (
    scale_by_optimistic_gradient,
    scale_by_polyak,
    scale_by_rprop,
    scale_by_sm3,
)
from ._more_transforms import add_noise
from ._transforms import add_decayed_weights, scale, scale_by_learning_rate, scale_by_trust_ratio
from ._wrappers import masked


def rprop(
    learning_rate: Scalar,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
) -> GradientTransformation:
    """Rprop: ``chain(scale_by_rprop(...), scale(-1.0))`` (optax's arithmetic, whose
    update lags its state by one step: see :func:`scale_by_rprop`).

    Arguments:
        learning_rate: every element's first step size.
        eta_minus: the factor on a step size where the sign flips.
        eta_plus: the factor on a step size where the sign holds.
        min_step_size: the smallest step size.
        max_step_size: the largest step size.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        scale(-1.0),
    )


def lars(
    learning_rate: Scalar,
    weight_decay: Scalar = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: Scalar = 0.001,
    eps: Scalar = 0.0,
    trust_ratio_mask: Any = True,
    momentum: Scalar = 0.9,
    nesterov: bool = False,
) -> GradientTransformation:
    """LARS (You et al., 2017): ``chain(add_decayed_weights(weight_decay,
    weight_decay_mask), masked(scale_by_trust_ratio(trust_coefficient=...,  eps=...),
    trust_ratio_mask), scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        weight_decay: an L2 term added to the gradients first.
        weight_decay_mask: which params decay (``True``: all).
        trust_coefficient: the factor on the trust ratio.
        eps: added to the trust ratio's denominator.
        trust_ratio_mask: which params take the trust ratio (``True``: all).
        momentum: the trace's decay.
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation (its ``update`` needs the params).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.lars", learning_rate)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
            mask=trust_ratio_mask,
        ),
        scale_by_learning_rate(lr),
        trace(decay=momentum, nesterov=nesterov),
    )


def fromage(learning_rate: Scalar, min_norm: Scalar = 1e-6) -> GradientTransformation:
    """Fromage (Bernstein et al., 2020): the trust ratio, the learning rate times ``1 /
    sqrt(1 + lr**2)``, and the params shrunk by the same factor.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        min_norm: the floor of the trust ratio's norms.

    Returns:
        The chained GradientTransformation (its ``update`` needs the params).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.fromage", learning_rate)
    if not is_schedule(lr):
        mult = 1 / (1 + lr**2) ** 0.5
        # a negative decay (the shrinking): passed as a tensor, which is not range-checked
        shrink = (
            mult - 1
            if isinstance(mult, torch.Tensor)
            else torch.tensor(mult - 1, dtype=torch.float64)
        )
        return chain(
            scale_by_trust_ratio(min_norm),
            scale_by_learning_rate(lr * mult),
            add_decayed_weights(shrink),
        )

    def mult_lr(count):
        return 1 / (1 + lr(count) ** 2) ** 0.5

    return chain(
        scale_by_trust_ratio(min_norm),
        scale_by_learning_rate(lambda c: mult_lr(c) * lr(c)),
        add_decayed_weights(lambda c: mult_lr(c) - 1),
    )


def noisy_sgd(
    learning_rate: Scalar,
    eta: Scalar = 0.01,
    gamma: Scalar = 0.55,
    key: torch.Tensor | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """SGD with annealed Gaussian gradient noise: ``chain(add_noise(eta, gamma, key),
    scale_by_learning_rate(learning_rate))``. The noise is drawn from fm's keys, not JAX's
    (see :func:`add_noise`).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        eta: the noise's initial variance.
        gamma: the decay exponent of the variance.
        key: an ``fm.key`` or an int seed (``None``: seed 0, as optax).
        seed: optax's older name for an int ``key``.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.noisy_sgd", learning_rate)
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(lr))


class PolyakSGD(GradientTransformationExtraArgs):
    """:func:`polyak_sgd`'s optimiser: ``update(updates, state, params=None, *, value)``.

    Attributes:
        init: ``init(params)``: the initial state.
        update: ``update(updates, state, params=None, *, value)``: the new updates and
            state.
    """

    __slots__ = ()


def polyak_sgd(
    max_learning_rate: Scalar = 1.0,
    scaling: Scalar = 1.0,
    f_min: Scalar = 0.0,
    eps: Scalar = 0.0,
    variant: str = "sps",
) -> PolyakSGD:
    """SGD with Polyak's step size: ``sgd(learning_rate=scaling)`` then
    :func:`scale_by_polyak`; ``update`` takes the loss's ``value`` as a keyword, as
    optax's. The state is the pair of the two states, as optax's chain's.

    Arguments:
        max_learning_rate: the largest step size.
        f_min: a lower bound of the loss.
        eps: added to the squared norm of the updates.
        variant: ``'sps'`` or ``'sps+'`` (``value - f_min`` floored at 0).
        scaling: the learning rate of the SGD in front (a number, tensor or schedule).

    Returns:
        A :class:`PolyakSGD` (``init``, ``update``).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    inner = sgd(learning_rate=scaling)
    polyak = scale_by_polyak(
        max_learning_rate=max_learning_rate, f_min=f_min, eps=eps, variant=variant
    )

    def init(params):
        return (inner.init(params), EmptyState())

    def update(updates, state, params=None, *, value=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(
                "fm.optim.polyak_sgd: expected the pair of states made by this optimiser's "
                f"init, got {type(state).__name__}"
            )
        updates, first = inner.update(updates, state[0], params)
        updates, second = polyak.update(updates, state[1], params, value=value)
        return updates, (first, second)

    return PolyakSGD(init, update)


def sm3(learning_rate: Scalar, momentum: Scalar = 0.9) -> GradientTransformation:
    """SM3: ``chain(scale_by_sm3(momentum), scale(-learning_rate))``.

    Arguments:
        learning_rate: a number or a 0-dim tensor.
        momentum: as :func:`scale_by_sm3`'s ``b1``.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = number("fm.optim.sm3", "learning_rate", learning_rate)
    return chain(scale_by_sm3(momentum), scale(-lr))


def optimistic_gradient_descent(
    learning_rate: Scalar, alpha: Scalar = 1.0, beta: Scalar = 1.0
) -> GradientTransformation:
    """Optimistic gradient descent: ``chain(scale_by_optimistic_gradient(alpha, beta),
    scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        alpha: the step on the current updates.
        beta: the step on the change of the updates (the optimism).

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.optimistic_gradient_descent", learning_rate)
    return chain(scale_by_optimistic_gradient(alpha=alpha, beta=beta), scale_by_learning_rate(lr))
