"""optax's regression losses and label smoothing, elementwise (no reduction), as optax's."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._common import Axis, dims, floating, masked_sum, same_shape


def squared_error(predictions: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise ``(predictions - targets) ** 2`` (``predictions ** 2`` without
    targets), as optax's; ``torch.nn.functional.mse_loss(..., reduction="none")``.

    Arguments:
        predictions: a floating tensor.
        targets: a tensor of the same shape, or ``None``.

    Returns:
        A tensor of ``predictions``' shape.

    Raises:
        TypeError: non-floating predictions.
        ValueError: shapes that differ.
    """
    where = "fm.optim.losses.squared_error"
    predictions = floating(where, "predictions", predictions)
    if targets is None:
        return predictions**2
    targets = torch.as_tensor(targets)
    same_shape(where, predictions, targets, "predictions and targets")
    return (predictions - targets) ** 2


def l2_loss(predictions: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Half the squared error, elementwise, as optax's.

    Arguments:
        predictions: a floating tensor.
        targets: a tensor of the same shape, or ``None``.

    Returns:
        ``0.5 * squared_error(predictions, targets)``, of ``predictions``' shape.
    """
    return 0.5 * squared_error(predictions, targets)


def huber_loss(
    predictions: torch.Tensor, targets: torch.Tensor | None = None, *, delta: float = 1.0
) -> torch.Tensor:
    """The Huber loss, elementwise: quadratic within ``delta``, linear beyond, as
    optax's (``torch.nn.functional.huber_loss(..., reduction="none")``).

    Arguments:
        predictions: a floating tensor.
        targets: a tensor of the same shape, or ``None``.
        delta: where the loss turns linear.

    Returns:
        A tensor of ``predictions``' shape.
    """
    predictions = floating("fm.optim.losses.huber_loss", "predictions", predictions)
    errors = predictions - targets if targets is not None else predictions
    abs_errors = errors.abs()
    quadratic = torch.clamp(abs_errors, max=delta)
    linear = abs_errors - quadratic
    return 0.5 * quadratic**2 + delta * linear


def log_cosh(predictions: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """``log(cosh(predictions - targets))``, elementwise, computed stably as optax's.

    Arguments:
        predictions: a floating tensor.
        targets: a tensor of the same shape, or ``None``.

    Returns:
        A tensor of ``predictions``' shape.
    """
    predictions = floating("fm.optim.losses.log_cosh", "predictions", predictions)
    errors = predictions - targets if targets is not None else predictions
    return torch.logaddexp(errors, -errors) - math.log(2.0)


def cosine_similarity(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    epsilon: float = 0.0,
    axis: Axis = -1,
    where: Any = None,
) -> torch.Tensor:
    """The cosine of the angle between ``predictions`` and ``targets`` along ``axis``,
    as optax's (``torch.nn.functional.cosine_similarity`` clamps the product of the
    norms instead of each squared norm).

    Arguments:
        predictions: a floating tensor.
        targets: a floating tensor broadcastable to it.
        epsilon: a floor on each squared norm.
        axis: the axis (or axes; ``None``: all) of the vectors.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The similarities, ``axis`` reduced.
    """
    name = "fm.optim.losses.cosine_similarity"
    a = floating(name, "predictions", predictions)
    b = floating(name, "targets", targets)
    ndim = len(torch.broadcast_shapes(a.shape, b.shape))
    d = dims(axis, ndim)
    a_norm = torch.sqrt(torch.clamp(masked_sum(a * a, d, where, keepdim=True), min=epsilon))
    b_norm = torch.sqrt(torch.clamp(masked_sum(b * b, d, where, keepdim=True), min=epsilon))
    return masked_sum((a / a_norm) * (b / b_norm), d, where)


def cosine_distance(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    epsilon: float = 0.0,
    axis: Axis = -1,
    where: Any = None,
) -> torch.Tensor:
    """``1 - cosine_similarity``, as optax's.

    Arguments:
        predictions: a floating tensor.
        targets: a floating tensor broadcastable to it.
        epsilon: a floor on each squared norm.
        axis: the axis (or axes; ``None``: all) of the vectors.
        where: a bool tensor of the entries to include, or ``None``.

    Returns:
        The distances, ``axis`` reduced.
    """
    return 1.0 - cosine_similarity(predictions, targets, epsilon=epsilon, axis=axis, where=where)


def smooth_labels(
    labels: torch.Tensor, alpha: float, *, axis: Axis = -1, where: Any = None
) -> torch.Tensor:
    """Label smoothing, ``(1 - alpha) * labels + alpha / num_categories``, as optax's.

    Arguments:
        labels: floating one-hot (or soft) labels.
        alpha: the smoothing factor.
        axis: the class axis (or axes).
        where: a bool tensor of the classes that count, or ``None`` (then every class).

    Returns:
        The smoothed labels, of ``labels``' shape.
    """
    labels = floating("fm.optim.losses.smooth_labels", "labels", labels)
    if where is None:
        d = dims(axis, labels.dim())
        num_categories = math.prod(labels.shape[i] for i in d)
    else:
        where = torch.as_tensor(where, device=labels.device)
        num_categories = masked_sum(where.to(labels.dtype), axis, None, keepdim=True)
    return (1.0 - alpha) * labels + alpha / num_categories
