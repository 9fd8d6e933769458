"""Differentially private aggregation of per-example gradients and DP-SGD (Abadi et al.,
2016), as optax.contrib's ``differentially_private_aggregate`` and ``dpsgd``.

The noise is drawn from fm's keys (``fm.random.normal``, one key per leaf split from the
state's key), so its values are not JAX's random bits: the deterministic part is optax's
arithmetic, the noise has optax's distribution.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ... import random as fm_random
from .._base import GradientTransformation, Scalar, chain, check_state, identity, number
from .._moments import trace
from .._more_transforms import per_example_global_norm_clip
from .._transforms import scale_by_learning_rate
from ._common import device_of


class DifferentiallyPrivateAggregateState(NamedTuple):
    """The state of :func:`differentially_private_aggregate`."""

    rng_key: torch.Tensor
    """the key the next step's noise is drawn from (an ``fm.key``)"""


def _key(where: str, key: Any, seed: int | None) -> torch.Tensor:
    if seed is not None:
        warnings.warn(f'{where}: "seed" is deprecated, use "key"', DeprecationWarning, 3)
        if key is not None:
            raise ValueError(f"{where}: only one of seed or key can be specified")
        key = seed
    if key is None:
        warnings.warn(f"{where}: pass a key (seed 0 is used)", stacklevel=3)
        key = 0
    if isinstance(key, int) and not isinstance(key, bool):
        key = fm_random.key(key)
    return fm_random.check_key(key, where)


def differentially_private_aggregate(
    l2_norm_clip: Scalar,
    noise_multiplier: Scalar,
    key: torch.Tensor | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """The private mean of per-example gradients (optax.contrib's): each example's
    gradient clipped to a global norm of ``l2_norm_clip``, summed, Gaussian noise of
    standard deviation ``l2_norm_clip * noise_multiplier`` added to each leaf, and the
    sum divided by the batch size (dim 0 of the first leaf).

    Arguments:
        l2_norm_clip: the largest norm of one example's gradient.
        noise_multiplier: the noise's standard deviation over ``l2_norm_clip``.
        key: an ``fm.key`` or an int seed (``None``: seed 0 with a warning, as optax).
        seed: optax's deprecated int seed.

    Returns:
        A GradientTransformation taking per-example gradients (leaves ``(batch,
            *shape)``) and giving updates like one example's; its state is a
            :class:`DifferentiallyPrivateAggregateState`.

    Raises:
        ValueError: both ``key`` and ``seed``, a hyperparameter out of range.
        TypeError: a key that is not an ``fm.key``.
    """
    where = "fm.optim.contrib.differentially_private_aggregate"
    clip = number(where, "l2_norm_clip", l2_norm_clip)
    std = clip * number(where, "noise_multiplier", noise_multiplier)
    key = _key(where, key, seed)

    def init(params):
        return DifferentiallyPrivateAggregateState(key.to(device_of(params) or key.device))

    def update(updates, state, params=None):
        check_state(state, DifferentiallyPrivateAggregateState, where)
        leaves, spec = pytree.tree_flatten(updates)
        bsize = leaves[0].shape[0]
        clipped, _ = per_example_global_norm_clip(leaves, clip)
        new_key, *keys = fm_random.split(state.rng_key, len(leaves) + 1)
        noised = [
            (g + std * fm_random.normal(k, tuple(g.shape), g.dtype, g.device)) / bsize
            for g, k in zip(clipped, keys, strict=True)
        ]
        return pytree.tree_unflatten(noised, spec), DifferentiallyPrivateAggregateState(new_key)

    return GradientTransformation(init, update)


def dpsgd(
    learning_rate: Scalar,
    l2_norm_clip: Scalar,
    noise_multiplier: Scalar,
    seed: int,
    momentum: Scalar | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    """DP-SGD (optax.contrib's ``dpsgd``): ``chain(differentially_private_aggregate(
    l2_norm_clip, noise_multiplier, seed=seed), trace(momentum, nesterov) or identity(),
    scale_by_learning_rate(learning_rate))``, fed per-example gradients.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        l2_norm_clip: the largest norm of one example's gradient.
        noise_multiplier: the noise's standard deviation over ``l2_norm_clip``.
        seed: the noise's int seed (an ``fm.key`` is accepted too).
        momentum: the momentum (none when ``None``).
        nesterov: Nesterov momentum.

    Returns:
        The chained GradientTransformation.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate),
    )
