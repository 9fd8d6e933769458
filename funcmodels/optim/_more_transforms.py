"""More of optax's stateless and small transforms: gradient noise, NaN zeroing, projections,
centralisation, clipping by block RMS and adaptively, update normalisation.

Each takes optax's arguments and defaults and computes optax's arithmetic leaf by leaf;
hyperparameters held as tensors are cast to each leaf's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .. import random as fm_random
from ._base import (
    GradientTransformation,
    Scalar,
    check_state,
    count_like,
    init_empty_state,
    number,
)
from ._more_common import hyper, leafwise, work_dtype
from ._unitwise import unit_norms


class AddNoiseState(NamedTuple):
    """The state of :func:`add_noise` (and so of :func:`noisy_sgd`)."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    rng_key: torch.Tensor
    """the key the next step's noise is drawn from (an ``fm.key``)"""


class ZeroNansState(NamedTuple):
    """The state of :func:`zero_nans`."""

    found_nan: Any
    """per leaf, a 0-dim bool tensor: whether that leaf's last updates held a NaN"""


def add_noise(
    eta: Scalar, gamma: Scalar, key: torch.Tensor | int | None = None, *, seed: int | None = None
) -> GradientTransformation:
    """Add Gaussian noise of variance ``eta / t**gamma`` at step ``t`` (Neelakantan et al.,
    2015).

    The noise comes from fm's keys (``fm.random.normal``, one key per leaf split from the
    state's key), so its values differ from optax's JAX random bits; its distribution and
    the deterministic part are optax's.

    Arguments:
        eta: the variance at the first step, ``>= 0``.
        gamma: the decay exponent of the variance.
        key: an ``fm.key`` or an int seed (``None``: seed 0, as optax).
        seed: optax's older name for an int ``key``.

    Returns:
        A GradientTransformation; its state is an :class:`AddNoiseState`.

    Raises:
        ValueError: both ``key`` and ``seed``; a hyperparameter out of range.
    """
    where = "fm.optim.add_noise"
    eta = number(where, "eta", eta)
    gamma = number(where, "gamma", gamma, lo=-float("inf"))
    if seed is not None:
        if key is not None:
            raise ValueError(f"{where}: pass key or seed, not both")
        key = seed
    if key is None:
        key = 0
    if isinstance(key, int) and not isinstance(key, bool):
        key = fm_random.key(key)
    key = fm_random.check_key(key, where)

    def init(params):
        return AddNoiseState(count_like(params), key.to(count_like(params).device))

    def step(us, state, ps, spec):
        check_state(state, AddNoiseState, where)
        count = state.count + 1
        t = count.to(torch.float64)
        std = torch.sqrt(torch.as_tensor(eta, dtype=torch.float64) / t ** hyper(gamma, t))
        next_key, sample = fm_random.split(state.rng_key)
        keys = fm_random.split(sample, max(len(us), 1))
        out = [
            u + std.to(u.dtype) * fm_random.normal(k, tuple(u.shape), u.dtype, u.device)
            for u, k in zip(us, keys, strict=False)
        ]
        return out, AddNoiseState(count, next_key)

    return leafwise(where, init, step)


def zero_nans() -> GradientTransformation:
    """Replace NaNs in the updates by 0; the state records, per leaf, whether there was one.

    Returns:
        A GradientTransformation; its state is a :class:`ZeroNansState`.
    """
    where = "fm.optim.zero_nans"

    def init(params):
        device = count_like(params).device
        return ZeroNansState(
            pytree.tree_map(lambda p: torch.zeros((), dtype=torch.bool, device=device), params)
        )

    def step(us, state, ps, spec):
        check_state(state, ZeroNansState, where)
        found = [torch.isnan(u).any() for u in us]
        out = [torch.where(torch.isnan(u), torch.zeros_like(u), u) for u in us]
        return out, ZeroNansState(pytree.tree_unflatten(found, spec))

    return leafwise(where, init, step)


