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
    _need_grad,
    check_state,
    count_like,
    identity,
    is_schedule,
    leaves_of,
    number,
    owning,
)
from ._ops import cast, grouped, multi_tensor_allowed, scalar
from ._wrappers import masked


class ScaleByScheduleState(NamedTuple):
    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""


class WeightDecayScheduleState(NamedTuple):
    count: torch.Tensor
    """updates done, a 0-dim int64 tensor (the weight decay is a schedule of it)"""


def _scaled(updates: Any, factor: Any, in_place: bool) -> Any:
    """``updates * factor`` (a number or 0-dim tensor, cast to each leaf's dtype as optax
    casts it); written into ``updates`` with ``in_place``."""
    us, spec = pytree.tree_flatten(updates)

    def math(ops, dtype, device, us):
        s = scalar(factor, dtype, device)
        return (ops.mul_(us, s) if in_place else ops.mul(us, s),)

    (out,) = grouped(math, [u.dtype for u in us], us)
    return pytree.tree_unflatten(out, spec)


def scale(step_size: Scalar) -> GradientTransformation:
    """Multiply the updates by ``step_size`` (any sign; a number or a 0-dim tensor)."""
    step_size = number("fm.optim.scale", "step_size", step_size, lo=-float("inf"))

    def update(updates, state, params=None):
        return _scaled(updates, step_size, False), state

    def in_place(updates, state, params=None):
        return _scaled(updates, step_size, not _need_grad(step_size)), state

    return GradientTransformation(lambda params: EmptyState(), owning(update, in_place))


def scale_by_schedule(step_size_fn) -> GradientTransformation:
    """Multiply the updates by ``step_size_fn(count)``, ``count`` the updates done before
    (a 0-dim int64 tensor); the value is cast to each leaf's dtype."""
    if not callable(step_size_fn):
        raise TypeError(f"fm.optim.scale_by_schedule: expected a schedule, got {step_size_fn!r}")

    def init(params):
        return ScaleByScheduleState(count_like(params))

    def update(updates, state, params=None, in_place=False):
        check_state(state, ScaleByScheduleState, "fm.optim.scale_by_schedule")
        factor = step_size_fn(state.count)
        scaled = _scaled(updates, factor, in_place and not _need_grad(factor))
        return scaled, ScaleByScheduleState(state.count + 1)

    def update_in_place(updates, state, params=None):
        return update(updates, state, params, in_place=True)

    return GradientTransformation(init, owning(update, update_in_place))


