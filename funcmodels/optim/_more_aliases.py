"""More of optax's optimisers, as optax's chains of the pieces with optax's arguments and
defaults: RAdam, AdaBelief, Yogi, Adan, Adadelta, NovoGrad, Rprop, LARS, Fromage, noisy
SGD, Polyak SGD, SM3, optimistic gradient descent and Adam, and Adafactor."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from ._adam import scale_by_adam
from ._alias import sgd
from ._base import EmptyState, GradientTransformation, Scalar, chain, is_schedule, number
from ._moments import ema, trace
from ._more_factored import scale_by_factored_rms
from ._more_pieces import (
    scale_by_optimistic_gradient,
    scale_by_param_block_rms,
    scale_by_polyak,
    scale_by_rprop,
    scale_by_sm3,
)
from ._more_scales import (
    scale_by_adadelta,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from ._more_transforms import add_noise, clip_by_block_rms
from ._transforms import add_decayed_weights, scale, scale_by_learning_rate, scale_by_trust_ratio
from ._wrappers import masked


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
        b1, b2, eps, eps_root, threshold, nesterov: as :func:`scale_by_radam`'s.

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
        b1, b2, eps, eps_root, nesterov: as :func:`scale_by_belief`'s.

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
        b1, b2, eps: as :func:`scale_by_yogi`'s.

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
        b1, b2, b3, eps, eps_root: as :func:`scale_by_adan`'s.
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
        rho, eps: as :func:`scale_by_adadelta`'s.
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
        b1, b2, eps, eps_root, weight_decay: as :func:`scale_by_novograd`'s.

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
        learning_rate, eta_minus, eta_plus, min_step_size, max_step_size: as
            :func:`scale_by_rprop`'s.

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
        trust_coefficient, eps: as :func:`scale_by_trust_ratio`'s.
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
        eta, gamma, key, seed: as :func:`add_noise`'s.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.noisy_sgd", learning_rate)
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(lr))


class PolyakSGD(NamedTuple):
    """:func:`polyak_sgd`'s optimiser: ``update(updates, state, params=None, *, value)``."""

    init: Any
    update: Any


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
        max_learning_rate, f_min, eps, variant: as :func:`scale_by_polyak`'s.
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

    def update(updates, state, params=None, *, value, **extra_args):
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
        alpha, beta: as :func:`scale_by_optimistic_gradient`'s.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    lr = _lr("fm.optim.optimistic_gradient_descent", learning_rate)
    return chain(scale_by_optimistic_gradient(alpha=alpha, beta=beta), scale_by_learning_rate(lr))


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
        b1, b2, eps, eps_root, mu_dtype, nesterov: as :func:`scale_by_adam`'s.

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
        alpha, beta: as :func:`scale_by_optimistic_gradient`'s.
        b1, b2, eps, eps_root, mu_dtype, nesterov: as :func:`scale_by_adam`'s.

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
        min_dim_size_to_factor, decay_rate, eps, factored: as
            :func:`scale_by_factored_rms`'s (``eps`` is its ``epsilon``).
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
