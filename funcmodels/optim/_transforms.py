"""The pieces optimisers are chained from, in optax's vocabulary.

Each is a :class:`GradientTransformation`. Where torch has the same arithmetic
(``torch.optim``, ``clip_grad_norm_``) the operations follow it, so chains of these agree
with torch up to rounding. Hyperparameters are numbers or 0-dim tensors (so that
:func:`inject_hyperparams` can change them between steps); learning rates may also be
schedules.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch._C._functorch import maybe_current_level as _functorch_level

from ._base import (
    EmptyState,
    GradientTransformation,
    Scalar,
    _eager_in_place,
    _fits,
    _need_grad,
    check_state,
    count_like,
    flatten_like,
    is_schedule,
    leaves_of,
    number,
    owning,
    scalar_dtype,
    zeros_like_tree,
)
from ._wrappers import masked


class ScaleByScheduleState(NamedTuple):
    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""


class ScaleByAdamState(NamedTuple):
    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    mu: Any
    """first-moment estimates, a pytree like the params"""
    nu: Any
    """second-moment estimates, a pytree like the params"""


class ScaleByRmsState(NamedTuple):
    nu: Any
    """running mean of squared updates"""
    mu: Any
    """running mean of updates (``centered=True``; ``()`` otherwise)"""


class ScaleByRssState(NamedTuple):
    sum_of_squares: Any
    """accumulated squared updates"""


class TraceState(NamedTuple):
    trace: Any
    """the momentum buffers"""


class ScaleByLionState(NamedTuple):
    mu: Any
    """the momentum buffers"""


def _log(value: float | torch.Tensor) -> float | torch.Tensor:
    """``log(value)`` in double precision: near 1 (``b2 = 0.99999``) a float32 ``value``
    would lose most digits of ``log``, and with them the bias correction's."""
    if isinstance(value, torch.Tensor):
        return torch.log(value.to(torch.float64))
    return math.log(value) if value > 0 else -math.inf


def scale(step_size: float | torch.Tensor) -> GradientTransformation:
    """Multiply the updates by ``step_size`` (any sign)."""
    where = "fm.optim.scale"
    if not isinstance(step_size, torch.Tensor):
        step_size = number(where, "step_size", step_size, lo=-float("inf"))

    def update(updates, state, params=None):
        return pytree.tree_map(lambda u: u * step_size, updates), state

    def in_place(updates, state, params=None):
        if _need_grad(step_size):  # a hyperparameter being differentiated
            return update(updates, state, params)
        scaled = pytree.tree_map(
            lambda u: u.mul_(step_size) if _fits(u, step_size) else u * step_size, updates
        )
        return scaled, state

    return GradientTransformation(lambda params: EmptyState(), owning(update, in_place))


def scale_by_schedule(schedule) -> GradientTransformation:
    """Multiply the updates by ``schedule(count)``, ``count`` the updates done before."""
    if not callable(schedule):
        raise TypeError(f"fm.optim.scale_by_schedule: expected a schedule, got {schedule!r}")

    def init(params):
        return ScaleByScheduleState(count_like(params))

    def update(updates, state, params=None, in_place=False):
        check_state(state, ScaleByScheduleState, "fm.optim.scale_by_schedule")
        factor = schedule(state.count)
        if in_place and not _need_grad(factor):
            scaled = pytree.tree_map(
                lambda u: u.mul_(factor) if _fits(u, factor) else u * factor, updates
            )
        else:
            scaled = pytree.tree_map(lambda u: u * factor, updates)
        return scaled, ScaleByScheduleState(state.count + 1)

    def update_in_place(updates, state, params=None):
        return update(updates, state, params, in_place=True)

    return GradientTransformation(init, owning(update, update_in_place))


