"""Sophia (Liu et al., 2023): momentum preconditioned by a clipped estimate of the
Hessian's diagonal, and Hutchinson's estimator of that diagonal, as optax.contrib's
``sophia`` and ``hutchinson_estimator_diag_hessian``.

The estimator's random signs are drawn from fm's keys, so they are not JAX's bits: for a
Hessian that is diagonal the estimate is exact whatever the signs, which is how the two
libraries are compared. ``update`` takes the objective as ``obj_fn=`` (optax's extra
argument): call it directly, or through :func:`sophia`, which forwards it.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ... import random as fm_random
from .._base import (
    GradientTransformation,
    Scalar,
    as_transformation,
    check_state,
    dtype_arg,
    number,
)
from .._more_common import hyper, zeros
from .._ops import eager
from .._transforms import add_decayed_weights, scale_by_learning_rate
from .._utilities import bias_correction, safe_increment, update_moment, with_extra_args_support
from ._common import device_of, lowest_dtype


class HutchinsonState(NamedTuple):
    """The state of :func:`hutchinson_estimator_diag_hessian`."""

    key: torch.Tensor
    """the key the next signs are drawn from (an ``fm.key``)"""


class SophiaState(NamedTuple):
    """The state of :func:`sophia`'s scaling."""

    count: torch.Tensor
    """the step count (0-dim int32)"""
    mu: Any
    """the momentum"""
    nu: Any
    """the moving average of the Hessian's diagonal"""
    hessian_fn_state: Any
    """the state of the diagonal's estimator"""


def hutchinson_estimator_diag_hessian(random_seed: torch.Tensor | int | None = None) -> Any:
    """Hutchinson's estimate of the Hessian's diagonal, ``r * (H r)`` with random signs
    ``r`` (optax.contrib's): ``update(updates, state, params, obj_fn)`` ignores the
    updates and differentiates ``obj_fn(params)`` twice (``torch.func.jvp`` of
    ``torch.func.grad``).

    Arguments:
        random_seed: an ``fm.key`` or an int seed (``None``: seed 0).

    Returns:
        A GradientTransformation whose ``update`` needs the params and ``obj_fn``; its
            state is a :class:`HutchinsonState`.

    Raises:
        TypeError: a key that is not an ``fm.key``.
    """
    where = "fm.optim.contrib.hutchinson_estimator_diag_hessian"
    key = 0 if random_seed is None else random_seed
    key = fm_random.key(key) if isinstance(key, int) else key
    key = fm_random.check_key(key, where)

    def init(params):
        return HutchinsonState(key.to(device_of(params) or key.device))

    def update(updates, state, params=None, obj_fn=None, **extra_args):
        check_state(state, HutchinsonState, where)
        if params is None:
            raise ValueError(f"{where}: params must be provided to update")
        if obj_fn is None:
            raise ValueError(f"{where}: obj_fn must be provided to update")
        new_key, sub = fm_random.split(state.key)
        leaves, spec = pytree.tree_flatten(params)
        keys = fm_random.split(sub, max(len(leaves), 1))
        low = lowest_dtype(params)
        signs = [
            (2 * fm_random.bernoulli(k, 0.5, tuple(p.shape), device=p.device).float() - 1).to(low)
            for k, p in zip(keys, leaves, strict=False)
        ]
        signs = pytree.tree_unflatten(signs, spec)
        hvp = torch.func.jvp(torch.func.grad(obj_fn), (params,), (signs,))[1]
        return pytree.tree_map(lambda h, r: h * r, hvp, signs), HutchinsonState(new_key)

    return GradientTransformation(init, update)