def keep_params_nonnegative() -> GradientTransformation:
    """Change the updates so that ``params + updates >= 0``: where that sum would be
    negative the update becomes ``-param`` (the params should start nonnegative).

    Returns:
        A GradientTransformation needing the params, keeping no state.

    Raises:
        ValueError: from ``update`` without the params.
    """

    def step(us, state, ps, spec):
        out = [
            torch.where((p + u) < 0.0, -p.to(work_dtype(u, p)), u.to(work_dtype(u, p)))
            for u, p in zip(us, ps, strict=True)
        ]
        return out, state

    return leafwise("fm.optim.keep_params_nonnegative", init_empty_state, step, needs_params=True)


def centralize() -> GradientTransformation:
    """Gradient centralisation (Yong et al., 2020): subtract from each leaf of at least two
    dimensions its mean over every dimension but the first.

    Returns:
        A GradientTransformation keeping no state.
    """

    def step(us, state, ps, spec):
        out = [
            u - u.mean(dim=tuple(range(1, u.dim())), keepdim=True) if u.dim() > 1 else u.clone()
            for u in us
        ]
        return out, state

    return leafwise("fm.optim.centralize", init_empty_state, step)


def clip_by_block_rms(threshold: Scalar) -> GradientTransformation:
    """Clip each leaf's update to a root mean square of at most ``threshold``:
    ``u / max(1, rms(u) / threshold)``.

    Arguments:
        threshold: the largest RMS, ``> 0``.

    Returns:
        A GradientTransformation keeping no state.

    Raises:
        ValueError, TypeError: ``threshold`` out of range or of the wrong type.
    """
    where = "fm.optim.clip_by_block_rms"
    threshold = number(where, "threshold", threshold)

    def step(us, state, ps, spec):
        out = []
        for u in us:
            rms = torch.sqrt(torch.mean(u * u))
            out.append(u / torch.clamp(rms / hyper(threshold, rms), min=1.0))
        return out, state

    return leafwise(where, init_empty_state, step)


def adaptive_grad_clip(
    clipping: Scalar, eps: Scalar = 1e-3, axis: Any = None
) -> GradientTransformation:
    """Adaptive gradient clipping (Brock et al., 2021): unit-wise, each update scaled down
    to a norm of at most ``clipping * max(|param|, eps)`` (optax's ``unitwise_norm``: whole
    vectors, columns of matrices, output units of 4-d and 5-d kernels, or the axes
    ``axis`` names).

    Arguments:
        clipping: the largest ratio of update norm to param norm.
        eps: the floor of the params' norms.
        axis: the reduced axes (an int or a tuple), or ``None`` for the rank's default.

    Returns:
        A GradientTransformation needing the params, keeping no state.

    Raises:
        ValueError: from ``update``: no params, or a leaf of more than 5 dimensions with
            ``axis=None``; a hyperparameter out of range.
    """
    where = "fm.optim.adaptive_grad_clip"
    clipping = number(where, "clipping", clipping)
    eps = number(where, "eps", eps)

    def step(us, state, ps, spec):
        out = []
        for u, p in zip(us, ps, strict=True):
            g_norm, p_norm = unit_norms(u, axis, where), unit_norms(p, axis, where)
            max_norm = hyper(clipping, p_norm) * torch.clamp(p_norm, min=hyper(eps, p_norm))
            max_norm = max_norm.to(work_dtype(u, p))
            clipped = u * (max_norm / torch.clamp(g_norm, min=1e-6))
            out.append(torch.where(g_norm < max_norm, u.to(clipped.dtype), clipped))
        return out, state

    return leafwise(where, init_empty_state, step, needs_params=True)


