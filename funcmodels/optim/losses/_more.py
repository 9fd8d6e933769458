"""optax's remaining losses: sparsemax, ranking, self-supervised, segmentation and the
Fenchel-Young construction, as optax's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..projections import unit_simplex
from ._common import floating, log_softmax, masked_sum, one_hot, softmax
from ._regression import cosine_similarity


def multiclass_sparsemax_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The multiclass sparsemax loss (Martins & Astudillo, 2016), as optax's.

    Arguments:
        scores: ``(B, K)`` scores.
        labels: ``(B,)`` integer labels.

    Returns:
        The ``(B,)`` losses.
    """
    scores = torch.as_tensor(scores)
    proba = unit_simplex(scores)
    hot = one_hot(labels, scores.shape[-1], torch.bool)
    label_score = (scores * hot).sum(-1, keepdim=True)
    shifted = torch.where(hot, torch.zeros_like(scores), scores - label_score)
    shifted = torch.where(proba != 0, shifted, torch.zeros_like(shifted))
    return (proba * shifted).sum(-1) + 0.5 * (1.0 - (proba * proba).sum(-1))


def _safe_reduce(a: torch.Tensor, where: Any, reduce_fn: Callable | None) -> torch.Tensor:
    if reduce_fn is None:
        return a if where is None else torch.where(where, a, torch.zeros_like(a))
    if reduce_fn is torch.mean:
        if where is None:
            out = a.mean()
        else:
            out = masked_sum(a, None, where) / where.sum()
        valid = ~torch.isnan(a).any()
        return torch.where(torch.isnan(out) & valid, torch.zeros_like(out), out)
    if reduce_fn is torch.sum:
        return masked_sum(a, None, where)
    return reduce_fn(a) if where is None else reduce_fn(a, where=where)


def ranking_softmax_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    where: Any = None,
    weights: torch.Tensor | None = None,
    reduce_fn: Callable[..., torch.Tensor] | None = torch.mean,
) -> torch.Tensor:
    """The ranking softmax loss (ListNet-style cross entropy over lists), as optax's.

    Arguments:
        logits: ``(..., list_size)`` scores.
        labels: relevance labels of the same shape.
        where: a bool tensor of the items to include, or ``None``.
        weights: per-item weights, or ``None``.
        reduce_fn: ``torch.mean`` (optax's ``jnp.mean``: lists with no item count as
            masked out), ``torch.sum``, ``None`` (per list) or a function called as
            ``reduce_fn(loss)`` (``reduce_fn(loss, where=...)`` with ``where``).

    Returns:
        The reduced loss, or the per-list losses for ``reduce_fn=None``.
    """
    logits = floating("fm.optim.losses.ranking_softmax_loss", "logits", logits)
    labels = torch.as_tensor(labels, device=logits.device).to(logits.dtype)
    if where is not None:
        where = torch.as_tensor(where, device=logits.device)
        labels = torch.where(where, labels, torch.zeros_like(labels))
        logits = torch.where(where, logits, torch.full_like(logits, -torch.inf))
    if weights is not None:
        labels = labels * weights
    loss = -masked_sum(labels * log_softmax(logits, -1), -1, where)
    if where is not None:
        where = where.any(-1)
    return _safe_reduce(loss, where, reduce_fn)


