"""The usual optimisers as chains of the pieces, with optax's arguments, defaults and
arithmetic: code written for optax runs with ``optax`` replaced by ``fm.optim``.

``learning_rate`` may be a number, a 0-dim tensor or a schedule of the step count; the
other numeric hyperparameters numbers or 0-dim tensors (see :func:`inject_hyperparams` to
change them between compiled steps). torch.optim's arithmetic is reached through optax's
own flags and pieces:

==========================================  ============================================
``torch.optim``                             ``fm.optim``
==========================================  ============================================
``SGD(lr, momentum, nesterov=...)``         ``sgd(lr, momentum, nesterov)``
``SGD(..., weight_decay=wd)``               ``chain(add_decayed_weights(wd), sgd(...))``
``Adam(lr, betas=(b1, b2), eps)``           ``adam(lr, b1, b2, eps)``
``Adam(..., weight_decay=wd)``              ``chain(add_decayed_weights(wd), adam(...))``
``AdamW(lr, betas, eps, weight_decay)``     ``adamw(lr, b1, b2, eps, weight_decay=wd)``
``RMSprop(lr, alpha, eps, momentum=m)``     ``rmsprop(lr, alpha, eps, eps_in_sqrt=False,
                                            momentum=m)`` (``centered`` as torch's)
``Adagrad(lr, lr_decay, eps=0, iav)``       ``adagrad(lambda t: lr / (1 + t * lr_decay),
                                            iav, eps=0)`` (torch adds ``eps`` outside
                                            the root)
==========================================  ============================================
"""

from __future__ import annotations

from typing import Any

import torch

from ._adam import scale_by_adam
from ._base import GradientTransformation, Scalar, chain, identity, number
from ._moments import (
    ema,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
    trace,
)
from ._transforms import (
    add_decayed_weights,
    scale_by_learning_rate,
    scale_by_sign,
    scale_by_trust_ratio,
)


def _lr(where: str, learning_rate: Any) -> Any:
    return number(where, "learning_rate", learning_rate, schedule=True)


