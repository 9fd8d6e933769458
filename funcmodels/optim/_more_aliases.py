"""More of optax's optimisers, as optax's chains of the pieces with optax's arguments and
defaults: Adam's relatives (RAdam, AdaBelief, Yogi, Adan, Adadelta, NovoGrad, optimistic
Adam) and Adafactor; the SGD-like ones are in ``_more_sgd.py``."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ._adam import scale_by_adam
from ._base import GradientTransformation, Scalar, chain, number
from ._moments import ema
from ._more_factored import scale_by_factored_rms
from ._more_pieces import scale_by_optimistic_gradient, scale_by_param_block_rms
from ._more_scales import (
    scale_by_adadelta,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from ._more_transforms import clip_by_block_rms
from ._transforms import add_decayed_weights, scale, scale_by_learning_rate


def _lr(where: str, learning_rate: Any) -> Any:
    return number(where, "learning_rate", learning_rate, schedule=True)


def radam(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rectified Adam: ``chain(scale_by_radam(...), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        threshold: the smallest ``rho_t`` at which the adaptive step is taken.
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.radam", learning_rate)
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
        scale_by_learning_rate(lr),
    )


def adabelief(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief: ``chain(scale_by_belief(...), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment.
        b2: the decay rate of the prediction error's second moment.
        eps: added to the denominator outside the square root.
        eps_root: added to the error's second moment.
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.adabelief", learning_rate)
    return chain(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov), scale_by_learning_rate(lr)
    )


def yogi(
    learning_rate: Scalar, b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-3
) -> GradientTransformation:
    """Yogi: ``chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.yogi", learning_rate)
    return chain(scale_by_yogi(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(lr))


def adan(
    learning_rate: Scalar,
    b1: Scalar = 0.98,
    b2: Scalar = 0.92,
    b3: Scalar = 0.99,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """Adan: ``chain(scale_by_adan(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the updates' moving average.
        b2: the decay rate of the moving average of the updates' differences.
        b3: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: decoupled weight decay (a number, 0-dim tensor or schedule).
        mask: which params decay (as :func:`add_decayed_weights`'s).

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.adan", learning_rate)
    return chain(
        scale_by_adan(b1, b2, b3, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


def adadelta(
    learning_rate: Scalar | None = None,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    """Adadelta: ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate))``
    (:class:`torch.optim.Adadelta` with ``lr=learning_rate``).

    Arguments:
        learning_rate: a number, a 0-dim tensor, a schedule, or ``None`` (no scaling;
            the update then ascends, as optax's).
        rho: the decay rate of the moving averages.
        eps: added inside the square roots.
        weight_decay: an L2 term added to the gradients first.
        weight_decay_mask: which params decay.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = None if learning_rate is None else _lr("fm.optim.adadelta", learning_rate)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho=rho, eps=eps),
        scale_by_learning_rate(lr),
    )


def novograd(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
) -> GradientTransformation:
    """NovoGrad: ``chain(scale_by_novograd(...), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the momentum.
        b2: the decay rate of the second moment (a squared norm per leaf).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: the coefficient on the params.

    Returns:
        The chained GradientTransformation (its ``update`` needs the params).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.novograd", learning_rate)
    return chain(
        scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay),
        scale_by_learning_rate(lr),
    )


def optimistic_adam(
    learning_rate: Scalar,
    optimism: Scalar | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-08,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    """Optimistic Adam (deprecated in optax for :func:`optimistic_adam_v2`): Adam's
    scaling, then optimistic gradients with ``alpha=learning_rate`` and ``beta=optimism``
    (``learning_rate`` when ``None``), then a sign flip.

    Arguments:
        learning_rate: a number or a 0-dim tensor (no schedule, as optax's).
        optimism: the negative momentum's coefficient.
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: the first moment's dtype (``None``: the param's).
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError: a schedule for ``learning_rate``; a hyperparameter out of range.
    """
    warnings.warn(
        "fm.optim.optimistic_adam is deprecated (as optax's); use optimistic_adam_v2",
        DeprecationWarning,
        stacklevel=2,
    )
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        raise ValueError(
            "fm.optim.optimistic_adam: learning_rate cannot be a schedule; "
            "optimistic_adam_v2 takes one"
        )
    optimism = learning_rate if optimism is None else optimism
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale_by_learning_rate(1.0),
    )


def optimistic_adam_v2(
    learning_rate: Scalar,
    *,
    alpha: Scalar = 1.0,
    beta: Scalar = 1.0,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-08,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    nesterov: bool = True,
) -> GradientTransformation:
    """Optimistic Adam: ``chain(scale_by_adam(...), scale_by_optimistic_gradient(alpha,
    beta), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        alpha: the step on the current updates.
        beta: the step on the change of the updates (the optimism).
        b1: the decay rate of the first moment.
        b2: the decay rate of the second moment.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: the first moment's dtype (``None``: the param's).
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.optimistic_adam_v2", learning_rate)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(lr),
    )


def adafactor(
    learning_rate: Scalar | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: Scalar = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Scalar | None = 1.0,
    momentum: Scalar | None = None,
    dtype_momentum: torch.dtype = torch.float32,
    weight_decay_rate: Scalar | None = None,
    eps: Scalar = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    """Adafactor (Shazeer and Stern, 2018), optax's chain: :func:`scale_by_factored_rms`,
    then (each unless disabled) :func:`clip_by_block_rms`, the learning rate (no sign
    flip), :func:`scale_by_param_block_rms`, an :func:`ema` momentum, decayed weights,
    and ``scale(-1)``.

    Arguments:
        learning_rate: a number, a 0-dim tensor, a schedule, or ``None`` (none).
        min_dim_size_to_factor: the smallest second-largest dimension factored.
        decay_rate: the exponent of the second moment's decay.
        eps: added to the squared updates (:func:`scale_by_factored_rms`'s ``epsilon``).
        factored: factor the second moment where the leaf allows.
        decay_offset: its ``step_offset``.
        multiply_by_parameter_scale: scale by the params' RMS.
        clipping_threshold: the block RMS clip (``None``: none).
        momentum: the EMA's decay (``None``: none).
        dtype_momentum: the EMA's dtype.
        weight_decay_rate: the decay (``None``: none), a number, tensor or schedule.
        weight_decay_mask: which params decay.

    Returns:
        The chained GradientTransformation (its ``update`` needs the params).

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    tx = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
    if clipping_threshold is not None:
        tx.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(scale_by_learning_rate(_lr("fm.optim.adafactor", learning_rate), flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(scale_by_param_block_rms())
    if momentum is not None:
        tx.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        tx.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    tx.append(scale(-1))
    return chain(*tx)
