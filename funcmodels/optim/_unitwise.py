"""optax.transforms' unit-wise helpers of adaptive gradient clipping: ``unitwise_norm`` and
``unitwise_clip``."""

from __future__ import annotations

import torch


def unitwise_norm(x: torch.Tensor, axis: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """The 2-norm of each unit of ``x``, broadcast to ``x``'s shape, as optax's.

    A unit is a slice along ``axis``; without ``axis``, by rank: a scalar or vector (after
    squeezing) is one unit, matrices and 3-d leaves reduce axis 0 (linear layers, in
    optax's ``(in, out)`` layout), 4-d and 5-d leaves all but the last axis (``HWIO`` and
    ``DHWIO`` kernels).

    Arguments:
        x: a tensor.
        axis: the reduced axis or axes, or ``None`` (by rank, as above).

    Returns:
        A tensor of ``x``'s shape holding each unit's norm.

    Raises:
        ValueError: ``axis=None`` with a leaf of more than 5 dimensions.
    """
    return unit_norms(x, axis, "fm.optim.transforms.unitwise_norm")


def unitwise_clip(
    g_norm: torch.Tensor, max_norm: torch.Tensor, grad: torch.Tensor, div_eps: float = 1e-6
) -> torch.Tensor:
    """Clip ``grad`` unit-wise: where ``g_norm >= max_norm``, scale it by
    ``max_norm / max(g_norm, div_eps)``, as optax's.

    Arguments:
        g_norm: the units' gradient norms, shaped as ``grad``.
        max_norm: the largest norm allowed per unit, shaped as ``grad``.
        grad: the gradient.
        div_eps: a floor on the divisor.

    Returns:
        The clipped gradient, of ``grad``'s shape.

    Raises:
        ValueError: shapes that differ.
    """
    if not g_norm.shape == max_norm.shape == grad.shape:
        raise ValueError(
            "fm.optim.transforms.unitwise_clip: g_norm, max_norm and grad must have the "
            f"same shape, got {tuple(g_norm.shape)}, {tuple(max_norm.shape)} and "
            f"{tuple(grad.shape)}"
        )
    clipped = grad * (max_norm / torch.clamp(g_norm, min=div_eps))
    return torch.where(g_norm < max_norm, grad, clipped)


def unit_norms(x: torch.Tensor, axis: int | tuple[int, ...] | None, where: str) -> torch.Tensor:
    """``unitwise_norm`` with the name an error gives (``adaptive_grad_clip`` uses it too)."""
    sq = x * x
    if axis is not None:
        total = sq.sum(dim=axis, keepdim=True)
    elif x.squeeze().dim() <= 1:
        total = sq.sum().reshape([1] * x.dim())
    elif x.dim() in (2, 3):
        total = sq.sum(dim=0, keepdim=True)
    elif x.dim() in (4, 5):
        total = sq.sum(dim=tuple(range(x.dim() - 1)), keepdim=True)
    else:
        raise ValueError(
            f"{where}: expected a tensor of 1 to 5 dimensions, "
            f"got shape {tuple(x.shape)}; pass axis= to name the reduced axes"
        )
    return torch.sqrt(total).expand(x.shape)