def normalize_by_update_norm(
    scale_factor: Scalar = 1.0, eps: Scalar = 1e-6
) -> GradientTransformation:
    """Divide the updates by ``(|u| + eps) / scale_factor``, ``|u|`` their global norm.

    Arguments:
        scale_factor: the norm of the result (up to ``eps``).
        eps: added to the norm.

    Returns:
        A GradientTransformation keeping no state.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.normalize_by_update_norm"
    scale_factor = number(where, "scale_factor", scale_factor, lo=-float("inf"))
    eps = number(where, "eps", eps)

    def step(us, state, ps, spec):
        if not us:
            return [], state
        dtype = work_dtype(*us)
        sq = sum(torch.linalg.vector_norm(u).to(dtype) ** 2 for u in us)
        norm = (torch.sqrt(sq) + hyper(eps, sq)) / hyper(scale_factor, sq)
        return [u / norm.to(u.dtype) for u in us], state

    return leafwise(where, init_empty_state, step)


def scale_gradient(inputs: Any, scale: float) -> Any:
    """``inputs`` unchanged in the forward pass, their gradients multiplied by ``scale`` in
    the backward pass (``scale=0``: detached), leaf by leaf.

    Arguments:
        inputs: a tensor or a pytree of tensors.
        scale: the factor on the gradients, a number.

    Returns:
        A pytree like ``inputs`` (``inputs`` itself when ``scale`` is 1).
    """
    if scale == 1.0:
        return inputs
    if scale == 0.0:
        return pytree.tree_map(torch.Tensor.detach, inputs)
    # x - x.detach() is exactly 0 forward, and carries the gradient
    return pytree.tree_map(lambda x: x.detach() + scale * (x - x.detach()), inputs)


def _batch_leaves(where: str, grads: Any) -> tuple[list[torch.Tensor], Any]:
    leaves, spec = pytree.tree_flatten(grads)
    sizes = {x.shape[0] if x.dim() else None for x in leaves}
    if not leaves or None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{where}: expects per-example gradients, every leaf with the same batch size in "
            f"dimension 0; got shapes {[tuple(x.shape) for x in leaves]}"
        )
    return leaves, spec


def per_example_global_norm_clip(grads: Any, l2_norm_clip: Scalar) -> tuple[Any, torch.Tensor]:
    """Clip each example's gradient to a global norm of at most ``l2_norm_clip`` and sum
    over the examples (DP-SGD's clipped sum).

    Arguments:
        grads: per-example gradients, every leaf of shape ``(batch, *param_shape)``.
        l2_norm_clip: the largest norm of one example's gradient.

    Returns:
        ``(clipped sum, a tree like one example's gradients; the number of examples
            clipped, a 0-dim int64 tensor)``.

    Raises:
        ValueError: leaves without a common batch dimension.
    """
    leaves, spec = _batch_leaves("fm.optim.per_example_global_norm_clip", grads)
    sq = [torch.sum((g * g).reshape(g.shape[0], -1), dim=1) for g in leaves]
    norms = torch.sqrt(sum(s.to(sq[0].dtype) for s in sq))
    multipliers = torch.nan_to_num(torch.clamp(hyper(l2_norm_clip, norms) / norms, max=1.0), 1.0)
    clipped = [torch.tensordot(multipliers.to(g.dtype), g, dims=1) for g in leaves]
    return pytree.tree_unflatten(clipped, spec), (multipliers < 1.0).sum()


def per_example_layer_norm_clip(
    grads: Any, global_l2_norm_clip: Scalar, uniform: bool = True
) -> tuple[Any, Any]:
    """Clip each example's gradient leaf by leaf and sum over the examples: each leaf to
    ``global_l2_norm_clip / sqrt(number of leaves)`` (``uniform``) or to
    ``global_l2_norm_clip * sqrt(leaf size / total size)``.

    Arguments:
        grads: per-example gradients, every leaf of shape ``(batch, *param_shape)``.
        global_l2_norm_clip: the norm the per-leaf bounds add up to (in squares).
        uniform: the same bound for every leaf.

    Returns:
        ``(clipped sums, numbers clipped)``, two trees like one example's gradients.

    Raises:
        ValueError: leaves without a common batch dimension.
    """
    leaves, spec = _batch_leaves("fm.optim.per_example_layer_norm_clip", grads)
    total = sum(g[0].numel() for g in leaves)
    sums, counts = [], []
    for g in leaves:
        share = 1.0 / len(leaves) if uniform else g[0].numel() / total
        s, n = per_example_global_norm_clip(g, global_l2_norm_clip * share**0.5)
        sums.append(s)
        counts.append(n)
    return pytree.tree_unflatten(sums, spec), pytree.tree_unflatten(counts, spec)
