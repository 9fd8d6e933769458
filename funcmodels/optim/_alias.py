"""The usual optimisers as chains of the pieces in :mod:`._transforms`.

Arguments follow :mod:`torch.optim` (``lr`` first, ``betas`` pairs, ``weight_decay``), and
the arithmetic too: fed the same gradients, these agree with torch's optimisers up to
rounding (tested). ``lr`` may be a number, a 0-dim tensor or a schedule of the step count;
the other hyperparameters numbers or 0-dim tensors (see :func:`inject_hyperparams` to
change them between compiled steps).
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import GradientTransformation, Scalar, chain, is_schedule, number
from ._transforms import (
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_trust_ratio,
    trace,
)


def _betas(where: str, betas: object) -> tuple[Any, Any]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    return (
        number(where, "betas[0]", betas[0], below=1.0),
        number(where, "betas[1]", betas[1], below=1.0),
    )


def _is_zero(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) and value == 0


def sgd(
    lr: Scalar,
    momentum: float | torch.Tensor = 0.0,
    nesterov: bool = False,
    weight_decay: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    """Stochastic gradient descent, as :class:`torch.optim.SGD` (no dampening):
    ``chain(add_decayed_weights(weight_decay), trace(momentum, nesterov),
    scale_by_learning_rate(lr))``.

    Arguments:
        lr: learning rate (number, tensor or schedule), ``>= 0``.
        momentum: momentum factor, ``>= 0``.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty coefficient, ``>= 0``, added to the gradient.
    """
    where = "fm.optim.sgd"
    lr = number(where, "lr", lr, schedule=True)
    momentum = number(where, "momentum", momentum)
    weight_decay = number(where, "weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{where}: nesterov must be a bool, got {nesterov!r}")
    if nesterov and _is_zero(momentum):
        raise ValueError(f"{where}: nesterov=True needs momentum > 0, got momentum={momentum}")
    parts = []
    if not _is_zero(weight_decay):
        parts.append(add_decayed_weights(weight_decay))
    if not _is_zero(momentum):
        parts.append(trace(momentum, nesterov))
    parts.append(scale_by_learning_rate(lr))
    return chain(*parts)


def adam(
    lr: Scalar = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    """Adam, as :class:`torch.optim.Adam` (``weight_decay`` is an L2 term added to the
    gradient): ``chain(add_decayed_weights(weight_decay), scale_by_adam(*betas, eps),
    scale_by_learning_rate(lr))``."""
    where = "fm.optim.adam"
    lr = number(where, "lr", lr, schedule=True)
    b1, b2 = _betas(where, betas)
    weight_decay = number(where, "weight_decay", weight_decay)
    parts = [] if _is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    return chain(*parts, scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))


def adamw(
    lr: Scalar = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 1e-2,
    mask: Any = None,
) -> GradientTransformation:
    """AdamW, as :class:`torch.optim.AdamW`: Adam with decoupled weight decay,
    ``chain(scale_by_adam(*betas, eps), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(lr))``.

    Arguments:
        lr: learning rate (number, tensor or schedule).
        betas: decay rates of the moment estimates, each in ``[0, 1)``.
        eps: added to the denominator.
        weight_decay: decoupled decay coefficient.
        mask: the params that decay (a pytree of bools or a function of the params, as
            :func:`add_decayed_weights`); the others get plain Adam, as a torch param
            group with ``weight_decay=0``.
    """
    where = "fm.optim.adamw"
    lr = number(where, "lr", lr, schedule=True)
    b1, b2 = _betas(where, betas)
    weight_decay = number(where, "weight_decay", weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


def lamb(
    lr: Scalar = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-6,
    weight_decay: float | torch.Tensor = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """LAMB (You et al., 2020), as optax's: ``chain(scale_by_adam(*betas, eps),
    add_decayed_weights(weight_decay, mask), scale_by_trust_ratio(),
    scale_by_learning_rate(lr))``."""
    where = "fm.optim.lamb"
    lr = number(where, "lr", lr, schedule=True)
    b1, b2 = _betas(where, betas)
    weight_decay = number(where, "weight_decay", weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(lr),
    )


def lion(
    lr: Scalar = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float | torch.Tensor = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """Lion (Chen et al., 2023): ``chain(scale_by_lion(*betas), add_decayed_weights(
    weight_decay, mask), scale_by_learning_rate(lr))``."""
    where = "fm.optim.lion"
    lr = number(where, "lr", lr, schedule=True)
    weight_decay = number(where, "weight_decay", weight_decay)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    return chain(
        scale_by_lion(*betas),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


def rmsprop(
    lr: Scalar = 1e-2,
    alpha: float | torch.Tensor = 0.99,
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    momentum: float | torch.Tensor = 0.0,
    centered: bool = False,
) -> GradientTransformation:
    """RMSprop, as :class:`torch.optim.RMSprop`: ``chain(add_decayed_weights(
    weight_decay), scale_by_rms(alpha, eps, centered=centered), trace(momentum),
    scale_by_learning_rate(lr))``."""
    where = "fm.optim.rmsprop"
    lr = number(where, "lr", lr, schedule=True)
    weight_decay = number(where, "weight_decay", weight_decay)
    momentum = number(where, "momentum", momentum)
    parts = [] if _is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    parts.append(scale_by_rms(alpha, eps, centered=centered))
    if not _is_zero(momentum):
        parts.append(trace(momentum))
    return chain(*parts, scale_by_learning_rate(lr))


def adagrad(
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
) -> GradientTransformation:
    """Adagrad, as :class:`torch.optim.Adagrad`: ``chain(add_decayed_weights(
    weight_decay), scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(
    lr / (1 + count * lr_decay)))``; ``lr`` may be a schedule of the step count too."""
    where = "fm.optim.adagrad"
    lr = number(where, "lr", lr, schedule=True)
    lr_decay = number(where, "lr_decay", lr_decay)
    weight_decay = number(where, "weight_decay", weight_decay)
    parts = [] if _is_zero(weight_decay) else [add_decayed_weights(weight_decay)]
    parts.append(scale_by_rss(initial_accumulator_value, eps))
    if _is_zero(lr_decay):
        parts.append(scale_by_learning_rate(lr))
    else:
        rate = lr if is_schedule(lr) else (lambda count: lr)
        parts.append(
            scale_by_learning_rate(
                lambda count: rate(count) / (1 + count.to(torch.float64) * lr_decay)
            )
        )
    return chain(*parts)