def ntxent(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """The normalized temperature-scaled cross entropy (SimCLR's NT-Xent), as optax's.

    Arguments:
        embeddings: ``(B, D)`` floating embeddings.
        labels: ``(B,)`` integer labels; equal labels mark positive pairs.
        temperature: the softmax temperature.

    Returns:
        The 0-dim loss.

    Raises:
        ValueError: labels and embeddings of different lengths.
    """
    embeddings = floating("fm.optim.losses.ntxent", "embeddings", embeddings)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            "fm.optim.losses.ntxent: labels and embeddings must have the same leading "
            f"dimension, found {labels.shape[0]} for labels and {embeddings.shape[0]} for "
            "embeddings"
        )
    eps = torch.finfo(embeddings.dtype).eps
    xcs = cosine_similarity(embeddings[None, :, :], embeddings[:, None, :], epsilon=eps)
    xcs = xcs / temperature
    matches = labels[:, None] == labels[None, :]
    diffs = ~matches
    eye = torch.eye(matches.shape[0], dtype=torch.bool, device=matches.device)
    matches = matches & ~eye
    minus_inf = torch.full_like(xcs, -torch.inf)
    xcs_diffs = torch.where(diffs, xcs, minus_inf)
    xcs_matches = torch.where(matches, xcs, minus_inf)
    xcs_max = torch.cat((xcs_diffs, xcs_matches), -1).amax(1, keepdim=True).detach()
    shift_diffs, shift_matches = xcs_diffs - xcs_max, xcs_matches - xcs_max
    denom = torch.exp(shift_diffs).sum(1, keepdim=True) + torch.exp(shift_matches)
    log_softm = shift_matches - torch.log(denom)
    kept = torch.where(matches, log_softm, torch.zeros_like(log_softm))
    return -kept.sum() / matches.sum()


def triplet_margin_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    axis: int = -1,
    norm_degree: float = 2,
    margin: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The triplet margin loss, per triplet, as optax's
    (``F.triplet_margin_loss(..., reduction="none")`` puts ``eps`` inside the difference
    instead).

    Arguments:
        anchors: floating embeddings.
        positives: embeddings like ``anchors``.
        negatives: embeddings like ``anchors``.
        axis: the embedding axis.
        norm_degree: the degree of the norm.
        margin: the margin.
        eps: added inside the root.

    Returns:
        The losses, ``axis`` reduced.
    """
    name = "fm.optim.losses.triplet_margin_loss"
    anchors = floating(name, "anchors", anchors)
    positives = floating(name, "positives", positives)
    negatives = floating(name, "negatives", negatives)
    pos = torch.pow(torch.pow(anchors - positives, norm_degree).sum(axis) + eps, 1 / norm_degree)
    neg = torch.pow(torch.pow(anchors - negatives, norm_degree).sum(axis) + eps, 1 / norm_degree)
    return torch.clamp(pos - neg + margin, min=0)


def make_fenchel_young_loss(max_fun: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A Fenchel-Young loss ``max_fun(scores) - <targets, scores>`` over the last axis,
    as optax's (``max_fun`` maps one vector to a number, e.g. ``torch.logsumexp``).

    Arguments:
        max_fun: a convex function of a 1-d tensor returning a 0-dim one.

    Returns:
        ``loss(scores, targets, *args, **kwargs)``, vectorized over leading axes (the
            extra arguments go to ``max_fun`` unbatched).
    """

    def fenchel_young_loss(scores, targets, *args, **kwargs):
        flat = scores.reshape(-1, scores.shape[-1])
        values = torch.func.vmap(lambda s: max_fun(s, *args, **kwargs))(flat)
        max_value = values.reshape(scores.shape[:-1])
        return max_value - (targets * scores).sum(-1)

    return fenchel_young_loss


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean(-1)
    if reduction == "sum":
        return loss.sum(-1)
    if reduction == "none":
        return loss
    raise ValueError(f"fm.optim.losses.dice_loss: unsupported reduction {reduction!r}")


def _dice_inputs(predictions, targets, apply_softmax):
    if predictions.dim() == targets.dim() - 1:
        predictions = predictions[..., None]
    if targets.dim() == predictions.dim() - 1:
        targets = targets[..., None]
    if predictions.shape != targets.shape:
        raise ValueError(
            "fm.optim.losses.dice_loss: predictions and targets must have the same shape, "
            f"got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    if not apply_softmax:
        sums = predictions.sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), rtol=1e-5):
            raise ValueError(
                "fm.optim.losses.dice_loss: with apply_softmax=False, predictions must be "
                "probability distributions summing to 1 along the class axis; found sums "
                f"in [{float(sums.min()):.6f}, {float(sums.max()):.6f}]"
            )
        return predictions, targets
    if predictions.shape[-1] == 1:
        return torch.sigmoid(predictions), targets
    return softmax(predictions, -1), targets


