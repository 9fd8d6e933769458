"""The stateless pieces (and the step-counting scales), in optax's names and arithmetic.

Each is a :class:`GradientTransformation` whose arguments, defaults and numbers are
optax's (``fm.optim.clip_by_global_norm`` divides by ``max(norm, max_norm)`` as optax does;
``torch.nn.utils.clip_grad_norm_`` divides by ``norm + 1e-6``). Hyperparameters are numbers
or 0-dim tensors, cast to each leaf's dtype before use; the scales may be schedules.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._base import (
    EmptyState,
    GradientTransformation,
    Scalar,
    check_empty,
    check_state,
    count_like,
    flat_transformation,
    identity,
    init_empty_state,
    is_schedule,
    number,
)
from ._ops import Tensors, cast, grouped, multi_tensor_allowed, promoted, scalar
from ._wrappers import masked


class ScaleByScheduleState(NamedTuple):
    """The state of :func:`scale_by_schedule`."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""


class WeightDecayScheduleState(NamedTuple):
    """The state of :func:`add_decayed_weights` with a schedule as ``weight_decay``."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor (the weight decay is a schedule of it)"""


def _scaled(us: Tensors, factor: Any, own: bool) -> Tensors:
    """``us * factor`` (a number or 0-dim tensor, cast to each leaf's dtype as optax casts
    it); written into ``us`` where they are ``own``ed (unless autograd records)."""

    def math(ops, dtype, device, us):
        s = scalar(factor, dtype, device)
        return (ops.mul_(us, s) if own else ops.mul(us, s),)

    return grouped(math, [u.dtype for u in us], us, hyper=(factor,))[0]


def scale(step_size: Scalar) -> GradientTransformation:
    """Multiply the updates by ``step_size``.

    Arguments:
        step_size: any sign; a number or a 0-dim tensor.

    Returns:
        A GradientTransformation keeping no state.
    """
    step_size = number("fm.optim.scale", "step_size", step_size, lo=-float("inf"))

    def fn(us, state, ps, spec, own):
        return _scaled(us, step_size, own), state, True

    def value(state):
        check_empty(state, "fm.optim.scale")
        return step_size, state

    fuse = ("scale", value)
    return flat_transformation("fm.optim.scale", init_empty_state, fn, fuse=fuse)


def scale_by_schedule(step_size_fn) -> GradientTransformation:
    """Multiply the updates by ``step_size_fn(count)``, ``count`` the updates done before
    (a 0-dim int64 tensor); the value is cast to each leaf's dtype.

    Arguments:
        step_size_fn (Callable[[torch.Tensor], Any]): a schedule: a function of the step
            count returning the factor (a number or a 0-dim tensor).

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByScheduleState`.

    Raises:
        TypeError: ``step_size_fn`` is not callable.
    """
    where = "fm.optim.scale_by_schedule"
    if not callable(step_size_fn):
        raise TypeError(f"{where}: expected a schedule, got {step_size_fn!r}")

    def init(params):
        return ScaleByScheduleState(count_like(params))

    def value(state):
        check_state(state, ScaleByScheduleState, where)
        return step_size_fn(state.count), ScaleByScheduleState(state.count + 1)

    def fn(us, state, ps, spec, own):
        factor, state = value(state)
        return _scaled(us, factor, own), state, True

    return flat_transformation(where, init, fn, fuse=("scale", value))


