"""L-BFGS, as optax's: ``scale_by_lbfgs`` (the two-loop recursion over a ring buffer of
the last ``memory_size`` differences of params and gradients) and ``lbfgs`` (that, a
sign flip or a learning rate, and a line search)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Scalar,
    chain,
    check_state,
    flatten,
    flatten_like,
    identity,
    unflatten,
)
from ._linesearch import first_device, value_dtype, vdot
from ._linesearch_zoom import scale_by_zoom_linesearch
from ._transforms import scale, scale_by_learning_rate


class ScaleByLBFGSState(NamedTuple):
    """The state of :func:`scale_by_lbfgs`."""

    count: torch.Tensor
    """updates done, a 0-dim int64 tensor"""
    params: Any
    """the params of the last update"""
    updates: Any
    """the updates (gradients) of the last update"""
    diff_params_memory: Any
    """the last ``memory_size`` differences of params, each leaf stacked on a new dim 0"""
    diff_updates_memory: Any
    """the last ``memory_size`` differences of updates, stacked the same way"""
    weights_memory: torch.Tensor
    """``1 / <diff updates, diff params>`` of each, shape ``(memory_size,)``"""


def _precondition(us, dws, dus, rhos, gamma, memory_idx) -> list[torch.Tensor]:
    """The two-loop recursion (Nocedal and Wright, Algorithm 7.4): the updates times the
    inverse Hessian approximation held in the memory, oldest entry at ``memory_idx``."""
    m = rhos.shape[0]
    order = [int(i) for i in (memory_idx + torch.arange(m)) % m]
    vec, alphas = list(us), {}
    for i in reversed(order):
        alpha = rhos[i] * vdot([d[i] for d in dws], vec)
        vec = [(v - alpha.to(v.dtype) * d[i]).to(v.dtype) for v, d in zip(vec, dus, strict=True)]
        alphas[i] = alpha
    vec = [(gamma.to(v.dtype) * v).to(v.dtype) for v in vec]
    for i in order:
        beta = rhos[i] * vdot([d[i] for d in dus], vec)
        step = alphas[i] - beta
        vec = [(v + step.to(v.dtype) * d[i]).to(v.dtype) for v, d in zip(vec, dws, strict=True)]
    return vec


def _identity_scale(count, us, d_params, d_updates, dtype) -> torch.Tensor:
    """gamma: ``<dy, ds> / <dy, dy>`` of the newest pair, and at the first update
    ``min(1, 1 / |u|)`` (the first step stays in the unit ball), as optax's."""
    numerator = vdot(d_updates, d_params).to(dtype)
    denominator = vdot(d_updates, d_updates).to(dtype)
    one = torch.ones((), dtype=dtype, device=numerator.device)
    gamma = torch.where(denominator > 0.0, numerator / denominator, one)
    capped = torch.minimum(one, 1.0 / torch.sqrt(vdot(us, us).to(dtype)))
    return torch.where(count > 0, gamma, capped)


def _remember(state: ScaleByLBFGSState, ps: list, us: list, spec: Any, memory_size: int):
    """The newest differences of params and updates (zero at the first update) and the
    memory with them in the slot of the previous update: ``(d_params, d_updates, params
    memory leaves, updates memory leaves, weights)``."""
    count, dtype = state.count, state.weights_memory.dtype
    d_params = [p - q for p, q in zip(ps, flatten_like(state.params, spec, "state"), strict=True)]
    d_updates = [u - v for u, v in zip(us, flatten_like(state.updates, spec, "state"), strict=True)]
    inner = vdot(d_updates, d_params).to(dtype)
    weight = torch.where(inner == 0.0, torch.zeros_like(inner), 1.0 / inner)
    started = count > 0
    d_params = [torch.where(started, d, torch.zeros_like(d)) for d in d_params]
    d_updates = [torch.where(started, d, torch.zeros_like(d)) for d in d_updates]
    weight = torch.where(started, weight, torch.zeros_like(weight))
    prev = ((count - 1) % memory_size).reshape(1)

    def push(memory, new):
        leaves = flatten_like(memory, spec, "the L-BFGS memory")
        return [
            m.index_copy(0, prev, d.unsqueeze(0).to(m.dtype))
            for m, d in zip(leaves, new, strict=True)
        ]

    dws, dus = push(state.diff_params_memory, d_params), push(state.diff_updates_memory, d_updates)
    rhos = state.weights_memory.index_copy(0, prev, weight.reshape(1))
    return d_params, d_updates, dws, dus, rhos


