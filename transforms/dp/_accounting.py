"""The rest of DP-SGD around the clipped gradient: Gaussian noise from a key
(:func:`add_noise`), Poisson sampling (:func:`poisson_mask`, :func:`poisson_batches`) and
privacy accounting by Opacus's accountants (:func:`epsilon`, an optional dependency)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

import funcmodels as fm
from funcmodels.extend import name_hash

from ._bounds import total


def add_noise(
    grads: Any,
    key: torch.Tensor,
    *,
    noise_multiplier: float,
    max_norm: float | Mapping[str, float],
) -> Any:
    """``grads`` plus Gaussian noise of std ``noise_multiplier * max_norm`` on every entry,
    drawn from ``key`` with each param's name folded in (the same key gives the same
    noise; nothing global is drawn from).

    Arguments:
        grads: the summed clipped gradients, Params or a dict of tensors.
        key: a key; use a new one every step (``fm.fold_in(key, step)``).
        noise_multiplier: the noise's std relative to the clipping bound, ``>= 0``.
        max_norm: the clipping bound as given to :func:`clipped_grad`: a number, or
            per-layer bounds, which count as their :func:`total_norm`.

    Returns:
        ``grads``' structure, each tensor plus its noise (same shape and dtype).

    Raises:
        TypeError: ``noise_multiplier`` is not a number.
        ValueError: ``noise_multiplier`` is negative, or ``max_norm`` is not a valid
            bound.
    """
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise TypeError(
            "transforms.dp.add_noise: noise_multiplier must be a number, got "
            f"{type(noise_multiplier).__name__}"
        )
    if noise_multiplier < 0:
        raise ValueError(
            f"transforms.dp.add_noise: noise_multiplier must be >= 0, got {noise_multiplier!r}"
        )
    std = float(noise_multiplier) * total(max_norm, "add_noise")

    def noisy(name: str, t: torch.Tensor) -> torch.Tensor:
        k = fm.fold_in(key, name_hash(name))
        return t + std * fm.random.normal(k, t.shape, t.dtype, t.device)

    return fm.tree.map_with_path(noisy, grads)


def poisson_mask(key: torch.Tensor, n: int, sample_rate: float) -> torch.Tensor:
    """Poisson sampling as a fixed-shape mask: each of ``n`` examples is in the batch with
    probability ``sample_rate``, independently (``(n,)`` bool, from ``key``). Multiply the
    per-example losses by it (or pass it as per-example weights) to keep shapes static for
    ``torch.compile``; an example left out contributes a zero gradient.

    Arguments:
        key: a key.
        n: the number of examples.
        sample_rate: the probability of each example, in ``(0, 1]``.

    Returns:
        A ``bool`` tensor of shape ``(n,)``.

    Raises:
        ValueError: ``sample_rate`` is out of ``(0, 1]``.
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"transforms.dp: sample_rate must be in (0, 1], got {sample_rate!r}")
    return fm.random.uniform(key, (n,)) < sample_rate


def poisson_batches(
    key: torch.Tensor, n: int, sample_rate: float, steps: int
) -> Iterator[torch.Tensor]:
    """``steps`` Poisson-sampled batches of the indices ``0..n-1`` (variable sizes, as the
    privacy analysis of DP-SGD assumes), the ``i``-th from ``fold_in(key, i)``.

    Arguments:
        key: a key.
        n: the number of examples.
        sample_rate: the probability of each example in each batch, in ``(0, 1]``.
        steps: how many batches.

    Yields:
        ``int64`` index tensors of shape ``(b,)``, ``b`` varying (possibly 0).

    Example:
        ```python
        batches = list(transforms.dp.poisson_batches(fm.key(0), 100, 0.1, steps=3))
        assert len(batches) == 3
        assert all(bool((b >= 0).all() & (b < 100).all()) for b in batches)
        ```
    """
    for i in range(steps):
        yield torch.nonzero(poisson_mask(fm.fold_in(key, i), n, sample_rate)).squeeze(1)


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The ``epsilon`` of ``(epsilon, delta)``-DP after ``steps`` steps of DP-SGD with
    Poisson sampling, from Opacus's accountants (``'rdp'``, ``'prv'`` or ``'gdp'``).
    Needs the ``dp`` extra: ``pip install funcmodels[dp]``.

    Arguments:
        noise_multiplier: the noise's std relative to the clipping bound.
        sample_rate: the Poisson sampling rate (expected batch size / dataset size).
        steps: the number of steps taken.
        delta: the ``delta`` of the guarantee (typically below ``1 / dataset size``).
        accountant: ``'rdp'``, ``'prv'`` or ``'gdp'``.

    Returns:
        The ``epsilon``, a float.

    Raises:
        ImportError: Opacus is not installed.
    """
    try:
        from opacus.accountants import create_accountant
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "transforms.dp.epsilon needs Opacus's accountants: pip install 'funcmodels[dp]'"
        ) from err
    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))
