"""Euclidean projections onto convex sets, over pytrees, as ``optax.projections``.

Each function maps a pytree of tensors to its nearest point of the set (the tree's leaves
seen as one vector), with optax's argument names and arithmetic. They contain no
data-dependent Python branching, so they work under ``vmap`` and ``grad``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]


def _leaves(tree: Any) -> list[torch.Tensor]:
    return pytree.tree_leaves(tree)


def _vdot(a: Any, b: Any) -> torch.Tensor:
    pairs = zip(_leaves(a), _leaves(b), strict=True)
    return sum((x * y).sum() for x, y in pairs)


def _scale(s: Any, tree: Any) -> Any:
    return pytree.tree_map(lambda t: s * t, tree)


def _is_tree_like(value: Any, tree: Any) -> bool:
    return pytree.tree_structure(value) == pytree.tree_structure(tree)


def projection_non_negative(tree: Any) -> Any:
    """Project onto the non-negative orthant: ``relu`` of every leaf.

    Arguments:
        tree: a pytree of tensors.

    Returns:
        A pytree of the same structure.
    """
    return pytree.tree_map(torch.relu, tree)


def projection_box(tree: Any, lower: Any, upper: Any) -> Any:
    """Project onto the box ``lower <= x <= upper``: clip every leaf.

    Arguments:
        tree: a pytree of tensors.
        lower: a pytree like ``tree``, or a number or tensor for every leaf.
        upper: a pytree like ``tree``, or a number or tensor for every leaf.

    Returns:
        A pytree of the same structure.
    """
    leaves, spec = pytree.tree_flatten(tree)
    lo = _leaves(lower) if _is_tree_like(lower, tree) and leaves else [lower] * len(leaves)
    hi = _leaves(upper) if _is_tree_like(upper, tree) and leaves else [upper] * len(leaves)
    out = [_clip(x, a, b) for x, a, b in zip(leaves, lo, hi, strict=True)]
    return pytree.tree_unflatten(out, spec)


def _clip(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    """``jnp.clip``: ``min(max(x, lo), hi)``, bounds as numbers or tensors."""
    lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    return torch.minimum(torch.maximum(x, lo), hi)


def projection_hypercube(tree: Any, scale: Any = 1) -> Any:
    """Project onto the hypercube ``0 <= x <= scale``.

    Arguments:
        tree: a pytree of tensors.
        scale: the side, a number, tensor or pytree like ``tree``.

    Returns:
        A pytree of the same structure.
    """
    return projection_box(tree, lower=0, upper=scale)


def unit_simplex(values: torch.Tensor) -> torch.Tensor:
    """The projection onto the unit simplex along the last axis (the sort-based
    algorithm of Held et al., as optax's). Autograd's derivative through the sort equals
    optax's custom JVP (the support's centring) wherever the support is unique."""
    n = values.shape[-1]
    u = torch.sort(values, dim=-1, descending=True).values
    cumsum_u = torch.cumsum(u, -1)
    ind = torch.arange(1, n + 1, dtype=values.dtype, device=values.device)
    cond = 1 / ind + (u - cumsum_u / ind) > 0
    idx = cond.sum(-1, keepdim=True)
    count = idx.to(values.dtype)  # 1 / an int64 tensor would be float32
    tau = cumsum_u.gather(-1, idx - 1) / count
    return torch.relu(1 / count + (values - tau))


def projection_simplex(tree: Any, scale: Any = 1) -> Any:
    """Project onto the simplex ``{x >= 0, sum(x) = scale}`` (all leaves as one vector).

    Arguments:
        tree: a pytree of tensors.
        scale: the simplex's sum, a positive number or 0-dim tensor.

    Returns:
        A pytree of the same structure.
    """
    leaves, spec = pytree.tree_flatten(tree)
    values = torch.cat([leaf.reshape(-1) for leaf in leaves])
    new = scale * unit_simplex(values / scale)
    out, start = [], 0
    for leaf in leaves:
        out.append(new[start : start + leaf.numel()].reshape(leaf.shape))
        start += leaf.numel()
    return pytree.tree_unflatten(out, spec)


def projection_l1_sphere(tree: Any, scale: Any = 1) -> Any:
    """Project onto the l1 sphere ``{sum(|x|) = scale}``.

    Arguments:
        tree: a pytree of tensors.
        scale: the radius.

    Returns:
        A pytree of the same structure.
    """
    projected = projection_simplex(pytree.tree_map(torch.abs, tree), scale)
    return pytree.tree_map(lambda x, p: torch.sign(x) * p, tree, projected)


def projection_l1_ball(tree: Any, scale: Any = 1) -> Any:
    """Project onto the l1 ball ``{sum(|x|) <= scale}``.

    Arguments:
        tree: a pytree of tensors.
        scale: the radius.

    Returns:
        A pytree of the same structure.
    """
    l1_norm = sum(leaf.abs().sum() for leaf in _leaves(tree))
    inside = l1_norm <= scale
    sphere = projection_l1_sphere(tree, scale)
    return pytree.tree_map(lambda x, s: torch.where(inside, x, s), tree, sphere)


def projection_l2_sphere(tree: Any, scale: Any = 1) -> Any:
    """Project onto the l2 sphere ``{|x| = scale}``.

    Arguments:
        tree: a pytree of tensors.
        scale: the radius.

    Returns:
        A pytree of the same structure.
    """
    return _scale(scale / torch.sqrt(_vdot(tree, tree)), tree)


def projection_l2_ball(tree: Any, scale: Any = 1) -> Any:
    """Project onto the l2 ball ``{|x| <= scale}``.

    Arguments:
        tree: a pytree of tensors.
        scale: the radius.

    Returns:
        A pytree of the same structure.
    """
    squared_norm = _vdot(tree, tree)
    scale_t = torch.as_tensor(scale, dtype=squared_norm.dtype, device=squared_norm.device)
    return _scale(scale / torch.sqrt(torch.maximum(squared_norm, scale_t**2)), tree)


def projection_linf_ball(tree: Any, scale: Any = 1) -> Any:
    """Project onto the l-infinity ball ``{max|x| <= scale}``.

    Arguments:
        tree: a pytree of tensors.
        scale: the radius.

    Returns:
        A pytree of the same structure.
    """
    return projection_box(tree, lower=-scale, upper=scale)


def projection_vector(x: Any, a: Any) -> Any:
    """Project onto the line spanned by ``a``: ``(<x, a> / <a, a>) a``.

    Arguments:
        x: a pytree of tensors.
        a: a pytree like ``x``.

    Returns:
        A pytree like ``a``.
    """
    return _scale(_vdot(x, a) / _vdot(a, a), a)


def projection_hyperplane(x: Any, a: Any, b: Any) -> Any:
    """Project onto the hyperplane ``{<a, y> = b}``.

    Arguments:
        x: a pytree of tensors.
        a: the normal, a pytree like ``x``.
        b: the offset, a number or 0-dim tensor.

    Returns:
        A pytree like ``x``.
    """
    scalar = (b - _vdot(x, a)) / _vdot(a, a)
    return pytree.tree_map(lambda u, v: u + scalar * v, x, a)


def projection_halfspace(x: Any, a: Any, b: Any) -> Any:
    """Project onto the half-space ``{<a, y> <= b}``.

    Arguments:
        x: a pytree of tensors.
        a: the normal, a pytree like ``x``.
        b: the offset, a number or 0-dim tensor.

    Returns:
        A pytree like ``x``.
    """
    scalar = torch.clamp((b - _vdot(x, a)) / _vdot(a, a), max=0)
    return pytree.tree_map(lambda u, v: u + scalar * v, x, a)