def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    """The L-BFGS direction, as optax's: the updates (gradients) times an approximation
    of the inverse Hessian built from the last ``memory_size`` differences of params and
    updates. The memory is updated first, with the params and updates of this call, so
    that a line search after it (see :func:`lbfgs`) chooses the step.

    Arguments:
        memory_size: how many differences the approximation keeps.
        scale_init_precond: start from ``gamma * I``, ``gamma = <dy, ds> / <dy, dy>``
            of the newest pair (``min(1, 1 / |u|)`` at the first update); else from ``I``.

    Returns:
        A GradientTransformation; its state is a :class:`ScaleByLBFGSState` (the memory
            holds ``2 * memory_size`` copies of the params).

    Raises:
        ValueError: ``memory_size < 1``; (update) no params.
    """
    where = "fm.optim.scale_by_lbfgs"
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"{where}: memory_size must be an int >= 1, got {memory_size!r}")

    def init(params):
        leaves, spec = flatten(params)
        dtype = value_dtype(leaves)
        stacked = [
            torch.zeros((memory_size, *p.shape), dtype=p.dtype, device=p.device) for p in leaves
        ]
        zeros = [torch.zeros_like(p) for p in leaves]
        return ScaleByLBFGSState(
            count=torch.zeros((), dtype=torch.int64, device=first_device(leaves)),
            params=unflatten(zeros, spec),
            updates=unflatten([z.clone() for z in zeros], spec),
            diff_params_memory=unflatten(stacked, spec),
            diff_updates_memory=unflatten([s.clone() for s in stacked], spec),
            weights_memory=torch.zeros(memory_size, dtype=dtype, device=first_device(leaves)),
        )

    def update(updates, state, params=None):
        check_state(state, ScaleByLBFGSState, where)
        if params is None:
            raise ValueError(f"{where}: needs the params; call update(updates, state, params)")
        ps, spec = flatten(params)
        us = flatten_like(updates, spec, "updates")
        dtype, count = state.weights_memory.dtype, state.count
        d_params, d_updates, dws, dus, rhos = _remember(state, ps, us, spec, memory_size)
        if scale_init_precond:
            gamma = _identity_scale(count, [u.detach() for u in us], d_params, d_updates, dtype)
        else:
            gamma = torch.ones((), dtype=dtype, device=rhos.device)
        out = _precondition(us, dws, dus, rhos, gamma, count % memory_size)
        new_state = ScaleByLBFGSState(
            count + 1, params, updates, unflatten(dws, spec), unflatten(dus, spec), rhos
        )
        return unflatten(out, spec), new_state

    return GradientTransformation(init, update)


_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(
    learning_rate: Scalar | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _ZOOM,
) -> GradientTransformationExtraArgs:
    """L-BFGS with a line search, as optax's: ``chain(scale_by_lbfgs(memory_size,
    scale_init_precond), scale(-1.0) or scale_by_learning_rate(learning_rate),
    linesearch or identity())``.

    With the default zoom line search, ``update`` takes the loss as optax's does:
    ``opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)``, and
    ``value_and_grad_from_state(loss)(params, state=state)`` reuses the value and
    gradient the search found (a full-batch loop, eager mode):

    ```python
    def loss(p):
        x = p["x"]
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    params = {"x": torch.tensor([-1.2, 1.0], dtype=torch.float64)}
    opt = fm.optim.lbfgs()
    state = opt.init(params)
    value_and_grad = fm.optim.value_and_grad_from_state(loss)
    for _ in range(40):
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        params = fm.optim.apply_updates(params, updates)
    assert loss(params) < 1e-8
    ```

    Not ``torch.optim.LBFGS``, a different algorithm (its own line search and stopping
    rules, a closure that it calls several times per ``step``).

    Arguments:
        learning_rate: a fixed scale or schedule of the direction; ``None`` (the
            default) leaves the step size to the line search.
        memory_size: how many differences of params and gradients are kept.
        scale_init_precond: as :func:`scale_by_lbfgs`'s.
        linesearch: a line search such as :func:`scale_by_zoom_linesearch` (the
            default: 20 steps, initial guess 1) or :func:`scale_by_backtracking_linesearch`,
            or ``None`` for none.

    Returns:
        A :class:`GradientTransformationExtraArgs`; its state is the tuple of the three
            pieces' states.

    Raises:
        ValueError: ``memory_size < 1``.
    """
    base = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    search = identity() if linesearch is None else linesearch
    return chain(scale_by_lbfgs(memory_size, scale_init_precond), base, search)