def scale_by_learning_rate(
    learning_rate: Scalar | None = None, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply the updates by ``-learning_rate`` (``+`` with ``flip_sign=False``).

    Arguments:
        learning_rate: a number, a 0-dim tensor, a schedule of the step count, or
            ``None`` (no scaling).
        flip_sign: scale by ``-learning_rate`` (descent).

    Returns:
        A GradientTransformation (:func:`scale`, :func:`scale_by_schedule` or
            :func:`identity`).
    """
    if learning_rate is None:
        return identity()
    lr = number("fm.optim.scale_by_learning_rate", "learning_rate", learning_rate, schedule=True)
    sign = -1.0 if flip_sign else 1.0
    if is_schedule(lr):
        return scale_by_schedule(lambda count: sign * lr(count))
    return scale(sign * lr)


def add_decayed_weights(weight_decay: Scalar = 0.0, mask: Any = None) -> GradientTransformation:
    """Add ``weight_decay * param`` to each update (decoupled weight decay when it comes
    after the adaptive scaling, an L2 term in the gradient when it comes before).

    Arguments:
        weight_decay: the coefficient, ``>= 0``: a number, a 0-dim tensor or a schedule of
            the step count (then the state counts the steps).
        mask: which params decay: a pytree of bools like the params (or a prefix of it),
            or a function of the params returning one (``fm.tree.map_with_path`` builds it
            from names); ``None`` decays all.

    Returns:
        A GradientTransformation needing the params; its state is empty, or a
            :class:`WeightDecayScheduleState` for a schedule (a :class:`MaskedState` around
            it with a mask).
    """
    where = "fm.optim.add_decayed_weights"
    wd = number(where, "weight_decay", weight_decay, schedule=True)
    if mask is not None:
        return masked(add_decayed_weights(wd), mask)
    scheduled = is_schedule(wd)
    zero = isinstance(wd, float) and wd == 0.0

    def init(params):
        return WeightDecayScheduleState(count_like(params)) if scheduled else EmptyState()

    def decay(state):
        if scheduled:
            check_state(state, WeightDecayScheduleState, where)
            return wd(state.count), WeightDecayScheduleState(state.count + 1)
        check_empty(state, where)
        return wd, state

    def fn(us, state, ps, spec, own):
        value, state = decay(state)
        if zero:  # optax skips the arithmetic (the updates pass as they came)
            return us, state, own

        def math(ops, dtype, device, us, ps):
            s = scalar(value, dtype, device)
            fresh = [u.dtype != dtype for u in us]  # a cast below makes a tensor of ours
            us, ps = cast(us, [dtype] * len(us)), cast(ps, [dtype] * len(ps))
            if own or (us and all(fresh)):
                return (ops.add_scaled_(us, ps, s),)
            return (ops.add_scaled(us, ps, s),)

        return grouped(math, promoted(us, ps), us, ps, hyper=(value,))[0], state, True

    return flat_transformation(where, init, fn, needs_params=True, fuse=("decay", decay))


def clip(max_delta: Scalar) -> GradientTransformation:
    """Clamp every update element to ``[-max_delta, max_delta]``.

    Arguments:
        max_delta: the bound, ``>= 0`` (a number or a 0-dim tensor).

    Returns:
        A GradientTransformation keeping no state.
    """
    bound = number("fm.optim.clip", "max_delta", max_delta)

    def fn(us, state, ps, spec, own):
        def math(ops, dtype, device, us):
            b = scalar(bound, dtype, device)
            return (ops.clamp(us, -b, b),)

        return grouped(math, [u.dtype for u in us], us, hyper=(bound,))[0], state, True

    return flat_transformation("fm.optim.clip", init_empty_state, fn)


def global_norm(updates: Any) -> torch.Tensor:
    """The 2-norm of all update elements together: the norm of the leaves' norms (as
    ``clip_grad_norm_`` computes it).

    Arguments:
        updates: a pytree of tensors.

    Returns:
        A 0-dim tensor.
    """
    return _global_norm(pytree.tree_leaves(updates))


def _global_norm(leaves: Tensors) -> torch.Tensor:
    if not leaves:
        return torch.zeros(())
    if multi_tensor_allowed(leaves):
        norms = torch._foreach_norm(leaves)
    else:
        norms = [torch.linalg.vector_norm(u) for u in leaves]
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_by_global_norm(max_norm: Scalar) -> GradientTransformation:
    """Scale all updates by ``max_norm / norm`` where their global 2-norm ``norm`` is at
    least ``max_norm`` (optax's rule; ``clip_grad_norm_`` uses ``max_norm / (norm + 1e-6)``,
    a relative difference of ``1e-6 / norm``).

    Arguments:
        max_norm: the largest global norm let through, ``>= 0``.

    Returns:
        A GradientTransformation keeping no state.
    """
    bound = number("fm.optim.clip_by_global_norm", "max_norm", max_norm)

    def fn(us, state, ps, spec, own):
        norm = _global_norm(us)
        factor = torch.where(norm < bound, torch.ones_like(norm), bound / norm)
        return _scaled(us, factor, own), state, True

    return flat_transformation("fm.optim.clip_by_global_norm", init_empty_state, fn)


def clip_by_global_norm_per_member(max_norm: Scalar) -> GradientTransformation:
    """:func:`clip_by_global_norm` for an ensemble: each member clipped by its own global
    norm, in one call.

    Dim 0 of every leaf is the member axis (the layout of :class:`~funcmodels.nn.Stack`
    params and of an ensemble made by ``vmap(fm.init)``); member ``i``'s updates
    ``[u[i] for u in leaves]`` are scaled by ``max_norm / norm_i`` where their global
    2-norm ``norm_i`` is at least ``max_norm``. The result equals ``vmap`` over the members
    of ``clip_by_global_norm(max_norm)``; ``clip_by_global_norm`` itself clips all members
    together, as one model. (No optax counterpart: optax's ensembles are vmapped.)

    Arguments:
        max_norm: the largest global norm let through per member, ``>= 0``.

    Returns:
        A GradientTransformation keeping no state; its ``update`` raises ``ValueError``
            for a leaf without dim 0 or with another size there than the first leaf (its
            position and shape named).
    """
    where = "fm.optim.clip_by_global_norm_per_member"
    bound = number(where, "max_norm", max_norm)

    def fn(us, state, ps, spec, own):
        return _clipped_members(us, bound, where), state, True

    return flat_transformation(where, init_empty_state, fn)


def _clipped_members(us: Tensors, bound: Scalar, where: str) -> Tensors:
    """Each member's updates (dim 0 of every leaf) scaled by ``max_norm / norm`` where
    its own global norm ``norm`` is at least ``max_norm``."""
    if not us:
        return us
    n = us[0].shape[0] if us[0].dim() else None
    for i, u in enumerate(us):
        if u.dim() == 0 or u.shape[0] != n:
            got = "no dim 0" if u.dim() == 0 else f"{u.shape[0]} members on dim 0"
            first = f", the first leaf {n}" if n is not None and i else ""
            raise ValueError(
                f"{where}: leaf {i} (shape {tuple(u.shape)}) has {got}{first}; every leaf "
                "must hold the members on dim 0"
            )
    norms = torch.stack([torch.linalg.vector_norm(u.reshape(n, -1), dim=1) for u in us])
    norm = torch.linalg.vector_norm(norms, dim=0)
    factor = torch.where(norm < bound, torch.ones_like(norm), bound / norm)
    return [u * factor.to(u.dtype).reshape(n, *[1] * (u.dim() - 1)) for u in us]


def scale_by_trust_ratio(
    min_norm: Scalar = 0.0, trust_coefficient: Scalar = 1.0, eps: Scalar = 0.0
) -> GradientTransformation:
    """LAMB's layer-wise scaling: each update times ``trust_coefficient * |param| /
    (|update| + eps)``, both norms floored at ``min_norm``; 1 where either norm is 0.

    Arguments:
        min_norm: the floor of both norms.
        trust_coefficient: a factor on the ratio.
        eps: added to the update's norm.

    Returns:
        A GradientTransformation needing the params, keeping no state.

    Raises:
        ValueError: from ``update`` without the params.
    """
    where = "fm.optim.scale_by_trust_ratio"
    min_norm = number(where, "min_norm", min_norm)
    coefficient = number(where, "trust_coefficient", trust_coefficient)
    eps = number(where, "eps", eps)

    def fn(us, state, ps, spec, own):
        def math(ops, dtype, device, us, ps):
            if not us:  # no leaves: nothing to stack
                return ([],)
            floor = scalar(min_norm, dtype, device)
            pn = torch.stack(ops.norms(cast(ps, [dtype] * len(ps)))).clamp(min=floor)
            un = torch.stack(ops.norms(cast(us, [dtype] * len(us)))).clamp(min=floor)
            c, e = scalar(coefficient, dtype, device), scalar(eps, dtype, device)
            ratio = c * pn / (un + e)
            ratio = torch.where((pn == 0) | (un == 0), torch.ones_like(ratio), ratio)
            return (ops.mul(us, list(ratio.unbind())),)

        hyper = (min_norm, coefficient, eps)
        return grouped(math, promoted(us, ps), us, ps, hyper=hyper)[0], state, True

    return flat_transformation(where, init_empty_state, fn, needs_params=True)


def scale_by_sign() -> GradientTransformation:
    """Replace each update element by its sign (signSGD's direction).

    Returns:
        A GradientTransformation keeping no state.
    """

    def fn(us, state, ps, spec, own):
        signs = grouped(lambda ops, d, dev, us: (ops.sign(us),), [u.dtype for u in us], us)
        return signs[0], state, True

    return flat_transformation("fm.optim.scale_by_sign", init_empty_state, fn)
