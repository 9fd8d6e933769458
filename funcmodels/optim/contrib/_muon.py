"""Muon (Jordan et al., 2024): momentum orthogonalised by Newton-Schulz iterations for the
matrices, AdamW for the other params, as optax.contrib's ``muon`` and ``scale_by_muon``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._alias import adamw
from .._base import (
    GradientTransformation,
    Scalar,
    chain,
    check_state,
    dtype_arg,
    init_empty_state,
    number,
)
from .._more_common import flag, hyper, leafwise, rebuild, state_leaves, work_dtype, zeros
from .._more_wrappers import PartitionState, partition
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import bias_correction, safe_increment
from ._common import device_of

_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_PRESETS = {
    "standard": _DEFAULT_NS_COEFFS,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf are its matrix's rows (reduced over) and columns; the other
    axes are a batch of matrices (optax.contrib's ``MuonDimensionNumbers``)."""

    reduction_axis: Sequence[int] | int = 0
    """the input axis or axes"""
    output_axis: Sequence[int] | int = 1
    """the output axis or axes"""


class MuonState(NamedTuple):
    """The state of :func:`scale_by_muon`."""

    count: torch.Tensor
    """the step count (0-dim int32)"""
    mu: Any
    """the momentum"""
    ns_coeffs: torch.Tensor
    """the Newton-Schulz coefficients, shape ``(3,)`` or ``(steps, 3)`` (float64)"""


