"""Line searches that call the loss inside ``update`` (optax's): the backtracking (Armijo)
search, the tree arithmetic the searches share, and :func:`value_and_grad_from_state`.

A line search is a loop whose length depends on the values it meets: it runs in eager
mode, one host read per trial step (as ``torch.optim.LBFGS``'s). Inside ``torch.func``
transforms (``vmap`` has no single truth value) it refuses to run; under
``torch.compile`` dynamo breaks the graph at each of its tests, so the search runs
eagerly between compiled pieces (``fullgraph=True`` fails; see NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch._C._functorch import maybe_current_level

from ._base import (
    GradientTransformationExtraArgs,
    check_state,
    flatten,
    flatten_like,
    unflatten,
)
from ._extra_args import extract_fns_kwargs

# -- what the searches share --------------------------------------------------------------


def value_dtype(leaves: list[torch.Tensor]) -> torch.dtype:
    """The dtype of a search's scalars: the real dtype of the first param leaf (optax's;
    torch's default dtype for a tree with no leaves)."""
    if not leaves:
        return torch.get_default_dtype()
    dtype = leaves[0].dtype
    return dtype.to_real() if dtype.is_complex else dtype


def vdot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """The real inner product of two lists of leaves, summed leaf after leaf from 0."""
    total = torch.zeros((), dtype=xs[0].dtype if xs else torch.float32)
    for x, y in zip(xs, ys, strict=True):
        total = total + torch.dot(x.reshape(-1), y.reshape(-1).to(x.dtype))
    return total


def add_scale(xs: list[torch.Tensor], s: torch.Tensor, ys: list[torch.Tensor]) -> list:
    """``x + s * y`` leaf by leaf, each in ``x``'s dtype (``s`` never promotes a leaf)."""
    return [(x + s.to(x.dtype) * y).to(x.dtype) for x, y in zip(xs, ys, strict=True)]


def first_device(leaves: list[torch.Tensor]) -> torch.device | None:
    """The device of the first leaf (``None`` for a tree with no leaves)."""
    return leaves[0].device if leaves else None


def needs_loss(where: str, value: Any, grad: Any, value_fn: Any) -> None:
    """A search's ``update`` needs the loss: ``value=``, ``grad=`` and ``value_fn=``."""
    if value is None or grad is None or value_fn is None:
        raise TypeError(
            f"{where}: update needs the keyword arguments value= (the loss at params), "
            "grad= (its gradient) and value_fn= (the loss function); see "
            "fm.optim.value_and_grad_from_state"
        )


def check_eager(where: str) -> None:
    """Refuse where a data-dependent loop cannot run: under ``torch.func`` transforms
    (``vmap`` has no single truth value)."""
    if maybe_current_level() is not None:
        raise ValueError(
            f"{where}: a line search is a loop whose length depends on the values it meets; "
            "it cannot run under torch.func transforms (vmap, grad). Call update outside "
            "them and vmap or compile the loss given as value_fn instead."
        )


def check_search_call(where: str, params, value, grad, value_fn, extra_args: dict) -> dict:
    """The checks a search's ``update`` makes before searching (the loss given, eager
    mode, the params given, extra arguments all ``value_fn``'s); returns the extra
    arguments ``value_fn`` takes."""
    needs_loss(where, value, grad, value_fn)
    check_eager(where)
    if params is None:
        raise ValueError(f"{where}: needs the params; call update(updates, state, params)")
    return split_value_fn_kwargs(where, value_fn, extra_args)


def split_value_fn_kwargs(where: str, value_fn: Callable, extra_args: dict) -> dict:
    """The extra arguments ``value_fn`` takes; any other is an error (optax's)."""
    if not callable(value_fn):
        raise TypeError(f"{where}: value_fn must be callable, got {type(value_fn).__name__}")
    (fn_kwargs,), rest = extract_fns_kwargs((value_fn,), extra_args)
    if rest:
        raise TypeError(
            f"{where}: unexpected keyword arguments {sorted(rest)} passed to update; they "
            "are not arguments of value_fn (every extra keyword must be one)"
        )
    return fn_kwargs


