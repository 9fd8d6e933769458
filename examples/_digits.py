"""scikit-learn's bundled 8x8 digits as tensors, split and batched with explicit keys.

The data ship with scikit-learn (1797 images, 10 classes), so the examples need no
download. Shuffling uses funcmodels keys, never torch's global generator, so a seed fixes
the split and the batch order in every process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from sklearn.datasets import load_digits

import funcmodels as fm


class Digits(NamedTuple):
    """A fixed train/test split."""

    x_train: torch.Tensor
    """``(N_train, 1, 8, 8)`` float32 pixels in ``[0, 1]``"""
    y_train: torch.Tensor
    """``(N_train,)`` int64 labels in ``[0, 10)``"""
    x_test: torch.Tensor
    """``(N_test, 1, 8, 8)``"""
    y_test: torch.Tensor
    """``(N_test,)``"""


def permutation(key: torch.Tensor, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` drawn from ``key``.

    Sorting 32-bit random words (rather than floats with 24 random bits) makes ties
    rare, and the stable sort resolves the rest the same way everywhere.

    Returns:
        ``(n,)`` int64 tensor.
    """
    return torch.argsort(fm.random.bits(key, (n,)), stable=True)


def load(key: torch.Tensor, test_fraction: float = 0.2) -> Digits:
    """Load the digits and split them at random into train and test sets.

    Arguments:
        key: decides the split.
        test_fraction: share of the 1797 images held out for testing.

    Returns:
        :class:`Digits`.
    """
    data = load_digits()
    # Pixel values are integers in [0, 16].
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = permutation(key, len(y))
    n_test = round(test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def batches(
    key: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle ``(x, y)`` with ``key`` and yield full batches (the remainder is dropped).

    Dropping the last partial batch keeps every step's batch size equal, which DP-SGD's
    noise scale assumes.

    Yields:
        ``(x_batch, y_batch)`` of ``batch_size`` examples each.
    """
    order = permutation(key, len(y))
    for start in range(0, len(y) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def num_batches(n: int, batch_size: int) -> int:
    """How many batches :func:`batches` yields for ``n`` examples."""
    return n // batch_size


def accuracy(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` classified as ``y`` (eval mode).

    Arguments:
        params: a classifier whose output is ``(N, 10)`` logits.
        x: ``(N, 1, 8, 8)`` images.
        y: ``(N,)`` labels.
    """
    with torch.no_grad():
        return (fm.apply(params, x).argmax(-1) == y).float().mean().item()