def sgd(
    learning_rate: Scalar,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent: ``chain(trace(momentum, nesterov), scale_by_learning_rate(
    learning_rate))`` (no trace when ``momentum`` is ``None``). With a momentum this is
    :class:`torch.optim.SGD` (no dampening), schedules included.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule, ``>= 0``.
        momentum: the trace's decay, ``>= 0``, or ``None`` for none.
        nesterov: Nesterov momentum.
        accumulator_dtype: the dtype of the momentum buffers (``None``: the param's).

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).

    Raises:
        TypeError: ``nesterov`` is not a bool.
    """
    where = "fm.optim.sgd"
    lr = _lr(where, learning_rate)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{where}: nesterov must be a bool, got {nesterov!r}")
    if momentum is None:  # (nesterov then means nothing, as in optax)
        return chain(identity(), scale_by_learning_rate(lr))
    momentum = number(where, "momentum", momentum)
    return chain(trace(momentum, nesterov, accumulator_dtype), scale_by_learning_rate(lr))


def adam(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam: ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_learning_rate(learning_rate))``; :class:`torch.optim.Adam` (without weight
    decay) up to rounding.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        nesterov: Nesterov momentum (Dozat's NAdam).

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.adam", learning_rate)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(lr),
    )


def adamw(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: Scalar = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdamW, Adam with decoupled weight decay: ``chain(scale_by_adam(...),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``;
    :class:`torch.optim.AdamW` up to rounding (whose default ``weight_decay`` is 0.01).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        nesterov: Nesterov momentum (Dozat's NAdam).
        weight_decay: the decay coefficient (a number, tensor or schedule).
        mask: the params that decay (a pytree of bools, or a function of the params
            returning one, as :func:`add_decayed_weights`); the others get plain Adam, as
            a torch param group with ``weight_decay=0``.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.adamw", learning_rate)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


def nadam(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    """NAdam: :func:`adam` with ``nesterov=True`` (the same arguments).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        nesterov: Nesterov momentum (on by default: that is NAdam).

    Returns:
        The chained GradientTransformation.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def nadamw(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: Scalar = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    """NAdamW: :func:`adamw` with ``nesterov=True`` (the same arguments).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        mu_dtype: the dtype of the first moment (``None``: the param's).
        weight_decay: the decoupled weight decay coefficient, ``>= 0``: a number, a 0-dim
            tensor or a schedule of the step count.
        mask: which params decay: a pytree of bools like the params (or a prefix of it), or
            a function of the params returning one; ``None`` decays all.
        nesterov: Nesterov momentum (on by default: that is NAdamW).

    Returns:
        The chained GradientTransformation.
    """
    return adamw(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov
    )


def lamb(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """LAMB (You et al., 2020): ``chain(scale_by_adam(b1, b2, eps, eps_root),
    add_decayed_weights(weight_decay, mask), scale_by_trust_ratio(),
    scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        eps_root: added inside the square root (to differentiate through the update).
        weight_decay: the decoupled weight decay coefficient, ``>= 0``: a number, a 0-dim tensor or
            a schedule of the step count.
        mask: which params decay: a pytree of bools like the params (or a prefix of it), or a
            function of the params returning one; ``None`` decays all.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.lamb", learning_rate)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(lr),
    )


def lion(
    learning_rate: Scalar,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    weight_decay: Scalar = 1e-3,
    mask: Any = None,
) -> GradientTransformation:
    """Lion (Chen et al., 2023): ``chain(scale_by_lion(b1, b2, mu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the weight of the momentum in the update's direction.
        b2: the decay of the momentum.
        mu_dtype: the dtype of the momentum (``None``: the param's).
        weight_decay: the decoupled weight decay coefficient, ``>= 0``: a number, a 0-dim tensor or
            a schedule of the step count.
        mask: which params decay: a pytree of bools like the params (or a prefix of it), or a
            function of the params returning one; ``None`` decays all.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.lion", learning_rate)
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


def rmsprop(
    learning_rate: Scalar,
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSprop: ``chain(scale_by_rms(...) (scale_by_stddev with centered),
    scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``.

    With ``eps_in_sqrt=False`` this is :class:`torch.optim.RMSprop` (whose ``alpha`` is
    ``decay``; with a momentum and a schedule, torch scales by the rate after the trace:
    ``chain(scale_by_rms(...), trace(momentum), scale_by_learning_rate(schedule))``).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        decay: the decay of the moving average of squared updates, in ``[0, 1]``.
        eps: added inside (``eps_in_sqrt``) or outside the square root.
        initial_scale: the moving average's start.
        eps_in_sqrt: put ``eps`` inside the square root (optax's form) or, ``False``, outside
            (:class:`torch.optim.RMSprop`'s).
        bias_correction: divide the moving average by ``1 - decay**t``.
        centered: :func:`scale_by_stddev` instead of :func:`scale_by_rms`.
        momentum: the decay of a :func:`trace` (momentum) after the scaling; ``None``: no momentum.
        nesterov: Nesterov momentum in that trace.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).

    Raises:
        TypeError: ``centered`` is not a bool.
    """
    where = "fm.optim.rmsprop"
    lr = _lr(where, learning_rate)
    if not isinstance(centered, bool):
        raise TypeError(f"{where}: centered must be a bool, got {centered!r}")
    scaling = scale_by_stddev if centered else scale_by_rms
    if momentum is not None:
        momentum = number(where, "momentum", momentum)
    return chain(
        scaling(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
        scale_by_learning_rate(lr),
        identity() if momentum is None else trace(momentum, nesterov),
    )


def adagrad(
    learning_rate: Scalar, initial_accumulator_value: Scalar = 0.1, eps: Scalar = 1e-7
) -> GradientTransformation:
    """Adagrad: ``chain(scale_by_rss(initial_accumulator_value, eps),
    scale_by_learning_rate(learning_rate))``. torch's ``lr_decay`` is the schedule
    ``lambda t: lr / (1 + t.double() * lr_decay)`` (a schedule's count is an int64
    tensor: ``t * lr_decay`` alone would be float32, torch's default dtype).

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        initial_accumulator_value: the start of the sum of squared updates, ``>= 0``.
        eps: added inside the square root.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.adagrad", learning_rate)
    return chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(lr))


def sign_sgd(learning_rate: Scalar) -> GradientTransformation:
    """signSGD: ``chain(scale_by_sign(), scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    return chain(scale_by_sign(), scale_by_learning_rate(_lr("fm.optim.sign_sgd", learning_rate)))


def signum(
    learning_rate: Scalar, beta: Scalar = 0.9, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    """Signum, signSGD with momentum: ``chain(ema(beta, debias=False), scale_by_sign(),
    scale_by_learning_rate(learning_rate))``.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        beta: the moving average's decay.
        accumulator_dtype: as :func:`ema`'s.

    Returns:
        The chained GradientTransformation (its state: the tuple of the pieces' states).
    """
    lr = _lr("fm.optim.signum", learning_rate)
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(lr),
    )
