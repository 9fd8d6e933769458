"""optax's classification losses, per example (no reduction over the batch), as optax's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._common import Axis, dims, floating, log_softmax, logsumexp, masked_sum, one_hot, softmax


def sigmoid_binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy from logits, elementwise, as optax's
    (``F.binary_cross_entropy_with_logits(..., reduction="none")``).

    Arguments:
        logits: a floating tensor of logits.
        labels: probabilities (or 0/1 labels) of the same shape, cast to the logits' dtype.

    Returns:
        A tensor of the logits' shape.
    """
    logits = floating("fm.optim.losses.sigmoid_binary_cross_entropy", "logits", logits)
    labels = torch.as_tensor(labels, device=logits.device).to(logits.dtype)
    return -labels * F.logsigmoid(logits) - (1.0 - labels) * F.logsigmoid(-logits)


def hinge_loss(predictor_outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The hinge loss ``max(0, 1 - outputs * targets)``, elementwise, as optax's.

    Arguments:
        predictor_outputs: the scores.
        targets: the labels, -1 or 1.

    Returns:
        A tensor of the broadcast shape.
    """
    return torch.clamp(1 - predictor_outputs * targets, min=0)


def perceptron_loss(predictor_outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The perceptron loss ``max(0, -outputs * targets)``, elementwise, as optax's.

    Arguments:
        predictor_outputs: the scores.
        targets: the labels, -1 or 1, of the same shape.

    Returns:
        A tensor of the shape of both.

    Raises:
        ValueError: shapes that differ.
    """
    if predictor_outputs.shape != targets.shape:
        raise ValueError(
            "fm.optim.losses.perceptron_loss: predictor_outputs and targets must have the "
            f"same shape, got {tuple(predictor_outputs.shape)} and {tuple(targets.shape)}"
        )
    return torch.clamp(-predictor_outputs * targets, min=0)


def sparsemax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The binary sparsemax loss, elementwise, as optax's: ``sparse_plus`` of the
    logit, negated where the label is 1.

    Arguments:
        logits: a floating tensor.
        labels: 0/1 labels of the same shape.

    Returns:
        A tensor of the logits' shape.
    """
    x = torch.where(torch.as_tensor(labels, device=logits.device).bool(), -logits, logits)
    # jax.nn.sparse_plus: 0 below -1, x above 1, (x + 1)**2 / 4 between
    return torch.where(x <= -1, torch.zeros_like(x), torch.where(x >= 1, x, (x + 1) ** 2 / 4))


def safe_softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross entropy that stays finite where a logit is ``-inf`` and its label 0,
    as optax's.

    Arguments:
        logits: a floating ``(..., classes)`` tensor.
        labels: probabilities over the last axis, of the same shape.

    Returns:
        The losses, ``(...)``.
    """
    logits = floating("fm.optim.losses.safe_softmax_cross_entropy", "logits", logits)
    weighted = labels * log_softmax(logits, -1)
    weighted = torch.where(labels != 0.0, weighted, torch.zeros_like(weighted))
    return -weighted.sum(-1)


def _expand_where(where: Any, logits: torch.Tensor, axis: Axis) -> Any:
    if where is None:
        return None
    where = torch.as_tensor(where, device=logits.device)
    if where.dim() != logits.dim():
        for a in sorted(dims(axis, logits.dim())):
            where = where.unsqueeze(a)
    return where


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """The cross entropy between ``labels`` (probabilities) and ``softmax(logits)``, as
    optax's (``F.cross_entropy`` with probability targets and ``reduction="none"``).

    Arguments:
        logits: a floating tensor.
        labels: probabilities along ``axis``, of the same shape.
        axis: the class axis (or axes).
        where: a bool tensor of the classes to include, or ``None``.

    Returns:
        The losses, ``axis`` reduced.
    """
    logits = floating("fm.optim.losses.softmax_cross_entropy", "logits", logits)
    where = _expand_where(where, logits, axis)
    log_probs = log_softmax(logits, axis, where)
    return -masked_sum(labels * log_probs, axis, where)


def _flatten_class_axes(logits, where, axis):
    """Move the class axes last and flatten them into one, as optax does for a tuple."""
    logit_axes = dims(axis, logits.dim())
    batch_axes = tuple(i for i in range(logits.dim()) if i not in logit_axes)
    order = batch_axes + logit_axes
    logits = logits.permute(order).reshape(logits.shape[: len(batch_axes)] + (-1,))
    if where is not None:
        where = where.permute(order).reshape(where.shape[: len(batch_axes)] + (-1,))
    return logits, where, len(batch_axes)


def softmax_cross_entropy_with_integer_labels(
    logits: torch.Tensor,
    labels: torch.Tensor,
    axis: int | tuple[int, ...] = -1,
    where: Any = None,
) -> torch.Tensor:
    """The cross entropy of integer class labels under ``softmax(logits)``, as optax's
    (``F.cross_entropy(..., reduction="none")``).

    Arguments:
        logits: a floating tensor.
        labels: integer class indices, of the logits' shape without ``axis``.
        axis: the class axis, or a tuple of axes (flattened, row-major).
        where: a bool tensor of the classes to include, or ``None``; a row with none
            gives 0.

    Returns:
        The losses, of ``labels``' shape.

    Raises:
        TypeError: non-floating logits, non-integer labels, or an axis of another type.
    """
    name = "fm.optim.losses.softmax_cross_entropy_with_integer_labels"
    logits = floating(name, "logits", logits)
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be an integer tensor, got dtype {labels.dtype}")
    where = _expand_where(where, logits, axis)
    if isinstance(axis, int):
        axis = dims(axis, logits.dim())[0]
    elif isinstance(axis, tuple):
        logits, where, axis = _flatten_class_axes(logits, where, axis)
    else:
        raise TypeError(f"{name}: axis must be an int or a tuple of ints, got {type(axis)}")
    label_logits = logits.gather(axis, labels.long().unsqueeze(axis)).squeeze(axis)
    out = logsumexp(logits, axis, where) - label_logits
    if where is not None:
        out = torch.where(where.any(axis), out, torch.zeros_like(out))
    return out


def multiclass_hinge_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The multiclass hinge loss ``max(scores + 1 - onehot) - score[label]``, as optax's.

    Arguments:
        scores: ``(..., classes)`` scores.
        labels: ``(...)`` integer labels.

    Returns:
        The losses, ``(...)``.
    """
    hot = one_hot(labels, scores.shape[-1], scores.dtype)
    return (scores + 1.0 - hot).amax(-1) - (scores * hot).sum(-1)


def multiclass_perceptron_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The multiclass perceptron loss ``max(scores) - score[label]``, as optax's.

    Arguments:
        scores: ``(..., classes)`` scores.
        labels: ``(...)`` integer labels.

    Returns:
        The losses, ``(...)``.
    """
    hot = one_hot(labels, scores.shape[-1], scores.dtype)
    return scores.amax(-1) - (scores * hot).sum(-1)


def poly_loss_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float = 2.0,
    axis: Axis = -1,
    where: Any = None,
) -> torch.Tensor:
    """PolyLoss (Leng et al., 2022): the cross entropy plus ``epsilon * (1 - p_t)``, as
    optax's.

    Arguments:
        logits: a floating tensor.
        labels: floating probabilities along ``axis``, of the same shape.
        epsilon: the weight of the polynomial term.
        axis: the class axis (or axes).
        where: a bool tensor of the classes to include, or ``None``.

    Returns:
        The losses, ``axis`` reduced.

    Raises:
        TypeError: non-floating labels.
    """
    name = "fm.optim.losses.poly_loss_cross_entropy"
    logits = floating(name, "logits", logits)
    labels = floating(name, "labels", labels)
    p = softmax(logits, axis, where)
    one_minus_pt = masked_sum(labels * (1 - p), axis, where)
    ce = softmax_cross_entropy(logits, labels, axis, where)
    return ce + epsilon * one_minus_pt