def scale_by_learning_rate(
    learning_rate: Scalar, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply the updates by ``-learning_rate`` (``+`` with ``flip_sign=False``).

    ``learning_rate``: a number, a 0-dim tensor, or a schedule of the step count.
    """
    lr = number("fm.optim.scale_by_learning_rate", "learning_rate", learning_rate, schedule=True)
    sign = -1.0 if flip_sign else 1.0
    if is_schedule(lr):
        return scale_by_schedule(lambda count: sign * lr(count))
    return scale(sign * lr)


def add_decayed_weights(
    weight_decay: float | torch.Tensor = 0.0, mask=None
) -> GradientTransformation:
    """Add ``weight_decay * param`` to each update (decoupled weight decay when it comes
    after the adaptive scaling, an L2 term in the gradient when it comes before).

    Arguments:
        weight_decay: the coefficient, ``>= 0``.
        mask: which params decay: a pytree of bools like the params, or a function of the
            params returning one (``fm.tree.map_with_path`` builds it from names, e.g.
            every weight but no bias or norm parameter); ``None`` decays all.
    """
    where = "fm.optim.add_decayed_weights"
    wd = number(where, "weight_decay", weight_decay)
    if mask is not None:
        return masked(add_decayed_weights(wd), mask)

    def update(updates, state, params=None):
        us, ps, spec = leaves_of(updates, params, where, need_params=True)
        out = [
            u.add(p, alpha=wd) if isinstance(wd, float) else u + wd * p
            for u, p in zip(us, ps, strict=True)
        ]
        return pytree.tree_unflatten(out, spec), state

    def in_place(updates, state, params=None):
        if _need_grad(wd):
            return update(updates, state, params)
        us, ps, spec = leaves_of(updates, params, where, need_params=True)
        out = []
        for u, p in zip(us, ps, strict=True):
            term = p if isinstance(wd, float) else wd * p
            if not _fits(u, term):  # a wider param dtype: promote, as out of place
                out.append(u.add(term, alpha=wd) if isinstance(wd, float) else u + term)
            elif isinstance(wd, float):
                out.append(u.add_(p, alpha=wd))
            else:
                out.append(u.add_(term))
        return pytree.tree_unflatten(out, spec), state

    return GradientTransformation(lambda params: EmptyState(), owning(update, in_place))


def clip(max_delta: float | torch.Tensor) -> GradientTransformation:
    """Clamp every update element to ``[-max_delta, max_delta]``."""
    bound = number("fm.optim.clip", "max_delta", max_delta)

    def update(updates, state, params=None):
        return pytree.tree_map(lambda u: u.clamp(-bound, bound), updates), state

    return GradientTransformation(lambda params: EmptyState(), update)


def global_norm(updates: Any) -> torch.Tensor:
    """The 2-norm of all update elements together (as ``clip_grad_norm_`` computes it)."""
    leaves = pytree.tree_leaves(updates)
    if not leaves:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(u) for u in leaves]))


def clip_by_global_norm(max_norm: float | torch.Tensor) -> GradientTransformation:
    """Scale all updates by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` their global
    2-norm: exactly :func:`torch.nn.utils.clip_grad_norm_`'s rule."""
    bound = number("fm.optim.clip_by_global_norm", "max_norm", max_norm)

    def update(updates, state, params=None):
        norm = global_norm(updates)
        factor = torch.clamp(bound / (norm + 1e-6), max=1.0)
        return pytree.tree_map(lambda u: u * factor.to(u.dtype), updates), state

    return GradientTransformation(lambda params: EmptyState(), owning(update))


def trace(decay: float | torch.Tensor = 0.9, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``t = decay * t + u`` (``t`` starts at zero, so the first ``t`` is ``u``,
    as torch's SGD), and the update is ``t``, or ``u + decay * t`` with ``nesterov``."""
    where = "fm.optim.trace"
    decay = number(where, "decay", decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{where}: nesterov must be a bool, got {nesterov!r}")

    def init(params):
        return TraceState(zeros_like_tree(params))

    def update(updates, state, params=None):
        check_state(state, TraceState, where)
        us, spec = pytree.tree_flatten(updates)
        ts = flatten_like(state.trace, spec, "momentum buffers", "the updates")
        ts = [(t * decay).add(u) for t, u in zip(ts, us, strict=True)]
        out = [u + decay * t for u, t in zip(us, ts, strict=True)] if nesterov else ts
        return pytree.tree_unflatten(out, spec), TraceState(pytree.tree_unflatten(ts, spec))

    return GradientTransformation(init, update)


def scale_by_adam(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    eps_root: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    """Adam's scaling: ``m_hat / (sqrt(v_hat + eps_root) + eps)`` with bias-corrected moment
    estimates, computed as :class:`torch.optim.Adam` does (``eps_root = 0``).

    The bias corrections ``1 - b**t`` are ``-expm1(t * log(b))``, which keeps the float32
    digits that ``1 - b**t`` loses.
    """
    where = "fm.optim.scale_by_adam"
    b1 = number(where, "b1", b1, below=1.0)
    b2 = number(where, "b2", b2, below=1.0)
    eps = number(where, "eps", eps)
    eps_root = number(where, "eps_root", eps_root)

    def init(params):
        return ScaleByAdamState(
            count_like(params), zeros_like_tree(params), zeros_like_tree(params)
        )

    def update(updates, state, params=None):
        check_state(state, ScaleByAdamState, where)
        us, spec = pytree.tree_flatten(updates)
        mus = flatten_like(state.mu, spec, "first moments", "the updates")
        nus = flatten_like(state.nu, spec, "second moments", "the updates")
        count = state.count + 1
        dtype = scalar_dtype(us)
        c = count.to(dtype)
        bc1 = -torch.expm1(c * _log(b1))
        bc2_sqrt = (-torch.expm1(c * _log(b2))) ** 0.5
        out, new_mus, new_nus = [], [], []
        # In place only outside torch.func transforms: vmap has no batching rule for
        # addcmul_ and would loop over an ensemble's members one by one.
        inplace = _functorch_level() is None
        # Eager only, one full-size allocation fewer per leaf (out= is not for compile,
        # forward AD or tensors autograd records through).
        reuse = _eager_in_place() and not _need_grad(state.mu, updates, b1, b2, eps)
        for u, m, v in zip(us, mus, nus, strict=True):
            m = torch.lerp(m, u, 1 - b1)
            if not isinstance(b2, float):
                v = v * b2 + (1 - b2) * u * u
            elif inplace:
                v = (v * b2).addcmul_(u, u, value=1 - b2)
            else:
                v = torch.addcmul(v * b2, u, u, value=1 - b2)
            # The denominator is a fresh tensor of ours: updating it in place saves two
            # full-size temporaries per leaf (the same arithmetic, in the same order).
            root = (v + eps_root).sqrt_() if eps_root else v.sqrt()
            root.div_(bc2_sqrt).add_(eps)
            if reuse:  # the update in the denominator's memory
                out.append(torch.div(m, root, out=root).div_(bc1))
            else:
                out.append(m.div(root).div_(bc1))
            new_mus.append(m)
            new_nus.append(v)
        new_state = ScaleByAdamState(
            count, pytree.tree_unflatten(new_mus, spec), pytree.tree_unflatten(new_nus, spec)
        )
        return pytree.tree_unflatten(out, spec), new_state

    return GradientTransformation(init, owning(update))


def scale_by_rms(
    decay: float | torch.Tensor = 0.99,
    eps: float | torch.Tensor = 1e-8,
    initial_scale: float = 0.0,
    centered: bool = False,
) -> GradientTransformation:
    """RMSprop's scaling, as :class:`torch.optim.RMSprop`: ``u / (sqrt(nu) + eps)`` with
    ``nu = decay * nu + (1 - decay) * u**2`` (centered: ``sqrt(nu - mu**2)``, ``mu`` the
    running mean of ``u``).

    torch adds ``eps`` outside the square root; optax's ``scale_by_rms`` adds it inside.
    """
    where = "fm.optim.scale_by_rms"
    decay = number(where, "decay", decay, below=1.0 + 1e-12)
    eps = number(where, "eps", eps)
    initial_scale = number(where, "initial_scale", initial_scale)
    if not isinstance(centered, bool):
        raise TypeError(f"{where}: centered must be a bool, got {centered!r}")

    def init(params):
        nu = pytree.tree_map(lambda p: torch.full_like(p, initial_scale), params)
        return ScaleByRmsState(nu, zeros_like_tree(params) if centered else ())

    def update(updates, state, params=None):
        check_state(state, ScaleByRmsState, where)
        us, spec = pytree.tree_flatten(updates)
        nus = flatten_like(state.nu, spec, "squared averages", "the updates")
        mus = (
            flatten_like(state.mu, spec, "averages", "the updates")
            if centered
            else [None] * len(us)
        )
        out, new_nus, new_mus = [], [], []
        for u, v, m in zip(us, nus, mus, strict=True):
            v = v * decay + (1 - decay) * u * u
            if centered:
                m = torch.lerp(m, u, 1 - decay)
                avg = torch.addcmul(v, m, m, value=-1).sqrt() + eps
                new_mus.append(m)
            else:
                avg = v.sqrt() + eps
            out.append(u / avg)
            new_nus.append(v)
        mu = pytree.tree_unflatten(new_mus, spec) if centered else ()
        return pytree.tree_unflatten(out, spec), ScaleByRmsState(
            pytree.tree_unflatten(new_nus, spec), mu
        )

    return GradientTransformation(init, update)


def scale_by_rss(
    initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> GradientTransformation:
    """Adagrad's scaling, as :class:`torch.optim.Adagrad`: ``u / (sqrt(sum of u**2) + eps)``."""
    where = "fm.optim.scale_by_rss"
    initial = number(where, "initial_accumulator_value", initial_accumulator_value)
    eps = number(where, "eps", eps)

    def init(params):
        return ScaleByRssState(pytree.tree_map(lambda p: torch.full_like(p, initial), params))

    def update(updates, state, params=None):
        check_state(state, ScaleByRssState, where)
        us, spec = pytree.tree_flatten(updates)
        sums = flatten_like(state.sum_of_squares, spec, "accumulated squares", "the updates")
        sums = [torch.addcmul(s, u, u) for s, u in zip(sums, us, strict=True)]
        out = [u / (s.sqrt() + eps) for u, s in zip(us, sums, strict=True)]
        return pytree.tree_unflatten(out, spec), ScaleByRssState(pytree.tree_unflatten(sums, spec))

    return GradientTransformation(init, update)


def scale_by_lion(
    b1: float | torch.Tensor = 0.9, b2: float | torch.Tensor = 0.99
) -> GradientTransformation:
    """Lion's update direction (Chen et al., 2023): ``sign(b1 * mu + (1 - b1) * u)``, then
    ``mu = b2 * mu + (1 - b2) * u``."""
    where = "fm.optim.scale_by_lion"
    b1 = number(where, "b1", b1, below=1.0 + 1e-12)
    b2 = number(where, "b2", b2, below=1.0 + 1e-12)

    def init(params):
        return ScaleByLionState(zeros_like_tree(params))

    def update(updates, state, params=None):
        check_state(state, ScaleByLionState, where)
        us, spec = pytree.tree_flatten(updates)
        mus = flatten_like(state.mu, spec, "momentum buffers", "the updates")
        out = [torch.sign(torch.lerp(m, u, 1 - b1)) for u, m in zip(us, mus, strict=True)]
        mus = [torch.lerp(m, u, 1 - b2) for u, m in zip(us, mus, strict=True)]
        return pytree.tree_unflatten(out, spec), ScaleByLionState(pytree.tree_unflatten(mus, spec))

    return GradientTransformation(init, update)


def scale_by_trust_ratio(min_norm: float = 0.0) -> GradientTransformation:
    """LAMB's layer-wise scaling: each update times ``|param| / |update|`` (1 where either
    norm is at most ``min_norm``)."""
    where = "fm.optim.scale_by_trust_ratio"
    min_norm = number(where, "min_norm", min_norm)

    def update(updates, state, params=None):
        us, ps, spec = leaves_of(updates, params, where, need_params=True)
        out = []
        for u, p in zip(us, ps, strict=True):
            pn, un = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
            ok = (pn > min_norm) & (un > min_norm)
            ratio = torch.where(
                ok, pn / torch.where(ok, un, torch.ones_like(un)), torch.ones_like(pn)
            )
            out.append(u * ratio)
        return pytree.tree_unflatten(out, spec), state

    return GradientTransformation(lambda params: EmptyState(), update)
