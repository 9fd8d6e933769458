"""Functional optimisers: pairs of pure functions over pytrees of tensors.

An optimiser is a :class:`GradientTransformation` ``(init, update)``::

    opt = fm.optim.adam(1e-3)
    opt_state = opt.init(params)
    grads = torch.func.grad(loss)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = fm.optim.apply_updates(params, updates)

Params, grads, updates and optimiser state are pytrees (``torch.utils._pytree``), so a
training step composes with ``vmap`` (train an ensemble at once) and ``torch.compile``.
Nothing is updated in place: ``update`` returns new tensors and a new state. The step
count is a tensor, never a Python int, so it can be traced and batched.

The arithmetic follows :mod:`torch.optim` (``SGD``, ``Adam``, ``AdamW``) operation for
operation; results agree with it up to floating-point rounding. The ops run leaf by leaf:
the multi-tensor ``torch._foreach_*`` kernels have no vmap batching rule and were not
faster on CPU, and under ``torch.compile`` the per-leaf ops are fused anyway.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._core import describe_mismatch
from ._tree import Params, State

__all__ = [
    "AdamState",
    "GradientTransformation",
    "SgdState",
    "adam",
    "adamw",
    "apply_updates",
    "sgd",
]


class GradientTransformation(NamedTuple):
    """An optimiser as two pure functions.

    ``init(params) -> opt_state``; ``update(grads, opt_state, params) -> (updates,
    new_opt_state)``, where ``updates`` has the structure of ``params`` and is added to
    them by :func:`apply_updates`.
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]


