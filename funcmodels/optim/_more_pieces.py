"""More of optax's pieces: Rprop's and SM3's scalings, optimistic gradients, the param-block
scales, Polyak's step size and Adafactor's factored second moment, in optax's names,
defaults and arithmetic (leaf by leaf, see ``_more_common``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    Scalar,
    check_state,
    count_like,
    flatten,
    init_empty_state,
    number,
    unflatten,
)
from ._more_common import full, hyper, leafwise, per_leaf, rebuild, state_leaves, work_dtype, zeros
from ._utilities import safe_norm, safe_root_mean_squares


class ScaleByRpropState(NamedTuple):
    """The state of :func:`scale_by_rprop` (and so of :func:`rprop`)."""

    step_sizes: Any
    """each element's step size"""
    prev_updates: Any
    """the previous step's signed steps"""


class ScaleBySM3State(NamedTuple):
    """The state of :func:`scale_by_sm3` (and so of :func:`sm3`)."""

    mu: Any
    """per leaf (a list in the params' leaf order), one accumulator per dimension"""
    nu: Any
    """the momentum buffers"""


class ScaleByOptimisticGradientState(NamedTuple):
    """The state of :func:`scale_by_optimistic_gradient`."""

    is_initial_step: torch.Tensor
    """a 0-dim bool tensor, true before the first update"""
    previous_gradient: Any
    """the previous updates"""


def scale_by_rprop(
    learning_rate: Scalar,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
) -> GradientTransformation:
    """Rprop's scaling (Riedmiller and Braun, 1993) as optax computes it: each element's
    step size grows by ``eta_plus`` where the update keeps its sign, shrinks by
    ``eta_minus`` where it flips (clipped to ``[min_step_size, max_step_size]``); the
    signed step ``step_size * sign(u)`` is kept (0 after a flip), and the update returned
    is the signed step kept at the previous update (0 where the sign flipped): optax
    0.2.8's output lags one step behind its state, and so does this one.

    Arguments:
        learning_rate: every element's first step size.
        eta_minus: the factor on a step size where the sign flips.
        eta_plus: the factor on a step size where the sign holds.
        min_step_size: the smallest step size.
        max_step_size: the largest step size.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByRpropState`.

    Raises:
        ValueError, TypeError: a hyperparameter out of range or of the wrong type.
    """
    where = "fm.optim.scale_by_rprop"
    lr = number(where, "learning_rate", learning_rate)
    minus, plus = number(where, "eta_minus", eta_minus), number(where, "eta_plus", eta_plus)
    lo, hi = (
        number(where, "min_step_size", min_step_size),
        number(where, "max_step_size", max_step_size),
    )

    def init(params):
        return ScaleByRpropState(full(params, lr), zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleByRpropState, where)
        sizes = state_leaves(state.step_sizes, spec, "step sizes")
        prevs = state_leaves(state.prev_updates, spec, "previous steps")

        def leaf(g, size, prev):
            s = g * prev
            scaled = torch.where(s > 0, size * hyper(plus, g), size * hyper(minus, g))
            bounded = torch.minimum(torch.maximum(scaled, _as(lo, g)), _as(hi, g))
            size = torch.where(s == 0, size, bounded)
            zero = torch.zeros_like(g)
            new_prev = torch.where(s < 0, zero, size * torch.sign(g))
            return torch.where(s < 0, zero, prev), size, new_prev

        out, sizes, prevs = per_leaf(leaf, us, sizes, prevs)
        return out, ScaleByRpropState(*rebuild(spec, sizes, prevs))

    return leafwise(where, init, step)