def scale_by_learning_rate(
    learning_rate: Scalar | None = None, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply the updates by ``-learning_rate`` (``+`` with ``flip_sign=False``).

    ``learning_rate``: a number, a 0-dim tensor, a schedule of the step count, or ``None``
    (no scaling).
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
    """
    where = "fm.optim.add_decayed_weights"
    wd = number(where, "weight_decay", weight_decay, schedule=True)
    if mask is not None:
        return masked(add_decayed_weights(wd), mask)
    scheduled = is_schedule(wd)

    def init(params):
        return WeightDecayScheduleState(count_like(params)) if scheduled else EmptyState()

    def update(updates, state, params=None, in_place=False):
        us, ps, spec = leaves_of(updates, params, where, need_params=True)
        if scheduled:
            check_state(state, WeightDecayScheduleState, where)
            value, state = wd(state.count), WeightDecayScheduleState(state.count + 1)
        else:
            value = wd
        if isinstance(value, float) and value == 0.0:
            return updates, state
        in_place = in_place and not _need_grad(value)
        dtypes = [torch.promote_types(u.dtype, p.dtype) for u, p in zip(us, ps, strict=True)]

        def math(ops, dtype, device, us, ps):
            s = scalar(value, dtype, device)
            fresh = [u.dtype != dtype for u in us]  # a cast below makes a tensor of ours
            us, ps = cast(us, [dtype] * len(us)), cast(ps, [dtype] * len(ps))
            if in_place or (us and all(fresh)):
                return (ops.add_scaled_(us, ps, s),)
            return (ops.add_scaled(us, ps, s),)

        (out,) = grouped(math, dtypes, us, ps)
        return pytree.tree_unflatten(out, spec), state

    def update_in_place(updates, state, params=None):
        return update(updates, state, params, in_place=True)

    return GradientTransformation(init, owning(update, update_in_place))


def clip(max_delta: Scalar) -> GradientTransformation:
    """Clamp every update element to ``[-max_delta, max_delta]``."""
    bound = number("fm.optim.clip", "max_delta", max_delta)

    def update(updates, state, params=None):
        us, spec = pytree.tree_flatten(updates)

        def math(ops, dtype, device, us):
            b = scalar(bound, dtype, device)
            return (ops.clamp(us, -b, b),)

        (out,) = grouped(math, [u.dtype for u in us], us)
        return pytree.tree_unflatten(out, spec), state

    return GradientTransformation(lambda params: EmptyState(), owning(update))


def global_norm(updates: Any) -> torch.Tensor:
    """The 2-norm of all update elements together: the norm of the leaves' norms (as
    ``clip_grad_norm_`` computes it), a 0-dim tensor."""
    leaves = pytree.tree_leaves(updates)
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
    a relative difference of ``1e-6 / norm``)."""
    bound = number("fm.optim.clip_by_global_norm", "max_norm", max_norm)

    def factor(updates):
        norm = global_norm(updates)
        return torch.where(norm < bound, torch.ones_like(norm), bound / norm)

    def update(updates, state, params=None):
        return _scaled(updates, factor(updates), False), state

    def in_place(updates, state, params=None):
        f = factor(updates)
        return _scaled(updates, f, not _need_grad(f)), state

    return GradientTransformation(lambda params: EmptyState(), owning(update, in_place))


def scale_by_trust_ratio(
    min_norm: Scalar = 0.0, trust_coefficient: Scalar = 1.0, eps: Scalar = 0.0
) -> GradientTransformation:
    """LAMB's layer-wise scaling: each update times ``trust_coefficient * |param| /
    (|update| + eps)``, both norms floored at ``min_norm``; 1 where either norm is 0.

    Raises:
        ValueError: from ``update`` without the params.
    """
    where = "fm.optim.scale_by_trust_ratio"
    min_norm = number(where, "min_norm", min_norm)
    coefficient = number(where, "trust_coefficient", trust_coefficient)
    eps = number(where, "eps", eps)

    def update(updates, state, params=None):
        us, ps, spec = leaves_of(updates, params, where, need_params=True)
        dtypes = [torch.promote_types(u.dtype, p.dtype) for u, p in zip(us, ps, strict=True)]

        def math(ops, dtype, device, us, ps):
            floor = scalar(min_norm, dtype, device)
            pn = torch.stack(ops.norms(cast(ps, [dtype] * len(ps)))).clamp(min=floor)
            un = torch.stack(ops.norms(cast(us, [dtype] * len(us)))).clamp(min=floor)
            c, e = scalar(coefficient, dtype, device), scalar(eps, dtype, device)
            ratio = c * pn / (un + e)
            ratio = torch.where((pn == 0) | (un == 0), torch.ones_like(ratio), ratio)
            return (ops.mul(us, list(ratio.unbind())),)

        (out,) = grouped(math, dtypes, us, ps)
        return pytree.tree_unflatten(out, spec), state

    return GradientTransformation(lambda params: EmptyState(), update)


def scale_by_sign() -> GradientTransformation:
    """Replace each update element by its sign (signSGD's direction)."""

    def update(updates, state, params=None):
        us, spec = pytree.tree_flatten(updates)
        (out,) = grouped(lambda ops, d, dev, us: (ops.sign(us),), [u.dtype for u in us], us)
        return pytree.tree_unflatten(out, spec), state

    return GradientTransformation(lambda params: EmptyState(), owning(update))