class SgdState(NamedTuple):
    """State of :func:`sgd`."""

    momentum: Any
    """momentum buffers, a pytree like the params; ``()`` when ``momentum == 0``"""


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`."""

    step: torch.Tensor
    """number of updates done, a 0-dim int64 tensor"""
    mu: Any
    """first-moment estimates, a pytree like the params"""
    nu: Any
    """second-moment estimates, a pytree like the params"""


# -- pytree helpers --------------------------------------------------------------------


def _flatten_like(tree: Any, spec: pytree.TreeSpec, what: str) -> list[torch.Tensor]:
    leaves, got = pytree.tree_flatten(tree)
    if got != spec:
        models = _model_difference(spec, got)
        detail = (
            f"they were made for a different model: {models}"
            if models is not None
            else f"expected {_describe(spec)}, got {_describe(got)}"
        )
        raise ValueError(f"fm.optim: {what} do not have the structure of the params: {detail}")
    return leaves


def _model_difference(want: pytree.TreeSpec, got: pytree.TreeSpec) -> str | None:
    """Where two spec trees first differ, by layer path, when the first difference of
    the two structures is between Params (or State) of different specs."""
    stack = [(want, got)]
    while stack:
        a, b = stack.pop()
        if a == b:
            continue
        if a.type is b.type and a.type in (Params, State):
            return describe_mismatch(a.context[0], b.context[0])
        if a.type is not b.type or a.num_children != b.num_children or a.context != b.context:
            return None
        stack.extend(reversed(list(zip(a.children_specs, b.children_specs, strict=True))))
    return None


def _describe(spec: pytree.TreeSpec) -> str:
    if spec.is_leaf():
        return "a single tensor"
    skeleton = pytree.tree_unflatten([None] * spec.num_leaves, spec)
    paths = [pytree.keystr(k) for k, _ in pytree.tree_flatten_with_path(skeleton)[0]]
    return f"{spec.type.__name__} with leaves {paths}"


def _check_state(state: object, cls: type, where: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"{where}: expected the {cls.__name__} made by this optimiser's init, got "
            f"{type(state).__name__}"
        )


def _scalar_dtype(leaves: list[torch.Tensor]) -> torch.dtype:
    """Dtype for step-dependent scalars: float64 when any leaf is, else float32.

    A 0-dim tensor does not promote the leaves it multiplies, so one dtype serves all.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in leaves) else torch.float32


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates``, leaf by leaf, as new tensors of the params' dtypes.

    Arguments:
        params: a pytree of tensors (:class:`funcmodels.Params` included).
        updates: from an optimiser's ``update``, same structure.

    Returns:
        A new pytree of the type of ``params`` (for Params: the same spec).
    """
    leaves, spec = pytree.tree_flatten(params)
    ups = _flatten_like(updates, spec, "updates")
    new = [(p + u).to(p.dtype) for p, u in zip(leaves, ups, strict=True)]
    return pytree.tree_unflatten(new, spec)


# -- argument checks -------------------------------------------------------------------


def _non_negative(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _betas(where: str, betas: object) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    out = []
    for i, b in enumerate(betas):
        b = _non_negative(where, f"betas[{i}]", b)
        if b >= 1:
            raise ValueError(f"{where}: betas[{i}] must be in [0, 1), got {b!r}")
        out.append(b)
    return out[0], out[1]


# -- optimisers ------------------------------------------------------------------------


def sgd(
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Stochastic gradient descent, as :class:`torch.optim.SGD` (no dampening).

    ``g = grad + weight_decay * param``; with momentum ``buf = momentum * buf + g`` (``buf``
    starts at ``g``) and ``g = buf``, or ``g + momentum * buf`` with ``nesterov``; the
    update is ``-lr * g``.

    Arguments:
        lr: learning rate, ``>= 0``.
        momentum: momentum factor, ``>= 0``.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty coefficient, ``>= 0``.

    Returns:
        A :class:`GradientTransformation` whose state is :class:`SgdState`.
    """
    where = "fm.optim.sgd"
    lr = _non_negative(where, "lr", lr)
    momentum = _non_negative(where, "momentum", momentum)
    weight_decay = _non_negative(where, "weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{where}: nesterov must be a bool, got {nesterov!r}")
    if nesterov and momentum == 0:
        raise ValueError(f"{where}: nesterov=True needs momentum > 0, got momentum={momentum}")

    def init(params: Any) -> SgdState:
        if momentum == 0:
            return SgdState(())
        return SgdState(pytree.tree_map(torch.zeros_like, params))

    def update(grads: Any, state: SgdState, params: Any) -> tuple[Any, SgdState]:
        _check_state(state, SgdState, where)
        ps, spec = pytree.tree_flatten(params)
        gs = _flatten_like(grads, spec, "grads")
        if weight_decay:
            gs = [g.add(p, alpha=weight_decay) for g, p in zip(gs, ps, strict=True)]
        new_state = state
        if momentum:
            bufs = _flatten_like(state.momentum, spec, "momentum buffers")
            # A zero buffer makes the first step buf = g exactly, as torch's clone does.
            bufs = [(b * momentum).add(g) for b, g in zip(bufs, gs, strict=True)]
            if nesterov:
                gs = [g.add(b, alpha=momentum) for g, b in zip(gs, bufs, strict=True)]
            else:
                gs = bufs
            new_state = SgdState(pytree.tree_unflatten(bufs, spec))
        return pytree.tree_unflatten([g * -lr for g in gs], spec), new_state

    return GradientTransformation(init, update)


def _adam_like(
    where: str,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> GradientTransformation:
    lr = _non_negative(where, "lr", lr)
    b1, b2 = _betas(where, betas)
    eps = _non_negative(where, "eps", eps)
    weight_decay = _non_negative(where, "weight_decay", weight_decay)

    def init(params: Any) -> AdamState:
        leaves = pytree.tree_leaves(params)
        device = leaves[0].device if leaves else None
        step = torch.zeros((), dtype=torch.int64, device=device)
        return AdamState(
            step,
            pytree.tree_map(torch.zeros_like, params),
            pytree.tree_map(torch.zeros_like, params),
        )

    def correction(beta: float, step: torch.Tensor) -> torch.Tensor | float:
        """``1 - beta**step`` without cancellation: ``-expm1(step * log(beta))``."""
        if beta == 0:
            return 1.0
        return -torch.expm1(step * math.log(beta))

    def update(grads: Any, state: AdamState, params: Any) -> tuple[Any, AdamState]:
        _check_state(state, AdamState, where)
        ps, spec = pytree.tree_flatten(params)
        gs = _flatten_like(grads, spec, "grads")
        mus = _flatten_like(state.mu, spec, "first moments")
        nus = _flatten_like(state.nu, spec, "second moments")
        step = state.step + 1
        s = step.to(_scalar_dtype(ps))
        step_size = -lr / correction(b1, s)
        bc2_sqrt = correction(b2, s) ** 0.5
        ups, new_mus, new_nus = [], [], []
        for p, g, m, v in zip(ps, gs, mus, nus, strict=True):
            if weight_decay and not decoupled:
                g = g.add(p, alpha=weight_decay)
            m = torch.lerp(m, g, 1 - b1)
            v = torch.addcmul(v * b2, g, g, value=1 - b2)
            u = (m / (v.sqrt() / bc2_sqrt + eps)) * step_size
            if weight_decay and decoupled:
                u = u.add(p, alpha=-lr * weight_decay)
            ups.append(u)
            new_mus.append(m)
            new_nus.append(v)
        new_state = AdamState(
            step, pytree.tree_unflatten(new_mus, spec), pytree.tree_unflatten(new_nus, spec)
        )
        return pytree.tree_unflatten(ups, spec), new_state

    return GradientTransformation(init, update)


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam, as :class:`torch.optim.Adam` (``weight_decay`` is an L2 term in the gradient).

    Arguments:
        lr: learning rate, ``>= 0``.
        betas: decay rates of the first and second moment estimates, each in ``[0, 1)``.
        eps: added to the denominator, ``>= 0``.
        weight_decay: L2 penalty coefficient, ``>= 0``.

    Returns:
        A :class:`GradientTransformation` whose state is :class:`AdamState`.
    """
    return _adam_like("fm.optim.adam", lr, betas, eps, weight_decay, decoupled=False)


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> GradientTransformation:
    """AdamW, as :class:`torch.optim.AdamW`: Adam with decoupled weight decay.

    The update adds ``-lr * weight_decay * param`` to Adam's, instead of an L2 term in the
    gradient.

    Arguments:
        lr: learning rate, ``>= 0``.
        betas: decay rates of the first and second moment estimates, each in ``[0, 1)``.
        eps: added to the denominator, ``>= 0``.
        weight_decay: decoupled decay coefficient, ``>= 0``.

    Returns:
        A :class:`GradientTransformation` whose state is :class:`AdamState`.
    """
    return _adam_like("fm.optim.adamw", lr, betas, eps, weight_decay, decoupled=True)