def scalar(value: Any, dtype: torch.dtype, device: torch.device, where: str) -> torch.Tensor:
    """``value`` (the loss) as a 0-dim tensor of ``dtype``."""
    t = torch.as_tensor(value).detach()
    if t.numel() != 1:
        raise ValueError(f"{where}: the loss value must be a scalar, got shape {tuple(t.shape)}")
    return t.reshape(()).to(dtype=dtype, device=device)


# -- backtracking -------------------------------------------------------------------------


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last backtracking search did (for debugging), as optax's."""

    num_linesearch_steps: torch.Tensor
    """trial steps of the last search (int64)"""
    decrease_error: torch.Tensor
    """how far the accepted step misses the sufficient decrease (0: met)"""


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """The state of :func:`scale_by_backtracking_linesearch`."""

    learning_rate: torch.Tensor
    """the step size the last search found"""
    value: torch.Tensor
    """the loss at the last trial step (``inf`` before the first search)"""
    grad: Any
    """the gradient there, a tree like the params (``store_grad=True``), else ``None``"""
    info: BacktrackingLinesearchInfo
    """what the last search did"""


def _decrease_error(lr, slope, value, new_value, slope_rtol, rtol):
    error = new_value - (1.0 + rtol) * value - lr * slope_rtol * slope
    error = torch.where(torch.isnan(error), torch.full_like(error, float("inf")), error)
    return torch.clamp_min(error, 0.0)


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.8,
    increase_factor: float = 1.5,
    max_learning_rate: float = 1.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Backtracking line search (Armijo's sufficient decrease), as optax's: scales the
    updates ``u`` by the largest tried ``lr`` with ``f(w + lr u) <= (1 + rtol) f(w) + lr
    slope_rtol <u, grad f(w)> + atol``, trying ``min(increase_factor * last lr,
    max_learning_rate)`` first and multiplying by ``decrease_factor`` after each miss.

    ``update(updates, state, params, *, value, grad, value_fn, **extra_args)``: the loss
    ``value`` and its gradient ``grad`` at ``params``, ``value_fn(params, **kwargs)`` the
    loss (a 0-dim tensor), and the extra arguments ``value_fn`` takes (data). A
    data-dependent loop: refused under ``torch.func`` transforms, run eagerly between
    graph breaks under ``torch.compile``. Without a sufficient decrease in
    ``max_backtracking_steps + 1`` trials the last step size is used, and 0 where the
    loss was not finite.

    Arguments:
        max_backtracking_steps: the most decreases of the step size per search.
        slope_rtol: the fraction of the linear decrease asked for.
        decrease_factor: the step size's factor after a miss.
        increase_factor: the factor on the last step size for the first trial.
        max_learning_rate: the largest step size tried.
        atol: the absolute tolerance of the criterion.
        rtol: the relative tolerance of the criterion (on the value).
        store_grad: also compute the gradient at the accepted step, kept in the state
            for :func:`value_and_grad_from_state`.
        verbose: print what went wrong when a search fails.

    Returns:
        A :class:`GradientTransformationExtraArgs`; its state is a
            :class:`ScaleByBacktrackingLinesearchState`.

    Raises:
        TypeError: (update) an extra argument ``value_fn`` does not take, or no
            ``value``, ``grad`` or ``value_fn``.
        ValueError: (update) inside a ``torch.func`` transform.
    """
    where = "fm.optim.scale_by_backtracking_linesearch"

    def init(params):
        leaves, spec = flatten(params)
        dtype = value_dtype(leaves)
        inf = torch.full((), float("inf"), dtype=dtype, device=first_device(leaves))
        grad = unflatten([torch.zeros_like(p) for p in leaves], spec) if store_grad else None
        info = BacktrackingLinesearchInfo(torch.zeros((), dtype=torch.int64), inf.clone())
        return ScaleByBacktrackingLinesearchState(torch.ones_like(inf), inf, grad, info)

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        check_state(state, ScaleByBacktrackingLinesearchState, where)
        if not flatten(updates)[0]:  # a tree with no leaves: nothing to search
            return updates, state
        fn_kwargs = check_search_call(where, params, value, grad, value_fn, extra_args)
        ps, spec = flatten(params)
        us = flatten_like(updates, spec, "updates")
        dtype, device = state.learning_rate.dtype, state.learning_rate.device
        value = scalar(value, dtype, device, where)
        slope = vdot(us, flatten_like(grad, spec, "grad")).to(dtype)
        lr = torch.clamp_max(increase_factor * state.learning_rate, max_learning_rate)
        new_value, new_grad = value, None
        error, steps = torch.full_like(value, float("inf")), 0
        while not bool(error <= atol) and steps <= max_backtracking_steps:
            if steps > 0:
                lr = decrease_factor * lr
            trial = unflatten(add_scale(ps, lr, us), spec)
            if store_grad:
                out, vjp = torch.func.vjp(lambda p: value_fn(p, **fn_kwargs), trial)
                new_value = scalar(out, dtype, device, where)
                error = _decrease_error(lr, slope, value, new_value, slope_rtol, rtol)
                if bool(error <= atol) or steps == max_backtracking_steps:
                    new_grad = vjp(torch.ones_like(out))[0]
            else:
                with torch.no_grad():
                    new_value = scalar(value_fn(trial, **fn_kwargs), dtype, device, where)
                error = _decrease_error(lr, slope, value, new_value, slope_rtol, rtol)
            steps += 1
        if verbose and not bool(error <= atol):
            print(
                f"INFO: {where}: no step size with sufficient decrease found (value "
                f"{float(value):g}, slope {float(slope):g}, step size {float(lr):g}, decrease "
                f"error {float(error):g})" + (", using 0" if bool(torch.isinf(error)) else "")
            )
        lr = torch.where(torch.isinf(error), torch.zeros_like(lr), lr)
        info = BacktrackingLinesearchInfo(torch.tensor(steps, dtype=torch.int64), error)
        out = unflatten([u * lr.to(u.dtype) for u in us], spec)
        return out, ScaleByBacktrackingLinesearchState(lr, new_value, new_grad, info)

    return GradientTransformationExtraArgs(init, update)


# -- reusing the search's value and gradient ---------------------------------------------------


def _find(tree: Any, key: str) -> list[Any]:
    """The values of the fields (named-tuple fields or dict keys) called ``key`` in
    ``tree``, searched through tuples, lists and dicts."""
    found: list[Any] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            found.extend(getattr(node, key) for f in node._fields if f == key)
            stack.extend(reversed(list(node)))
        elif isinstance(node, dict):
            found.extend(v for k, v in node.items() if k == key)
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, (tuple, list)):
            stack.extend(reversed(list(node)))
    return found


def value_and_grad_from_state(
    value_fn: Callable[..., torch.Tensor],
) -> Callable[..., tuple[torch.Tensor, Any]]:
    """``torch.func``'s value and gradient of ``value_fn``, reusing those a line search
    stored in the optimiser state, as optax's.

    ``value, grad = value_and_grad_from_state(fn)(params, *args, state=opt_state,
    **kwargs)`` returns the ``value`` and ``grad`` fields of the state (the search's last
    accepted step, which is where ``params`` now are) when the value is finite, and
    computes both from ``fn(params, *args, **kwargs)`` otherwise (the first step).

    Arguments:
        value_fn: the loss, ``value_fn(params, *args, **kwargs)`` -> a 0-dim tensor.

    Returns:
        A function ``(params, *args, state, **kwargs) -> (value, grad)`` (``grad`` a tree
            like the params).

    Raises:
        TypeError: ``value_fn`` is not callable.
        ValueError: (the returned function) the state holds no value or gradient (a
            search without ``store_grad``, or no search).
        KeyError: (the returned function) the state holds several.
    """
    where = "fm.optim.value_and_grad_from_state"
    if not callable(value_fn):
        raise TypeError(f"{where}: value_fn must be callable, got {type(value_fn).__name__}")

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        values, grads = _find(state, "value"), _find(state, "grad")
        if len(values) > 1 or len(grads) > 1:
            raise KeyError(f"{where}: the state holds several values or gradients")
        if not values or not grads or values[0] is None or grads[0] is None:
            raise ValueError(
                f"{where}: no value or gradient found in the state; the optimiser must "
                "store them (a zoom line search, or a backtracking one with store_grad=True)"
            )
        value = values[0]
        if bool(torch.isfinite(torch.as_tensor(value))):
            return value, grads[0]
        grad, value = torch.func.grad_and_value(value_fn)(params, *fn_args, **fn_kwargs)
        return value, grad

    return value_and_grad