def _as(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A hyperparameter as a 0-dim tensor of ``like``'s dtype."""
    if isinstance(value, torch.Tensor):
        return hyper(value, like)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def scale_by_sm3(b1: Scalar = 0.9, b2: Scalar = 1.0, eps: Scalar = 1e-8) -> GradientTransformation:
    """SM3's scaling (Anil et al., 2019): one accumulator per dimension of each leaf (its
    maxima over the other dimensions), the squared update added to their broadcast
    minimum, the update divided by its root (0 where it is 0), then a momentum ``b1``;
    the update is the momentum.

    optax keeps the accumulators in a tree like the params with a list at each leaf; here
    ``mu`` is a list with one such list per leaf, in the params' leaf order (a Params
    holds tensors only). Leaves need at least one dimension (optax fails on 0-dim ones).

    Arguments:
        b1: the momentum.
        b2: the accumulators' decay (1: a plain sum).
        eps: added inside the root.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleBySM3State`.

    Raises:
        ValueError: a 0-dim leaf (from ``init``); a hyperparameter out of range.
    """
    where = "fm.optim.scale_by_sm3"
    b1 = number(where, "b1", b1, below=1.0 + 1e-12)
    b2 = number(where, "b2", b2, below=1.0 + 1e-12)
    eps = number(where, "eps", eps)

    def init(params):
        leaves, _ = flatten(params)
        if any(p.dim() == 0 for p in leaves):
            raise ValueError(f"{where}: every leaf needs at least one dimension (got a 0-dim one)")
        mu = [[_max_other(torch.zeros_like(p), i) for i in range(p.dim())] for p in leaves]
        return ScaleBySM3State(mu, zeros(params))

    def step(us, state, ps, spec):
        check_state(state, ScaleBySM3State, where)
        nus = state_leaves(state.nu, spec, "momentum buffers")
        if not isinstance(state.mu, list) or len(state.mu) != len(us):
            raise ValueError(f"{where}: the state's accumulators do not match the updates")
        out, mus = [], []
        for g, acc, nu in zip(us, state.mu, nus, strict=True):
            dtype = work_dtype(g, nu, *acc)
            g, nu = g.to(dtype), nu.to(dtype)
            c0 = 1.0 - b2 if not (isinstance(b2, float) and b2 == 1.0) else 1.0
            shaped = [
                a.to(dtype).reshape([-1 if j == i else 1 for j in range(g.dim())])
                for i, a in enumerate(acc)
            ]
            least = shaped[0] if g.dim() < 2 else _minimum(shaped)
            t = hyper(c0, g) * g * g + hyper(b2, g) * least
            inv = torch.where(t > 0, torch.rsqrt(t + hyper(eps, g)), torch.zeros_like(t))
            a = hyper(b1, g)
            new = (1 - a) * (g * inv) + a * nu
            out.append(new.to(nu.dtype))
            mus.append([_max_other(t, i).to(old.dtype) for i, old in enumerate(acc)])
        nus = [o.to(n.dtype) for o, n in zip(out, nus, strict=True)]
        return nus, ScaleBySM3State(mus, unflatten(nus, spec))

    return leafwise(where, init, step, fresh=False)


def _minimum(xs: list[torch.Tensor]) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


def _max_other(t: torch.Tensor, i: int) -> torch.Tensor:
    """The maximum of ``t`` over every dimension but ``i`` (``t`` itself when 1-d)."""
    if t.dim() < 2:
        return t
    return t.amax(dim=[j for j in range(t.dim()) if j != i])


def scale_by_optimistic_gradient(alpha: Scalar = 1.0, beta: Scalar = 1.0) -> GradientTransformation:
    """Optimistic gradients (Mokhtari et al., 2019): ``(alpha + beta) * u - beta * u_prev``,
    ``u_prev`` the previous updates (at the first step, ``u`` itself).

    Arguments:
        alpha: the coefficient of generalised optimistic gradient descent.
        beta: the coefficient of the negative momentum.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByOptimisticGradientState`.

    Raises:
        ValueError, TypeError: a hyperparameter of the wrong type.
    """
    where = "fm.optim.scale_by_optimistic_gradient"
    alpha = number(where, "alpha", alpha, lo=-float("inf"))
    beta = number(where, "beta", beta, lo=-float("inf"))

    def init(params):
        device = count_like(params).device
        return ScaleByOptimisticGradientState(
            torch.ones((), dtype=torch.bool, device=device), zeros(params)
        )

    def step(us, state, ps, spec):
        check_state(state, ScaleByOptimisticGradientState, where)
        prevs = state_leaves(state.previous_gradient, spec, "previous updates")
        initial = state.is_initial_step

        def leaf(g, prev):
            a, b = hyper(alpha, g), hyper(beta, g)
            prev = torch.where(initial, g, prev)
            return (a + b) * g - b * prev, g

        out, prevs = per_leaf(leaf, us, prevs)
        done = torch.zeros_like(initial)
        return out, ScaleByOptimisticGradientState(done, *rebuild(spec, prevs))

    return leafwise(where, init, step)


def scale_by_param_block_norm(min_scale: Scalar = 1e-3) -> GradientTransformation:
    """Multiply each leaf's update by its param's 2-norm, floored at ``min_scale``.

    Arguments:
        min_scale: the floor.

    Returns:
        A GradientTransformation needing the params, keeping no state.

    Raises:
        ValueError: from ``update`` without the params.
    """
    return _block_scale("fm.optim.scale_by_param_block_norm", min_scale, safe_norm)


def scale_by_param_block_rms(min_scale: Scalar = 1e-3) -> GradientTransformation:
    """Multiply each leaf's update by its param's root mean square, floored at
    ``min_scale`` (Adafactor's ``multiply_by_parameter_scale``).

    Arguments:
        min_scale: the floor.

    Returns:
        A GradientTransformation needing the params, keeping no state.

    Raises:
        ValueError: from ``update`` without the params.
    """
    return _block_scale("fm.optim.scale_by_param_block_rms", min_scale, safe_root_mean_squares)


def _block_scale(where: str, min_scale: Scalar, measure: Callable) -> GradientTransformation:
    min_scale = number(where, "min_scale", min_scale)

    def step(us, state, ps, spec):
        out = []
        for u, p in zip(us, ps, strict=True):
            dtype = work_dtype(u, p)
            out.append(u.to(dtype) * measure(p.to(dtype), hyper(min_scale, p.to(dtype))))
        return out, state

    return leafwise(where, init_empty_state, step, needs_params=True)


def scale_by_polyak(
    f_min: Scalar = 0.0,
    max_learning_rate: Scalar = 1.0,
    eps: Scalar = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    """Polyak's step size (Loizou et al., 2021): the updates times ``min((value - f_min) /
    (|u|^2 + eps), max_learning_rate)`` (0 where ``|u|^2 + eps`` is below float64's
    machine epsilon), ``|u|`` the global norm; ``'sps+'`` floors ``value - f_min`` at 0.

    ``update(updates, state, params=None, *, value)`` takes the loss's value, as optax's:
    inside :func:`chain`, pass ``value=`` to the chain's ``update``.

    Arguments:
        f_min: a lower bound of the loss.
        max_learning_rate: the step size's ceiling.
        eps: added to the squared norm.
        variant: ``'sps'`` or ``'sps+'``.

    Returns:
        A :class:`GradientTransformationExtraArgs` (the state: :class:`EmptyState`).

    Raises:
        ValueError: an unknown ``variant``, a hyperparameter out of range.
        TypeError: (update) no ``value`` for a tree with leaves.
    """
    where = "fm.optim.scale_by_polyak"
    f_min = number(where, "f_min", f_min, lo=-float("inf"))
    max_lr = number(where, "max_learning_rate", max_learning_rate)
    eps = number(where, "eps", eps)
    if variant not in ("sps", "sps+"):
        raise ValueError(f"{where}: variant must be 'sps' or 'sps+', got {variant!r}")

    def update(updates, state, params=None, *, value=None, **extra_args):
        check_state(state, EmptyState, where)
        us, spec = flatten(updates)
        if not us:  # a tree with no leaves: no step to scale
            return updates, state
        if value is None:
            raise TypeError(f"{where}: update needs value= (the loss at params)")
        sq = sum((torch.linalg.vector_norm(u) ** 2 for u in us), torch.zeros(()))
        sq = sq.to(work_dtype(*us)) if us else sq
        gap = torch.as_tensor(value).to(sq.dtype) - hyper(f_min, sq)
        if variant == "sps+":
            gap = torch.relu(gap)
        denom = sq + hyper(eps, sq)
        rate = torch.minimum(gap / denom, _as(max_lr, sq))
        rate = torch.where(denom <= torch.finfo(torch.float64).eps, torch.zeros_like(rate), rate)
        return unflatten([u * rate.to(u.dtype) for u in us], spec), state

    return GradientTransformationExtraArgs(init_empty_state, update)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """The state of :func:`scale_by_distance_over_gradients`."""

    max_dist: Any
    """per leaf, a 0-dim tensor: the largest distance from the first params so far"""
    grad_sum_of_squares: Any
    """per leaf, a tensor of shape ``(1,)``: the sum of the squared updates"""
    init_params: Any
    """the first params, in ``param_dtype``"""


def scale_by_distance_over_gradients(
    reps_rel: float = 1e-6,
    eps: float = 1e-8,
    param_dtype: torch.dtype = torch.float32,
    global_scale: float = 1.0,
) -> GradientTransformation:
    """DoG's layer-wise step size (Ivgi et al., 2023, "LDoG"): per leaf, ``global_scale *
    d / sqrt(s + eps)`` times the update, ``d`` the largest distance of the params from
    their first value (at least ``reps_rel * (1 + |params_0|)``) and ``s`` the sum of the
    squared updates so far.

    The sum is kept with shape ``(1,)`` as optax's; the update keeps the leaf's shape (for
    a 0-dim leaf optax's becomes shape ``(1,)``).

    Arguments:
        reps_rel: the first distance, relative to ``1 + |params_0|``.
        eps: added to the sum of squares.
        param_dtype: the dtype the first params are kept in.
        global_scale: a factor on every step (``-1`` for descent).

    Returns:
        A GradientTransformation needing the params; its state is a
            :class:`ScaleByDistanceOverGradientsState`.

    Raises:
        ValueError: from ``update``, no params.
    """
    where = "fm.optim.scale_by_distance_over_gradients"
    reps_rel = number(where, "reps_rel", reps_rel)
    eps = number(where, "eps", eps)
    global_scale = number(where, "global_scale", global_scale, lo=-float("inf"))

    def init(params):
        return ScaleByDistanceOverGradientsState(
            pytree.tree_map(lambda p: reps_rel * (1 + torch.linalg.vector_norm(p)), params),
            pytree.tree_map(lambda p: torch.zeros(1, dtype=p.dtype, device=p.device), params),
            pytree.tree_map(lambda p: p.to(param_dtype), params),
        )

    def step(us, state, ps, spec):
        check_state(state, ScaleByDistanceOverGradientsState, where)
        dists = state_leaves(state.max_dist, spec, "distances")
        sums = state_leaves(state.grad_sum_of_squares, spec, "sums of squares")
        firsts = state_leaves(state.init_params, spec, "first params")
        out, new_d, new_s = [], [], []
        for u, d, s, p, p0 in zip(us, dists, sums, ps, firsts, strict=True):
            d = torch.maximum(d, torch.linalg.vector_norm(p - p0)).to(d.dtype)
            s = (s + torch.sum(u * u)).to(s.dtype)
            eta = global_scale * (d / torch.sqrt(s + eps))
            out.append(eta.reshape(()) * u)
            new_d.append(d)
            new_s.append(s)
        new = ScaleByDistanceOverGradientsState(*rebuild(spec, new_d, new_s), state.init_params)
        return out, new

    return leafwise(where, init, step, needs_params=True)
