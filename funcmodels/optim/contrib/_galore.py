"""GaLore (Zhao et al., 2024): the base optimiser runs on gradients projected onto a
low-rank subspace of each matrix, the projector refreshed from the gradient's SVD every
``update_proj_gap`` steps, as optax.contrib's ``galore`` and ``scale_by_galore``.

As optax's, the SVD runs in float32 whatever the gradient's dtype, and its result is cast
back to the leaf's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._adam import scale_by_adam
from .._base import GradientTransformation, Scalar, chain, check_state
from .._ops import eager
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import safe_int32_increment


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the rows (reduction) and the columns (output) of the
    matrix GaLore projects (optax.contrib's ``GaLoreDimensionNumbers``); every axis must
    be in one of them."""

    reduction_axis: Sequence[int] | int = 0
    """the input axis or axes"""
    output_axis: Sequence[int] | int = 1
    """the output axis or axes"""


class GaLoreState(NamedTuple):
    """The state of :func:`scale_by_galore`."""

    count: torch.Tensor
    """the step count (0-dim int32)"""
    base_optimizer_state: Any
    """the base optimiser's state, over the low-rank gradients (full ones where a leaf is
    not projected)"""
    projector: Any
    """each leaf's projector, ``(m, r)`` or ``(n, r)`` (``(0, 0)``: not projected)"""


_WHERE = "fm.optim.contrib.scale_by_galore"


def _is_dims(x: Any) -> bool:
    return x is None or isinstance(x, GaLoreDimensionNumbers)


def _reshapes(x: torch.Tensor, dims: GaLoreDimensionNumbers) -> tuple[Callable, Callable]:
    """``(to_matrix, from_matrix)``: the leaf as its ``(reduction, output)`` matrix and
    back."""
    if x.dim() < 2:
        raise ValueError(f"{_WHERE}: GaLore needs leaves of rank >= 2, got shape {tuple(x.shape)}")

    def norm(a):
        return tuple(i % x.dim() for i in ((a,) if isinstance(a, int) else a))

    red, out = norm(dims.reduction_axis), norm(dims.output_axis)
    if set(red) & set(out):
        raise ValueError(
            f"{_WHERE}: reduction axes {red} and output axes {out} must be disjoint "
            f"(shape {tuple(x.shape)})"
        )
    if len(set(red) | set(out)) != x.dim():
        raise ValueError(
            f"{_WHERE}: every axis must be a reduction or output axis, got reduction={red}, "
            f"output={out} for shape {tuple(x.shape)}"
        )
    perm = red + out
    inverse = tuple(sorted(range(x.dim()), key=lambda i: perm[i]))
    rows, cols = math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out)
    permuted = tuple(x.shape[a] for a in perm)
    return (
        lambda y: y.permute(perm).reshape(rows, cols),
        lambda y: y.reshape(permuted).permute(inverse),
    )


def _svd_projector(g2: torch.Tensor, r: int, left: bool) -> torch.Tensor:
    """optax's projector: the top ``r`` left (or right) singular vectors, from a float32
    SVD, in the gradient's dtype."""
    u, _, vh = torch.linalg.svd(g2.to(torch.float32), full_matrices=False)
    return (u[:, :r] if left else vh[:r, :].T).to(g2.dtype)


def _dims_of(spec: Any, leaves: list[torch.Tensor], tree: Any) -> list[Any]:
    """Each leaf's :class:`GaLoreDimensionNumbers`, or ``None`` where it is not projected
    (optax's reading of ``weight_dimension_numbers``)."""
    if spec is None:
        return [GaLoreDimensionNumbers() if p.dim() == 2 else None for p in leaves]
    if isinstance(spec, GaLoreDimensionNumbers):
        return [spec if p.dim() >= 2 else None for p in leaves]
    found = pytree.tree_leaves(spec(tree) if callable(spec) else spec, is_leaf=_is_dims)
    if len(found) != len(leaves) or not all(_is_dims(d) for d in found):
        raise ValueError(
            f"{_WHERE}: weight_dimension_numbers must give one GaLoreDimensionNumbers or "
            f"None per leaf ({len(leaves)} leaves), got {len(found)} entries"
        )
    return found