def dice_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    smooth: float = 1.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    apply_softmax: bool = True,
    reduction: str = "mean",
    ignore_background: bool = False,
    axis: Any = None,
) -> torch.Tensor:
    """The (Tversky-generalized) Dice loss for segmentation, per example, as optax's.

    Arguments:
        predictions: ``(B, ..., C)`` logits (or probabilities with
            ``apply_softmax=False``).
        targets: ``(B, ..., C)`` one-hot (or soft) targets.
        class_weights: ``(C,)`` weights, or ``None``.
        smooth: added to the numerator and denominator.
        alpha: the Tversky weight of false positives.
        beta: the Tversky weight of false negatives.
        apply_softmax: softmax over classes first (sigmoid for one class).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over classes.
        ignore_background: drop class 0.
        axis: the spatial axes summed (default all but the first and last).

    Returns:
        ``(B,)`` losses (``(B, C)`` for ``reduction="none"``).

    Raises:
        ValueError: shapes that differ, probabilities that do not sum to 1, or an
            unknown reduction.
    """
    probs, targets = _dice_inputs(predictions, targets, apply_softmax)
    axis = tuple(range(1, probs.dim() - 1)) if axis is None else axis
    intersection = masked_sum(probs * targets, axis)
    pred_sum, target_sum = masked_sum(probs, axis), masked_sum(targets, axis)
    denominator = (
        intersection
        + alpha * (pred_sum - intersection)
        + beta * (target_sum - intersection)
        + smooth
    )
    dice = 1.0 - (intersection + smooth) / denominator
    if class_weights is not None:
        dice = dice * class_weights
    if ignore_background and probs.shape[-1] > 1:
        dice = dice[..., 1:]
    return _reduce(dice, reduction)


def multiclass_generalized_dice_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    smooth: float = 1.0,
    apply_softmax: bool = True,
    ignore_background: bool = False,
) -> torch.Tensor:
    """The generalized Dice loss (Sudre et al., 2017): class weights from inverse squared
    class frequencies over the batch, as optax's.

    Arguments:
        predictions: ``(B, ..., C)`` logits.
        targets: ``(B, ..., C)`` one-hot targets.
        smooth: added to the numerator and denominator.
        apply_softmax: softmax over classes first.
        ignore_background: drop class 0.

    Returns:
        The 0-dim loss.

    Raises:
        ValueError: shapes that differ.
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            "fm.optim.losses.multiclass_generalized_dice_loss: predictions and targets "
            f"must have the same shape, got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}"
        )
    frequencies = targets.sum(dim=tuple(range(targets.dim() - 1)))
    class_weights = 1.0 / (frequencies**2 + 1e-7)
    class_weights = class_weights / class_weights.sum() * len(class_weights)
    return dice_loss(
        predictions,
        targets,
        class_weights=class_weights,
        smooth=smooth,
        apply_softmax=apply_softmax,
        reduction="none",
        ignore_background=ignore_background,
    ).mean()


def binary_dice_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    smooth: float = 1.0,
    apply_sigmoid: bool = True,
) -> torch.Tensor:
    """The Dice loss of a binary segmentation, per example, as optax's.

    Arguments:
        predictions: ``(B, ...)`` logits (a trailing class axis of 1 allowed).
        targets: ``(B, ...)`` 0/1 targets.
        smooth: added to the numerator and denominator.
        apply_sigmoid: sigmoid the predictions first.

    Returns:
        The ``(B,)`` losses.
    """
    if predictions.dim() == targets.dim() and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return dice_loss(
        predictions, targets, smooth=smooth, apply_softmax=apply_sigmoid, reduction="mean"
    )