def kl_divergence(
    log_predictions: torch.Tensor, targets: torch.Tensor, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """``KL(targets || predictions)`` from log-predictions, as optax's
    (``F.kl_div(log_predictions, targets, reduction="none").sum(axis)``).

    Arguments:
        log_predictions: floating log-probabilities.
        targets: floating probabilities of the same shape (0 allowed).
        axis: the axis (or axes) summed over.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The divergences, ``axis`` reduced.
    """
    name = "fm.optim.losses.kl_divergence"
    log_predictions = floating(name, "log_predictions", log_predictions)
    targets = floating(name, "targets", targets)
    # xlogy is optax's where(targets == 0, 0, targets * log(targets)) with a finite
    # gradient at 0
    loss = torch.special.xlogy(targets, targets) - targets * log_predictions
    return masked_sum(loss, axis, where)


def kl_divergence_with_log_targets(
    log_predictions: torch.Tensor, log_targets: torch.Tensor, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """``KL(targets || predictions)`` from log-predictions and log-targets, as optax's
    (``F.kl_div(..., log_target=True, reduction="none").sum(axis)``).

    Arguments:
        log_predictions: floating log-probabilities.
        log_targets: floating log-probabilities of the same shape.
        axis: the axis (or axes) summed over.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The divergences, ``axis`` reduced.
    """
    name = "fm.optim.losses.kl_divergence_with_log_targets"
    log_predictions = floating(name, "log_predictions", log_predictions)
    log_targets = floating(name, "log_targets", log_targets)
    return masked_sum(torch.exp(log_targets) * (log_targets - log_predictions), axis, where)


def generalized_kl_divergence(
    log_predictions: torch.Tensor, targets: torch.Tensor, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """The generalized KL divergence of unnormalized measures,
    ``KL + sum(exp(log_predictions) - targets)``, as optax's.

    Arguments:
        log_predictions: floating log-measures.
        targets: floating measures of the same shape.
        axis: the axis (or axes) summed over.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The divergences, ``axis`` reduced.
    """
    x = kl_divergence(log_predictions, targets, axis=axis, where=where)
    return x + masked_sum(torch.exp(log_predictions) - targets, axis, where)


def convex_kl_divergence(
    log_predictions: torch.Tensor, targets: torch.Tensor, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """:func:`generalized_kl_divergence` under optax's older name (deprecated there).

    Arguments:
        log_predictions: floating log-measures.
        targets: floating measures of the same shape.
        axis: the axis (or axes) summed over.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The divergences, ``axis`` reduced.
    """
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)


def sigmoid_focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, alpha: float | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """The focal loss (Lin et al., 2017) from logits, elementwise, as optax's
    (torchvision's ``sigmoid_focal_loss`` with ``reduction="none"``).

    Arguments:
        logits: a floating tensor.
        labels: probabilities (or 0/1 labels) of the same shape.
        alpha: the weight of the positive class (``None``: no weighting).
        gamma: the focusing exponent.

    Returns:
        A tensor of the logits' shape.
    """
    logits = floating("fm.optim.losses.sigmoid_focal_loss", "logits", logits)
    labels = torch.as_tensor(labels, device=logits.device).to(logits.dtype)
    ce_loss = sigmoid_binary_cross_entropy(logits, labels)
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_one_minus_p_t = logsumexp(
        torch.stack([log_p, log_q], -1), -1, b=torch.stack([1 - labels, labels], -1)
    )
    loss = ce_loss * torch.exp(gamma * log_one_minus_p_t)
    if alpha is None:
        return loss
    return (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
