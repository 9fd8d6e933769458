"""Distance over gradients: DoG (Ivgi et al., 2023) and DoWG (Khaled et al., 2023),
learning-rate-free step sizes from the distance travelled, as optax.contrib's ``dog`` and
``dowg``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    identity,
    number,
)
from .._more_common import leafwise, state_leaves
from .._transforms import add_decayed_weights, scale_by_learning_rate
from ._common import device_of, lowest_dtype, scalar, tree_sum


class DoGState(NamedTuple):
    """The state of :func:`dog`'s scaling."""

    is_init_step: torch.Tensor
    """a 0-dim bool tensor, true before the first update"""
    init_params: Any
    """the params at the first step"""
    max_dist: torch.Tensor
    """the largest distance from the first params so far (0-dim)"""
    sum_sq_norm_grads: torch.Tensor
    """the sum of the updates' squared global norms (0-dim)"""


class DoWGState(NamedTuple):
    """The state of :func:`dowg`'s scaling."""

    init_params: Any
    """the params at the first step"""
    weighted_sq_norm_grads: torch.Tensor
    """the sum of the updates' squared norms weighted by the squared distance (0-dim)"""
    estim_sq_dist: torch.Tensor
    """the largest squared distance from the first params so far (0-dim)"""


def _sq_norm(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return tree_sum([x.square() for x in xs], dtype)


def _sq_dist(ps: list[torch.Tensor], p0s: Any, spec: Any, dtype: torch.dtype) -> torch.Tensor:
    p0s = state_leaves(p0s, spec, "init_params")
    return _sq_norm([a - b for a, b in zip(p0s, ps, strict=True)], dtype)


def _scale_by_dog(init_step: tuple[str, Any], eps: Scalar) -> GradientTransformation:
    where = "fm.optim.contrib.dog"
    kind, value = init_step
    if kind not in ("distance", "learning_rate", "heuristic"):
        raise ValueError(f"{where}: invalid init_step specification {kind!r}")

    def init(params):
        dtype, device = lowest_dtype(params), device_of(params)
        r = {"distance": value, "learning_rate": 0.0}.get(kind)
        if r is None:  # heuristic
            norm = _sq_norm(pytree.tree_leaves(params), torch.float64).sqrt()
            r = value * (1 + norm)
        return DoGState(
            torch.tensor(True, device=device),
            pytree.tree_map(torch.clone, params),
            scalar(r, dtype, device),
            torch.zeros((), dtype=dtype, device=device),
        )

    def step(us, state, ps, spec):
        check_state(state, DoGState, where)
        dtype = state.max_dist.dtype
        wide = torch.promote_types(dtype, us[0].dtype) if us else dtype
        max_dist = torch.maximum(state.max_dist, _sq_dist(ps, state.init_params, spec, wide).sqrt())
        total = state.sum_sq_norm_grads + _sq_norm(us, wide)
        lr = max_dist / (total + eps).sqrt()
        if kind == "learning_rate":
            lr = torch.where(state.is_init_step, scalar(value, lr.dtype, lr.device), lr)
        new = DoGState(
            torch.zeros_like(state.is_init_step),
            state.init_params,
            max_dist.to(dtype),
            total.to(dtype),
        )
        return [lr.to(u.dtype) * u for u in us], new

    return leafwise(where, init, step, needs_params=True)


def _scale_by_dowg(init_estim_sq_dist: Scalar | None, eps: Scalar) -> GradientTransformation:
    where = "fm.optim.contrib.dowg"

    def init(params):
        dtype, device = lowest_dtype(params), device_of(params)
        first = eps if init_estim_sq_dist is None else init_estim_sq_dist
        return DoWGState(
            pytree.tree_map(torch.clone, params),
            torch.zeros((), dtype=dtype, device=device),
            scalar(first, dtype, device),
        )

    def step(us, state, ps, spec):
        check_state(state, DoWGState, where)
        dtype = state.estim_sq_dist.dtype
        wide = torch.promote_types(dtype, us[0].dtype) if us else dtype
        sq_dist = torch.maximum(state.estim_sq_dist, _sq_dist(ps, state.init_params, spec, wide))
        weighted = sq_dist * _sq_norm(us, wide) + state.weighted_sq_norm_grads
        lr = sq_dist / (weighted.sqrt() + eps)
        new = state._replace(
            estim_sq_dist=sq_dist.to(dtype), weighted_sq_norm_grads=weighted.to(dtype)
        )
        return [lr.to(u.dtype) * u for u in us], new

    return leafwise(where, init, step, needs_params=True)


def dog(
    learning_rate: Scalar = 1.0,
    init_step: tuple[str, Scalar] = ("heuristic", 1e-6),
    eps: Scalar = 1e-8,
    weight_decay: Scalar | None = None,
    mask: Any = None,
) -> GradientTransformation:
    """DoG (optax.contrib's ``dog``): the updates times ``max_dist / sqrt(sum of squared
    norms + eps)``, ``max_dist`` the largest distance from the first params (at least the
    initial one ``init_step`` sets), then the learning rate.

    Arguments:
        learning_rate: a factor on the step (a number, 0-dim tensor or schedule).
        init_step: ``('distance', r)`` (the initial distance ``r``), ``('heuristic', c)``
            (``c (1 + |params|)``) or ``('learning_rate', lr)`` (``lr`` at the first step).
        eps: added under the square root.
        weight_decay: an L2 term added to the gradients first (none when ``None``).
        mask: which params decay.

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state holds a
            :class:`DoGState`.

    Raises:
        ValueError: an unknown ``init_step`` kind.
    """
    return chain(
        add_decayed_weights(weight_decay, mask) if weight_decay is not None else identity(),
        _scale_by_dog(init_step, number("fm.optim.contrib.dog", "eps", eps)),
        scale_by_learning_rate(learning_rate),
    )


def dowg(
    learning_rate: Scalar = 1.0,
    init_estim_sq_dist: Scalar | None = None,
    eps: Scalar = 1e-4,
    weight_decay: Scalar | None = None,
    mask: Any = None,
) -> GradientTransformation:
    """DoWG (optax.contrib's ``dowg``): the updates times ``d2 / (sqrt(sum of d2 times the
    squared norms) + eps)``, ``d2`` the largest squared distance from the first params,
    then the learning rate.

    Arguments:
        learning_rate: a factor on the step (a number, 0-dim tensor or schedule).
        init_estim_sq_dist: the first squared distance (``eps`` when ``None``).
        eps: added to the denominator.
        weight_decay: an L2 term added to the gradients first (none when ``None``).
        mask: which params decay.

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state holds a
            :class:`DoWGState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    return chain(
        add_decayed_weights(weight_decay, mask) if weight_decay is not None else identity(),
        _scale_by_dowg(init_estim_sq_dist, number("fm.optim.contrib.dowg", "eps", eps)),
        scale_by_learning_rate(learning_rate),
    )
