"""Differentially private training as a function transform: ``transforms.dp``."""

from ._clip import (
    add_noise,
    clipped_grad,
    epsilon,
    poisson_batches,
    poisson_mask,
    total_norm,
)

__all__ = [
    "add_noise",
    "clipped_grad",
    "epsilon",
    "poisson_batches",
    "poisson_mask",
    "total_norm",
]
