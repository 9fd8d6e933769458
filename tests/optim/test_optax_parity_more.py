"""fm.optim against optax for the names added after the first parity suite (RAdam, AdaBelief,
Yogi, Adan, Adadelta, NovoGrad, Rprop, LARS, Fromage, SM3, the optimistic pair, Adafactor,
Polyak SGD, the new transforms and utilities), side by side in float64.

As in ``test_optax_parity.py`` (whose helpers this file uses): one expression evaluated
with either library, six steps of the same gradients on the same nested tree, the updates
and params agreeing to ``1e-10`` (absolute, values of order one) at every step. Where a
piece refuses the usual tree (SM3 on a 0-dim leaf, which optax fails on too) it runs on a
tree without one. Noise (``add_noise``, ``noisy_sgd``) cannot match JAX's random bits: its
deterministic part is compared with ``eta=0`` and its statistics separately. Skipped when
jax or optax is absent.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels import optim

from .test_optax_parity import (
    FM,
    LABELS,
    MASK,
    OPTAX,
    SCALES,
    STEPS,
    TOL,
    _max_diff,
    _to_jax,
    _tree,
    jax,
    jnp,
    matrices,
    optax,
    sched,
)

# (SM3 and a tree without a 0-dim leaf; the factored Adafactor a matrix of 130 rows)
NO_SCALAR = {"conv": (2, 3, 2), "dense": {"b": (3,), "w": (4, 3)}}
BIG = {"a": (130, 129), "b": (5,), "c": (3, 2, 131)}
BIG_MASK = {"a": True, "b": False, "c": True}


def _tree_of(shapes, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return pytree.tree_map(
        lambda s: torch.randn(s, generator=g, dtype=torch.float64) * scale,
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def _labels_by_rank(tree_map):
    return lambda params: tree_map(lambda p: "m" if p.ndim > 1 else "v", params)


FM.tree_map_labels = _labels_by_rank(pytree.tree_map)
OPTAX.tree_map_labels = _labels_by_rank(jax.tree.map)


def decay64(lib):
    """Adafactor's decay ``1 - (t + 1)**-rate`` in float64. optax's default computes it in
    float32, and XLA's float32 ``pow`` differs from torch's in the last bit at about one
    count in five (no float32 or float64 formula of torch's reproduces its bits)."""
    if lib is FM:
        return lambda i, rate: 1.0 - (i.double() + 1.0) ** -rate
    return lambda i, rate: 1.0 - (jnp.asarray(i, jnp.float64) + 1.0) ** -rate


CASES = {
    # optimisers
    "radam": lambda L: L.radam(1e-2),
    "radam-all": lambda L: L.radam(1e-2, 0.8, 0.9, 1e-6, 1e-4, threshold=4.5, nesterov=True),
    "radam-schedule": lambda L: L.radam(sched(L), b2=0.5),
    "adabelief": lambda L: L.adabelief(1e-2),
    "adabelief-nesterov": lambda L: L.adabelief(1e-2, 0.8, 0.95, 1e-8, 1e-10, nesterov=True),
    "yogi": lambda L: L.yogi(1e-2),
    "yogi-all": lambda L: L.yogi(sched(L), 0.8, 0.9, 1e-4),
    "adan": lambda L: L.adan(1e-2),
    "adan-all": lambda L: L.adan(1e-2, 0.9, 0.8, 0.95, 1e-6, 0.0, weight_decay=0.1, mask=MASK),
    "adadelta": lambda L: L.adadelta(1.0),
    "adadelta-none": lambda L: L.adadelta(),
    "adadelta-all": lambda L: L.adadelta(0.5, 0.8, 1e-4, weight_decay=0.1, weight_decay_mask=MASK),
    "novograd": lambda L: L.novograd(1e-2),
    "novograd-all": lambda L: L.novograd(1e-2, 0.8, 0.5, 1e-4, 1e-6, weight_decay=0.1),
    "rprop": lambda L: L.rprop(1e-2),
    "rprop-all": lambda L: L.rprop(0.1, 0.3, 1.5, 0.05, 0.2),
    "lars": lambda L: L.lars(0.1),
    "lars-all": lambda L: L.lars(0.1, 0.01, MASK, 0.01, 1e-6, matrices, 0.5, True),
    "fromage": lambda L: L.fromage(0.1),
    "fromage-schedule": lambda L: L.fromage(sched(L), 1e-3),
    "noisy_sgd-eta0": lambda L: L.noisy_sgd(0.1, eta=0.0, key=0),
    "optimistic_gradient_descent": lambda L: L.optimistic_gradient_descent(0.1),
    "optimistic_gradient_descent-all": lambda L: L.optimistic_gradient_descent(0.1, 0.5, 2.0),
    "optimistic_adam_v2": lambda L: L.optimistic_adam_v2(1e-2),
    "optimistic_adam_v2-all": lambda L: L.optimistic_adam_v2(
        sched(L), alpha=0.5, beta=2.0, b1=0.8, nesterov=False
    ),
    # injected hyperparameters (0-dim tensors, rebuilt each step)
    "inject-radam": lambda L: L.inject_hyperparams(L.radam)(learning_rate=sched(L), b2=0.5),
    "inject-adan": lambda L: L.inject_hyperparams(L.adan)(1e-2, weight_decay=0.1),
    "inject-yogi": lambda L: L.inject_hyperparams(L.yogi)(1e-2, b1=0.8),
    "inject-novograd": lambda L: L.inject_hyperparams(L.novograd)(1e-2),
    # pieces
    "scale_by_radam": lambda L: L.scale_by_radam(),
    "scale_by_belief": lambda L: L.scale_by_belief(),
    "scale_by_yogi": lambda L: L.scale_by_yogi(0.5, 0.9, 1e-3, 1e-6, 0.1),
    "scale_by_adan": lambda L: L.scale_by_adan(eps_root=1e-6),
    "scale_by_adadelta": lambda L: L.scale_by_adadelta(0.5, 1e-3),
    "scale_by_novograd": lambda L: L.scale_by_novograd(mu_dtype=L.float64),
    "scale_by_rprop": lambda L: L.scale_by_rprop(0.1),
    "scale_by_distance_over_gradients": lambda L: L.chain(
        L.scale_by_distance_over_gradients(param_dtype=L.float64), L.scale(-0.1)
    ),
    "scale_by_distance_over_gradients-all": lambda L: L.scale_by_distance_over_gradients(
        1e-3, 1e-4, L.float32, -0.5
    ),
    "scale_by_optimistic_gradient": lambda L: L.scale_by_optimistic_gradient(0.3, 0.7),
    "scale_by_param_block_norm": lambda L: L.scale_by_param_block_norm(),
    "scale_by_param_block_rms": lambda L: L.scale_by_param_block_rms(0.5),
    "scale_by_factored_rms": lambda L: L.scale_by_factored_rms(
        min_dim_size_to_factor=3, decay_rate_fn=decay64(L)
    ),
    "scale_by_factored_rms-all": lambda L: L.scale_by_factored_rms(
        False, 0.5, 2, 1, 1e-20, decay64(L)
    ),
    "add_noise-eta0": lambda L: L.chain(L.add_noise(0.0, 0.55, 0), L.scale(-0.1)),
    # transforms
    "centralize": lambda L: L.chain(L.centralize(), L.sgd(0.1)),
    "clip_by_block_rms": lambda L: L.clip_by_block_rms(0.5),
    "adaptive_grad_clip": lambda L: L.adaptive_grad_clip(0.1),
    "adaptive_grad_clip-axis": lambda L: L.adaptive_grad_clip(0.5, 1e-2, axis=0),
    "keep_params_nonnegative": lambda L: L.chain(L.sgd(0.5), L.keep_params_nonnegative()),
    "zero_nans": lambda L: L.chain(L.zero_nans(), L.adam(1e-2)),
    "normalize_by_update_norm": lambda L: L.normalize_by_update_norm(),
    "normalize_by_update_norm-all": lambda L: L.normalize_by_update_norm(0.5, 1e-3),
    # wrappers
    "freeze": lambda L: L.chain(L.freeze(MASK), L.adam(1e-2)),
    "freeze-all": lambda L: L.chain(L.adam(1e-2), L.freeze(True)),
    "partition": lambda L: L.partition({"a": L.adam(1e-2), "b": L.sgd(0.1, 0.9)}, LABELS),
    "partition-fn": lambda L: L.partition(
        {"m": L.lion(1e-3), "v": L.radam(1e-2)},
        lambda p: L.tree_map_labels(p),
    ),
    "selective_transform": lambda L: L.selective_transform(L.adam(1e-2), freeze_mask=MASK),
    "named_chain": lambda L: L.named_chain(
        ("clip", L.clip_by_global_norm(1.0)), ("adam", L.adam(1e-2))
    ),
    "conditionally_transform": lambda L: L.conditionally_transform(
        L.adam(1e-2), lambda step: step % 2 == 0
    ),
    "conditionally_mask": lambda L: L.conditionally_mask(L.sgd(0.1, 0.9), lambda step: step > 2),
    "flatten": lambda L: L.flatten(L.adam(1e-2)),
    "flatten-sm3": lambda L: L.flatten(L.sm3(0.1)),
}
# cases on another tree, and steps with a NaN in the gradients
SHAPES = {
    "scale_by_factored_rms": BIG,
    "scale_by_factored_rms-all": BIG,
    "adaptive_grad_clip-axis": NO_SCALAR,  # (optax cannot reduce a 0-dim leaf over axis 0)
    # (optax turns a 0-dim leaf's update into shape (1,))
    "scale_by_distance_over_gradients": NO_SCALAR,
    "scale_by_distance_over_gradients-all": NO_SCALAR,
}
NAN_STEPS = {"zero_nans": {1, 4}}
SM3 = {
    "sm3": lambda L: L.sm3(0.1),
    "sm3-momentum": lambda L: L.sm3(0.1, 0.5),
    "scale_by_sm3": lambda L: L.scale_by_sm3(0.5, 0.9, 1e-6),
}
CASES.update(SM3)
SHAPES.update({name: NO_SCALAR for name in SM3})


def _run(lib, make, name, shapes=None):
    """The params and updates after each step (as the first suite's ``_run``, any tree)."""
    shapes = SHAPES.get(name) if shapes is None else shapes
    to = (lambda t: t) if lib is FM else _to_jax

    def tree(seed, scale=1.0, nan=False):
        t = _tree(seed, scale, nan) if shapes is None else _tree_of(shapes, seed, scale)
        return to(t)

    params = tree(0)
    opt = make(lib)
    state = opt.init(params)
    update = opt.update if lib is FM else jax.jit(opt.update)
    seen = []
    for step in range(STEPS):
        grads = tree(100 + step, SCALES[step], nan=step in NAN_STEPS.get(name, ()))
        updates, state = update(grads, state, params)
        params = lib.apply_updates(params, updates)
        seen.append((updates, params))
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_optax(name):
    ours, theirs = _run(FM, CASES[name], name), _run(OPTAX, CASES[name], name)
    assert max(_max_diff(a, b) for a, b in zip(ours, theirs, strict=True)) <= TOL


# Adafactor with optax's default decay (float32, see ``decay64``): a last-bit (6e-8 relative)
# difference in the decay at some counts moves the updates by up to 7e-7 where a gradient
# 300x larger than the one before meets the average (measured: scale_by_factored_rms
# 6.7e-7 on updates of order 1, adafactor 7.5e-10 on updates of order 1e-2)
ADAFACTOR = {
    "adafactor": lambda L: L.adafactor(1e-2),
    "adafactor-all": lambda L: L.adafactor(
        sched(L), 2, 0.7, 1, False, None, 0.9, L.float64, 0.1, 1e-20, True, BIG_MASK
    ),
    "adafactor-unfactored": lambda L: L.adafactor(1e-2, factored=False, clipping_threshold=0.5),
    "scale_by_factored_rms-default": lambda L: L.scale_by_factored_rms(min_dim_size_to_factor=3),
}
FLOAT32_DECAY_TOL = 1e-6


@pytest.mark.parametrize("name", list(ADAFACTOR))
def test_adafactor_matches_optax_up_to_its_float32_decay(name):
    ours = _run(FM, ADAFACTOR[name], name, BIG)
    theirs = _run(OPTAX, ADAFACTOR[name], name, BIG)
    assert max(_max_diff(a, b) for a, b in zip(ours, theirs, strict=True)) <= FLOAT32_DECAY_TOL


def _steps_of(lib, opt, params, grads_of, extra=None):
    """``(updates, params)`` after each of the steps, ``grads_of(step)`` the gradients."""
    state = opt.init(params)
    update = opt.update if lib is FM else jax.jit(opt.update)
    seen = []
    for step in range(STEPS):
        kwargs = {} if extra is None else extra(step)
        updates, state = update(grads_of(step), state, params, **kwargs)
        params = lib.apply_updates(params, updates)
        seen.append((updates, params))
    return seen


def _worst(ours, theirs) -> float:
    return max(_max_diff(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("period", [1, 2, 3])
def test_lookahead_matches_optax(period, reset):
    def run(lib, to):
        opt = lib.lookahead(lib.adam(1e-2), period, 0.5, reset_state=reset)
        params = lib.LookaheadParams.init_synced(to(_tree(0)))
        return _steps_of(lib, opt, params, lambda s: to(_tree(100 + s, SCALES[s])))

    assert _worst(run(FM, lambda t: t), run(OPTAX, _to_jax)) <= TOL


@pytest.mark.parametrize("variant", ["sps", "sps+"])
def test_polyak_sgd_matches_optax(variant):
    values = [2.0, 0.5, -1.0, 3.0, 0.0, 1.5]  # losses, a negative one below f_min

    def run(lib, to):
        opt = lib.polyak_sgd(0.8, 0.5, f_min=0.1, eps=1e-3, variant=variant)
        grads = lambda s: to(_tree(100 + s, SCALES[s]))  # noqa: E731
        return _steps_of(lib, opt, to(_tree(0)), grads, lambda s: {"value": values[s]})

    assert _worst(run(FM, lambda t: t), run(OPTAX, _to_jax)) <= TOL


def test_monitor_snapshot_and_measure_with_ema_match_optax():
    def run(lib, to, norm):
        opt = lib.chain(
            lib.snapshot("before", norm),
            lib.monitor({"norm": norm, "ema": lib.measure_with_ema(norm, 0.8)}),
            lib.adam(1e-2),
        )
        params, state = to(_tree(0)), None
        state = opt.init(params)
        seen = []
        for s in range(STEPS):
            _, state = opt.update(to(_tree(100 + s, SCALES[s])), state, params)
            m = state[1].measurements
            seen.append([state[0].measurement["before"], m["norm"], m["ema"]])
        return seen

    ours = run(FM, lambda t: t, optim.global_norm)
    theirs = run(OPTAX, _to_jax, optax.tree.norm)
    assert _worst(ours, theirs) <= TOL
    assert ours[0][0].dtype == torch.float64


def test_add_noise_is_optax_arithmetic_with_fm_keys():
    """The deterministic part is optax's (eta = 0 above); here the noise: a fresh draw per
    step and leaf, reproducible from the key, of variance eta / t**gamma."""
    eta, gamma = 0.5, 0.55
    zeros = {"a": torch.zeros(20000, dtype=torch.float64), "b": torch.zeros(4, 5)}
    opt = optim.add_noise(eta, gamma, key=fm.key(3))
    state = opt.init(zeros)
    draws = []
    for t in range(1, 4):
        noise, state = opt.update(zeros, state)
        assert noise["b"].dtype == torch.float32 and noise["a"].dtype == torch.float64
        # standard error of a variance estimate from 20000 normals: sqrt(2 / 20000) = 1%
        var = eta / t**gamma
        assert float(noise["a"].var()) == pytest.approx(var, rel=0.05)
        assert abs(float(noise["a"].mean())) < 5 * math.sqrt(var / 20000)
        draws.append(noise)
    assert not torch.equal(draws[0]["a"], draws[1]["a"])
    again, _ = opt.update(zeros, opt.init(zeros))
    assert torch.equal(again["a"], draws[0]["a"]) and torch.equal(again["b"], draws[0]["b"])
    other = optim.add_noise(eta, gamma, key=4)
    other, _ = other.update(zeros, other.init(zeros))
    assert not torch.equal(other["a"], draws[0]["a"])
    with pytest.raises(ValueError, match="key or seed"):
        optim.add_noise(eta, gamma, key=1, seed=2)


def test_moment_utilities_match_optax():
    g, m = _tree(1), _tree(2, 0.1)
    jg, jm = _to_jax(g), _to_jax(m)
    for order in (1, 2, 3):
        ours = optim.update_moment(g, m, 0.9, order)
        assert _max_diff(ours, optax.update_moment(jg, jm, 0.9, order)) <= TOL
        ours = optim.update_moment_per_elem_norm(g, m, 0.8, order)
        assert _max_diff(ours, optax.update_moment_per_elem_norm(jg, jm, 0.8, order)) <= TOL
    ours = optim.update_infinity_moment(g, m, 0.7, 1e-3)
    assert _max_diff(ours, optax.update_infinity_moment(jg, jm, 0.7, 1e-3)) <= TOL
    for count in (1, 2, 10):
        ours = optim.bias_correction(m, 0.999, torch.tensor(count))
        theirs = optax.bias_correction(jm, 0.999, jnp.asarray(count, jnp.int32))
        assert _max_diff(ours, theirs) <= 1e-9  # (values up to ~300 at count 1)


@pytest.mark.parametrize(
    "ord_, axis, keepdims",
    [(None, None, False), (None, None, True), (None, 1, False), (2, 0, True), (1, None, False)],
)
@pytest.mark.parametrize("min_norm", [0.0, 1.0, 100.0])
def test_safe_norm_matches_optax(ord_, axis, keepdims, min_norm):
    x = _tree(5)["dense"]["w"]
    if ord_ == 1 and axis is None:
        x = x[0]  # (a vector norm: the matrix 1-norm differs between the libraries' axes)
    ours = optim.safe_norm(x, min_norm, ord_, axis, keepdims)
    theirs = optax.safe_norm(jnp.asarray(x.numpy()), min_norm, ord_, axis, keepdims)
    assert _max_diff(ours, theirs) <= TOL
    # the gradient below the floor is 0, not NaN
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(optim.safe_norm(zero, 0.5), zero)
    assert torch.equal(grad, torch.zeros(3, dtype=torch.float64))


def test_safe_rms_and_increments_match_optax():
    x = _tree(6)["conv"]
    for floor in (0.0, 0.5, 10.0):
        ours = optim.safe_root_mean_squares(x, floor)
        theirs = optax.safe_root_mean_squares(jnp.asarray(x.numpy()), floor)
        assert abs(float(ours) - float(theirs)) <= TOL
    top32 = torch.tensor(2**31 - 1, dtype=torch.int32)
    assert int(optim.safe_int32_increment(top32)) == 2**31 - 1
    assert int(optim.safe_int32_increment(torch.tensor(5, dtype=torch.int32))) == 6
    assert int(optim.safe_increment(torch.tensor(2**63 - 1))) == 2**63 - 1
    assert float(optim.safe_increment(torch.tensor(1.5))) == 2.5
    with pytest.raises(TypeError, match="int32"):
        optim.safe_int32_increment(torch.tensor(3))


def test_tree_map_params_and_stateless_match_optax():
    params = _tree(0)

    def run(lib, to, tree_map):
        opt = lib.chain(lib.adam(1e-2), lib.trace(0.5))
        p = to(params)
        state = opt.init(p)
        _, state = opt.update(to(_tree(1)), state, p)
        doubled = lib.tree_map_params(opt, lambda x: 2 * x, state)
        scaled = lib.stateless(lambda u, p: tree_map(lambda a, b: a * b, u, p))
        by_leaf = lib.stateless_with_tree_map(lambda u, p: u - 0.5 * p)
        return [
            doubled[0][0].mu,
            doubled[0][0].nu,
            doubled[1].trace,
            scaled.update(to(_tree(2)), scaled.init(p), p)[0],
            by_leaf.update(to(_tree(3)), by_leaf.init(p), p)[0],
        ], doubled

    ours, state = run(FM, lambda t: t, pytree.tree_map)
    theirs, _ = run(OPTAX, _to_jax, jax.tree.map)
    assert _max_diff(ours, theirs) <= TOL
    assert int(state[0][0].count) == 1  # not a params-like tree: untouched


@pytest.mark.parametrize("clip", [0.5, 3.0, 1e9])
def test_per_example_clips_match_optax(clip):
    shapes = {"a": (5, 4, 3), "b": (5, 3), "c": (5,)}
    grads = _tree_of(shapes, 7)
    grads["b"][2] = 0.0  # an example with a zero gradient in one leaf
    ours = optim.per_example_global_norm_clip(grads, clip)
    theirs = optax.per_example_global_norm_clip(_to_jax(grads), clip)
    assert _max_diff(ours[0], theirs[0]) <= TOL and int(ours[1]) == int(theirs[1])
    for uniform in (True, False):
        ours = optim.per_example_layer_norm_clip(grads, clip, uniform)
        theirs = optax.per_example_layer_norm_clip(_to_jax(grads), clip, uniform)
        assert _max_diff(ours[0], theirs[0]) <= TOL
        assert [int(n) for n in pytree.tree_leaves(ours[1])] == [
            int(n) for n in jax.tree.leaves(theirs[1])
        ]
    with pytest.raises(ValueError, match="batch"):
        optim.per_example_global_norm_clip({"a": torch.ones(2, 3), "b": torch.ones(3)}, 1.0)


def test_with_extra_args_support_drops_extra_arguments():
    def run(lib, to):
        opt = lib.with_extra_args_support(lib.adam(1e-2))
        grads = lambda s: to(_tree(100 + s, SCALES[s]))  # noqa: E731
        return _steps_of(lib, opt, to(_tree(0)), grads, lambda s: {"value": float(s)})

    assert _worst(run(FM, lambda t: t), run(OPTAX, _to_jax)) <= TOL
