"""scikit-learn's bundled 8x8 digits as tensors, split and batched with explicit keys.

The data ship with scikit-learn (1797 images, 10 classes), so the examples need no
download. Shuffling uses funcmodels keys (``fm.random.permutation``,
``fm.random.batches``), never torch's global generator, so a seed fixes the split and the
batch order in every process.
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
    order = fm.random.permutation(key, len(y))
    n_test = round(test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def batches(
    key: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle ``(x, y)`` with ``key`` and yield full batches (``fm.random.batches``; the
    remainder is dropped, which keeps every step's batch size equal, as DP-SGD's noise scale
    assumes)."""
    return fm.random.batches(key, x, y, batch_size=batch_size)


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