def _shapes(p: torch.Tensor, d: Any, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(projector, proxy)`` zeros: the projector's shape and the low-rank gradient's."""
    if d is None:
        return p.new_zeros((0, 0)), torch.zeros_like(p)
    m, n = _reshapes(p, d)[0](p).shape
    r = min(rank, m, n)
    if m >= n:
        return p.new_zeros((m, r)), p.new_zeros((r, n))
    return p.new_zeros((n, r)), p.new_zeros((m, r))


def _project(g: torch.Tensor, old: torch.Tensor, d: Any, refresh: torch.Tensor, rank: int):
    """``(low-rank gradient, projector)``, the projector refreshed where ``refresh``."""
    if d is None:
        return g, old
    g2 = _reshapes(g, d)[0](g)
    m, n = g2.shape
    left = m >= n
    if eager():  # optax's lax.cond: the SVD only on refresh steps
        new = _svd_projector(g2, min(rank, m, n), left) if bool(refresh) else old
    else:
        new = torch.where(refresh, _svd_projector(g2, min(rank, m, n), left), old)
    return (new.T @ g2 if left else g2 @ new), new


def _back(u: torch.Tensor, p: torch.Tensor, g: torch.Tensor, d: Any, scale: float):
    """The low-rank update ``u`` mapped back to the leaf's shape and scaled."""
    if d is None:
        return u
    to_matrix, from_matrix = _reshapes(g, d)
    m, n = to_matrix(g).shape
    full = p @ u if m >= n else u @ p.T
    return (scale * from_matrix(full)).to(g.dtype)


def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: Any = None,
) -> GradientTransformation:
    """GaLore's scaling (optax's): each projected leaf's gradient ``G`` (an ``m x n``
    matrix) becomes ``P^T G`` (``m >= n``) or ``G P``, the base optimiser runs on it, and
    its update is mapped back by ``P`` and multiplied by ``scale``. ``P`` holds the top
    ``min(rank, m, n)`` singular vectors of the gradient at steps ``0, gap, 2 gap, ...``.

    Arguments:
        rank: the projection's rank.
        update_proj_gap: steps between projector refreshes.
        scale: the factor on the updates of projected leaves.
        base_optimizer: a transformation that needs no params (``scale_by_adam()`` when
            ``None``).
        weight_dimension_numbers: ``None`` (project the 2-d leaves), one
            :class:`GaLoreDimensionNumbers` (every leaf of rank >= 2), a tree of them
            (``None`` leaves not projected), or a function of the params giving that tree.

    Returns:
        A :class:`GradientTransformation` whose state is a :class:`GaLoreState`.

    Raises:
        TypeError: a rank that is not an int; (update) a state not made by this init.
        ValueError: a rank below 1, dimension numbers that do not fit a leaf (overlapping
            or missing axes, rank below 2) or a tree of them unlike the params.
    """
    base = scale_by_adam() if base_optimizer is None else base_optimizer
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError(f"{_WHERE}: rank must be an int, got {type(rank).__name__}")
    if rank <= 0:
        raise ValueError(f"{_WHERE}: rank must be positive, got {rank}")

    def init(params: Any) -> GaLoreState:
        leaves, spec = pytree.tree_flatten(params)
        count = torch.zeros((), dtype=torch.int32, device=leaves[0].device if leaves else None)
        if not leaves:
            return GaLoreState(count, base.init(params), params)
        dims = _dims_of(weight_dimension_numbers, leaves, params)
        pairs = [_shapes(p, d, rank) for p, d in zip(leaves, dims, strict=True)]
        proxies = pytree.tree_unflatten([b for _, b in pairs], spec)
        projectors = pytree.tree_unflatten([a for a, _ in pairs], spec)
        return GaLoreState(count, base.init(proxies), projectors)

    def update(updates: Any, state: GaLoreState, params: Any = None):
        del params
        check_state(state, GaLoreState, _WHERE)
        leaves, spec = pytree.tree_flatten(updates)
        if not leaves:
            new, base_state = base.update(updates, state.base_optimizer_state, None)
            return new, GaLoreState(safe_int32_increment(state.count), base_state, updates)
        dims = _dims_of(weight_dimension_numbers, leaves, updates)
        refresh = (state.count % update_proj_gap) == 0
        olds = pytree.tree_leaves(state.projector)
        pairs = [_project(*a, refresh, rank) for a in zip(leaves, olds, dims, strict=True)]
        low, projectors = [a for a, _ in pairs], [b for _, b in pairs]
        low_updates, base_state = base.update(
            pytree.tree_unflatten(low, spec), state.base_optimizer_state, None
        )
        full = [
            _back(*a, scale)
            for a in zip(pytree.tree_leaves(low_updates), projectors, leaves, dims, strict=True)
        ]
        new_state = GaLoreState(
            safe_int32_increment(state.count), base_state, pytree.tree_unflatten(projectors, spec)
        )
        return pytree.tree_unflatten(full, spec), new_state

    return GradientTransformation(init, update)


def galore(
    learning_rate: Scalar | Callable[[torch.Tensor], Any],
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
    weight_dimension_numbers: Any = None,
) -> GradientTransformation:
    """GaLore (optax's): :func:`scale_by_galore`, then decoupled weight decay in the full
    parameter space, then the learning rate.

    Arguments:
        learning_rate: a float, a tensor, or a schedule of the step count.
        rank: the projection's rank.
        update_proj_gap: steps between projector refreshes.
        scale: the factor on the updates of projected leaves.
        base_optimizer: a transformation that needs no params (``scale_by_adam()`` when
            ``None``); with a learning rate of its own, pass ``learning_rate=1.0``.
        weight_decay: the decoupled weight decay (as AdamW's).
        mask: a tree of bools (or a function of the params giving it): where to decay.
        weight_dimension_numbers: as :func:`scale_by_galore`'s.

    Returns:
        A :class:`GradientTransformation` (a :func:`chain`).
    """
    return chain(
        scale_by_galore(
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            base_optimizer=base_optimizer,
            weight_dimension_numbers=weight_dimension_numbers,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