def _passing_kwargs(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` as is where its ``update`` takes keyword arguments beyond ``(updates, state,
    params)`` (``obj_fn``), else with them dropped (optax's ``with_extra_args_support``)."""
    try:
        params = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):
        return with_extra_args_support(tx)
    if len(params) > 3 or any(p.kind is p.VAR_KEYWORD for p in params):
        return tx
    return with_extra_args_support(tx)


def _select(cond: torch.Tensor, a: Any, b: Any) -> Any:
    return pytree.tree_map(lambda x, y: torch.where(cond, x, y), a, b)


def _scale_by_sophia(hp: dict, hessian: GradientTransformation) -> GradientTransformation:
    where = "fm.optim.contrib.sophia"
    b1, b2, eps, gamma, clip = (hp[k] for k in ("b1", "b2", "eps", "gamma", "clip_threshold"))

    def init(params):
        count = torch.zeros((), dtype=torch.int32, device=device_of(params))
        mu, nu = zeros(params, hp["mu_dtype"]), zeros(params)
        return SophiaState(count, mu, nu, hessian.init(params))

    def refresh(grads, state, params, kwargs):
        diag, h_state = hessian.update(grads, state.hessian_fn_state, params=params, **kwargs)
        return h_state, update_moment(diag, state.nu, b2, 1)

    def update(updates, state, params=None, **kwargs):
        check_state(state, SophiaState, where)
        if params is None:
            raise ValueError(f"{where}: params must be provided to update")
        count = safe_increment(state.count)
        mu = update_moment(updates, state.mu, b1, 1)
        mu_hat = bias_correction(mu, b1, count)

        def scale(m, h):
            u = m / torch.clamp_min(hyper(gamma, h) * h, hyper(eps, h))
            return u if clip is None else torch.clamp(u, -hyper(clip, u), hyper(clip, u))

        out = pytree.tree_map(scale, mu_hat, state.nu)
        due = torch.remainder(state.count, hp["update_interval"]) == 0
        if eager() and due.device.type == "cpu":  # read on the host, as torch.optim reads steps
            h_state, nu = (
                refresh(updates, state, params, kwargs)
                if bool(due)
                else (state.hessian_fn_state, state.nu)
            )
        else:  # no host sync: the estimate is computed every step and kept or not
            h_new, nu_new = refresh(updates, state, params, kwargs)
            h_state = _select(due, h_new, state.hessian_fn_state)
            nu = _select(due, nu_new, state.nu)
        mu = pytree.tree_map(lambda m, old: m.to(old.dtype), mu, state.mu)
        return out, SophiaState(count, mu, nu, h_state)

    return GradientTransformation(init, update)


def sophia(
    learning_rate: Scalar,
    b1: Scalar = 0.965,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-4,
    weight_decay_mask: Any = None,
    gamma: Scalar = 0.01,
    clip_threshold: Scalar | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: Any = None,
    mu_dtype: Any = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
) -> GradientTransformation:
    """Sophia (optax.contrib's ``sophia``): the bias-corrected momentum divided by
    ``max(gamma h, eps)`` and clipped to ``clip_threshold``, ``h`` a moving average of the
    Hessian's diagonal refreshed every ``update_interval`` steps; then decoupled weight
    decay and the learning rate. ``update(updates, state, params, **kwargs)`` passes its
    keyword arguments (``obj_fn=`` for the default estimator) to the estimator.

    Arguments:
        learning_rate: a number, a 0-dim tensor or a schedule.
        b1: the decay rate of the momentum.
        b2: the decay rate of the Hessian's average.
        eps: the floor of the denominator.
        weight_decay: decoupled weight decay.
        weight_decay_mask: which params decay.
        gamma: the factor on the Hessian.
        clip_threshold: the bound on each element of the scaled update (``None``: none).
        update_interval: steps between estimates of the diagonal.
        hessian_diagonal_fn: the estimator (:func:`hutchinson_estimator_diag_hessian`
            when ``None``; optax's default is that one, made at import).
        mu_dtype: the dtype of the momentum.
        verbose: must be ``False`` (optax prints a win rate from inside ``jit``).
        print_win_rate_every_n_steps: unused (as ``verbose``).

    Returns:
        A GradientTransformation whose ``update`` needs the params; its state is the
            tuple of :class:`SophiaState` and the two stateless pieces' states.

    Raises:
        ValueError: ``verbose``, a hyperparameter out of range.
        TypeError: a hyperparameter of the wrong type, an estimator that is not a
            transformation.
    """
    where = "fm.optim.contrib.sophia"
    if verbose:
        raise ValueError(f"{where}: verbose printing is not supported; leave verbose=False")
    hp = dict(b1=number(where, "b1", b1), b2=number(where, "b2", b2), eps=number(where, "eps", eps))
    hp.update(gamma=number(where, "gamma", gamma), mu_dtype=dtype_arg(where, "mu_dtype", mu_dtype))
    hp.update(
        clip_threshold=None if clip_threshold is None else number(where, "clip", clip_threshold)
    )
    hp.update(update_interval=update_interval)
    if hessian_diagonal_fn is None:
        hessian_diagonal_fn = hutchinson_estimator_diag_hessian()
    hessian = _passing_kwargs(as_transformation(where, "hessian_diagonal_fn", hessian_diagonal_fn))
    pieces = (
        _scale_by_sophia(hp, hessian),
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )

    def init(params):
        return tuple(p.init(params) for p in pieces)

    def update(updates, state, params=None, **kwargs):
        first, decay, rate = state
        updates, first = pieces[0].update(updates, first, params, **kwargs)
        updates, decay = pieces[1].update(updates, decay, params)
        updates, rate = pieces[2].update(updates, rate, params)
        return updates, (first, decay, rate)

    return GradientTransformation(init, update)