def _is_dims(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _axes(x: torch.Tensor, dims: MuonDimensionNumbers) -> tuple[tuple, tuple]:
    def norm(a):
        return tuple(i % x.ndim for i in ((a,) if isinstance(a, int) else a))

    return norm(dims.reduction_axis), norm(dims.output_axis)


def _fans(x: torch.Tensor, dims: MuonDimensionNumbers) -> tuple[int, int]:
    red, out = _axes(x, dims)
    return math.prod(x.shape[i] for i in red), math.prod(x.shape[i] for i in out)


def _as_batch(x: torch.Tensor, dims: MuonDimensionNumbers) -> tuple[torch.Tensor, Callable]:
    """``x`` as a batch of matrices ``(batch, fan_in, fan_out)`` and the inverse."""
    if x.ndim < 2:
        raise ValueError(f"fm.optim.contrib.muon: leaves must have rank >= 2, got {x.ndim}")
    red, out = _axes(x, dims)
    if set(red) & set(out):
        raise ValueError(
            f"fm.optim.contrib.muon: reduction axes {red} and output axes {out} must be disjoint"
        )
    batch = tuple(sorted(set(range(x.ndim)) - set(red) - set(out)))
    order = batch + red + out
    shape = [x.shape[i] for i in order]
    flat = x.permute(order).reshape(math.prod(shape[: len(batch)]), *_fans(x, dims))
    inverse = [order.index(i) for i in range(x.ndim)]
    return flat, lambda y: y.reshape(shape).permute(inverse)


def _ns_step(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    a = x @ x.mT.conj()
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def _first_step(x: torch.Tensor, c: torch.Tensor, how: str, eps: float = 1e-8) -> torch.Tensor:
    """AOL's or the Schatten norm's rescaling folded into the first iteration (its floor
    is optax's fixed 1e-8, not the transformation's ``eps``)."""
    if how == "aol":
        a = x @ x.mT.conj()
        s = torch.rsqrt(torch.clamp(a.abs().sum(-1), min=eps)).unsqueeze(-1)
        x, a = x * s, a * s * s.mT
    else:
        a = x @ x.mT
        s = torch.rsqrt(torch.clamp(torch.linalg.matrix_norm(a), min=eps))[:, None, None]
        x, a = x * s, a * s**2
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def orthogonalize(x: torch.Tensor, coeffs: torch.Tensor, steps: int, how: str, eps: Any):
    """Newton-Schulz on a batch of matrices ``(batch, m, n)`` (each transposed to ``m <=
    n`` first, as optax's)."""
    wide = x.shape[-2] > x.shape[-1]
    if wide:
        x = x.mT
    if how == "frobenius":
        x = x / (torch.linalg.matrix_norm(x, "fro", keepdim=True) + eps)
    elif how == "spectral":
        x = x / (torch.linalg.matrix_norm(x, 2, keepdim=True) + eps)
    c = coeffs.to(x.dtype)
    rows = [c] * steps if c.ndim == 1 else list(c)
    for i, row in enumerate(rows):
        x = (
            _first_step(x, row, how)
            if i == 0 and how in ("aol", "schatten")
            else (_ns_step(x, row))
        )
    return x.mT if wide else x


def _coeffs(where: str, ns_coeffs: Any, ns_steps: int, device: Any) -> torch.Tensor:
    c = torch.as_tensor(ns_coeffs, dtype=torch.float64, device=device)
    if c.ndim > 2 or c.ndim == 0 or c.shape[-1] != 3:
        raise ValueError(f"{where}: ns_coeffs must have shape (3,) or (n, 3), got {tuple(c.shape)}")
    if c.ndim == 2:
        if c.shape[0] > ns_steps:
            raise ValueError(f"{where}: not enough coeffs to perform {ns_steps} steps")
        c = c[-ns_steps:]
    return c


def _resolve(dims: Any, updates: list, where: str) -> list:
    """Per leaf (of the list ``updates``), its dimension numbers (``None``: a matrix)."""
    dims = dims(updates) if callable(dims) else dims
    if dims is None or isinstance(dims, MuonDimensionNumbers):
        return [dims] * len(updates)
    flat = pytree.tree_leaves(dims, is_leaf=_is_dims)
    if len(flat) != len(updates):
        raise ValueError(
            f"{where}: weight_dimension_numbers has {len(flat)} leaves for {len(updates)} updates"
        )
    return flat


def _orthogonal(x: torch.Tensor, dims: Any, coeffs: torch.Tensor, hp: dict) -> torch.Tensor:
    if dims is None:
        if x.ndim != 2:
            raise ValueError(
                f"{hp['where']}: a leaf of shape {tuple(x.shape)} needs weight dimension "
                "numbers (only matrices go without)"
            )
        dims = MuonDimensionNumbers()
    flat, back = _as_batch(x, dims)
    return back(orthogonalize(flat, coeffs, hp["ns_steps"], hp["how"], hp["eps"]))


def scale_by_muon(
    ns_coeffs: Any = _DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: Any = None,
) -> GradientTransformation:
    """Muon's scaling (optax.contrib's ``scale_by_muon``): the bias-corrected momentum
    (Nesterov's by default) orthogonalised by ``ns_steps`` Newton-Schulz iterations.

    Arguments:
        ns_coeffs: the iteration's coefficients ``(a, b, c)``, or one row per step.
        ns_steps: the number of iterations.
        beta: the decay rate of the momentum.
        eps: added to the preconditioning norm.
        mu_dtype: the dtype of the momentum (the params' when ``None``).
        nesterov: Nesterov momentum.
        adaptive: scale each orthogonalised update by its inner product with the momentum.
        preconditioning: ``'frobenius'``, ``'spectral'``, ``'aol'`` or ``'schatten'``.
        weight_dimension_numbers: ``None`` (every leaf is a matrix), one
            :class:`MuonDimensionNumbers` for all leaves, a list of them (one per leaf,
            in leaf order), or a function of the updates returning one of these.

    Returns:
        A GradientTransformation; its state is a :class:`MuonState`.

    Raises:
        ValueError: coefficients of the wrong shape, an unknown preconditioning, a leaf
            that is not a matrix without dimension numbers.
        TypeError: a hyperparameter of the wrong type.
    """
    where = "fm.optim.contrib.scale_by_muon"
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(f"{where}: unknown preconditioning {preconditioning!r}")
    beta, mu_dtype = number(where, "beta", beta), dtype_arg(where, "mu_dtype", mu_dtype)
    flag(where, "nesterov", nesterov)
    flag(where, "adaptive", adaptive)
    # (an int held as a tensor by inject_hyperparams is read on the host: it sets a loop)
    ns_steps = int(ns_steps)
    hp = dict(where=where, ns_steps=ns_steps, how=preconditioning, eps=number(where, "eps", eps))
    _coeffs(where, ns_coeffs, ns_steps, None)

    def init(params):
        device = device_of(params)
        count = torch.zeros((), dtype=torch.int32, device=device)
        return MuonState(
            count, zeros(params, mu_dtype), _coeffs(where, ns_coeffs, ns_steps, device)
        )

    def step(us, state, ps, spec):
        check_state(state, MuonState, where)
        dims = _resolve(weight_dimension_numbers, us, where)
        count = safe_increment(state.count)
        out, mus = [], []
        for u, mu, d in zip(us, state_leaves(state.mu, spec, "mu"), dims, strict=True):
            w = work_dtype(u, mu)
            g, b = u.to(w), hyper(beta, u.to(w))
            m = (1 - b) * g + b * mu.to(w)
            if nesterov:
                nxt = safe_increment(count)
                m_hat = b * bias_correction(m, beta, nxt) + (1 - b) * bias_correction(
                    g, beta, count
                )
            else:
                m_hat = bias_correction(m, beta, count)
            o = _orthogonal(m_hat, d, state.ns_coeffs, hp)
            out.append((m_hat.conj() * o).sum() * o if adaptive else o)
            mus.append(m.to(mu.dtype))
        return out, MuonState(count, *rebuild(spec, mus), state.ns_coeffs)

    return leafwise(where, init, step)


def scale_by_shape(
    weight_dimension_numbers: Any = None, consistent_rms: Scalar | None = None
) -> GradientTransformation:
    """Muon's shape scaling (optax.contrib's ``_muon.scale_by_shape``): each update times
    ``sqrt(max(1, fan_out / fan_in))``, or ``sqrt(max(fan_in, fan_out)) *
    consistent_rms`` when that is given.

    Arguments:
        weight_dimension_numbers: as :func:`scale_by_muon`'s.
        consistent_rms: the target root mean square of the updates, or ``None``.

    Returns:
        A GradientTransformation; its state is an ``EmptyState``.
    """
    where = "fm.optim.contrib.scale_by_shape"

    def step(us, state, ps, spec):
        out = []
        for u, d in zip(us, _resolve(weight_dimension_numbers, us, where), strict=True):
            fan_in, fan_out = _fans(u, d or MuonDimensionNumbers())
            if consistent_rms is None:
                out.append(math.sqrt(max(1, fan_out / fan_in)) * u)
            else:
                out.append(math.sqrt(max(fan_in, fan_out)) * hyper(consistent_rms, u) * u)
        return out, state

    return leafwise(where, init_empty_state, step)


def _split(dims: Any, params: Any, where: str) -> tuple[Any, list]:
    """The labels tree (``'muon'`` / ``'adam'``) and the muon leaves' dimension numbers."""
    leaves, spec = pytree.tree_flatten(params)
    if dims is None:
        chosen = [MuonDimensionNumbers() if p.ndim == 2 else None for p in leaves]
    else:
        dims = dims(params) if callable(dims) else dims
        if isinstance(dims, MuonDimensionNumbers):
            chosen = [dims] * len(leaves)
        else:
            chosen = pytree.tree_leaves(dims, is_leaf=_is_dims)
            if len(chosen) != len(leaves):
                raise ValueError(
                    f"{where}: muon_weight_dimension_numbers has {len(chosen)} leaves for "
                    f"{len(leaves)} params"
                )
    labels = ["adam" if d is None else "muon" for d in chosen]
    return pytree.tree_unflatten(labels, spec), [d for d in chosen if d is not None]


def muon(
    learning_rate: Scalar,
    ns_coeffs: Any = _DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: Scalar = 0.9,
    adam_b2: Scalar = 0.999,
    adam_eps_root: Scalar = 0.0,
    adam_weight_decay: Scalar = 0.0,
    adam_learning_rate: Scalar | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: Scalar | None = None,
) -> GradientTransformation:
    """Muon (optax.contrib's ``muon``): ``partition`` of the params into Muon's
    (``chain(scale_by_muon, scale_by_shape, add_decayed_weights, scale_by_learning_rate)``)
    and AdamW's. By default, as in optax 0.2.8, exactly the 2-d leaves are Muon's (a 3-d
    convolution kernel, a vector or a 0-dim leaf goes to AdamW);
    ``muon_weight_dimension_numbers`` (a tree like the params with a
    :class:`MuonDimensionNumbers` or ``None`` per leaf, one for all leaves, or a
    function of the params returning one) chooses otherwise.

    Arguments:
        learning_rate: Muon's learning rate (a number, 0-dim tensor or schedule).
        ns_coeffs: the Newton-Schulz coefficients, a row per step, or ``'standard'`` /
            ``'dion'``.
        ns_steps: the number of Newton-Schulz iterations.
        beta: the decay rate of Muon's momentum.
        eps: Muon's preconditioning floor and AdamW's ``eps``.
        weight_decay: Muon's decoupled weight decay.
        weight_decay_mask: which of Muon's leaves decay (a function of the list of
            Muon's leaves, or ``None``).
        mu_dtype: the dtype of both momenta.
        nesterov: Nesterov momentum, for both.
        adaptive: as :func:`scale_by_muon`'s.
        preconditioning: as :func:`scale_by_muon`'s.
        adam_b1: AdamW's ``b1``.
        adam_b2: AdamW's ``b2``.
        adam_eps_root: AdamW's ``eps_root``.
        adam_weight_decay: AdamW's weight decay.
        adam_learning_rate: AdamW's learning rate (``learning_rate`` when ``None``).
        muon_weight_dimension_numbers: which leaves are Muon's and their matrix axes.
        consistent_rms: as :func:`scale_by_shape`'s.

    Returns:
        A GradientTransformation; its state is a ``PartitionState`` with the keys
            ``'muon'`` and ``'adam'`` (only those with leaves).

    Raises:
        ValueError: an unknown ``ns_coeffs`` preset, or as :func:`scale_by_muon`.
    """
    where = "fm.optim.contrib.muon"
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _PRESETS:
            raise ValueError(f"{where}: unknown ns_coeffs preset {ns_coeffs!r}")
        ns_coeffs = _PRESETS[ns_coeffs]
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    muon_kw = dict(nesterov=nesterov, adaptive=adaptive, preconditioning=preconditioning)
    scale_by_muon(ns_coeffs, ns_steps, beta, eps, mu_dtype, **muon_kw)  # checks the arguments

    def build(params):
        labels, dims = _split(muon_weight_dimension_numbers, params, where)
        m = scale_by_muon(
            ns_coeffs, ns_steps, beta, eps, mu_dtype, weight_dimension_numbers=dims, **muon_kw
        )
        branch = chain(
            m,
            scale_by_shape(dims, consistent_rms),
            add_decayed_weights(weight_decay, weight_decay_mask),
            scale_by_learning_rate(learning_rate),
        )
        adam = adamw(
            adam_lr,
            adam_b1,
            adam_b2,
            eps,
            adam_eps_root,
            mu_dtype,
            adam_weight_decay,
            nesterov=nesterov,
        )
        # only the groups that have leaves: fm.optim's Adam fails on an empty list of leaves
        used = set(pytree.tree_leaves(labels))
        groups = {k: v for k, v in (("muon", branch), ("adam", adam)) if k in used}
        return partition(groups or {"adam": adam}, labels)

    def init(params):
        return build(params).init(params)

    def update(updates, state, params=None):
        check_state(state, PartitionState, where)
        return build(params if params is not None else updates).update(updates, state, params)

    return GradientTransformation(init, update)
