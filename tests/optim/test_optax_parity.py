"""fm.optim against optax, side by side, in float64: the same code runs with either library.

Every case below is one expression written once and evaluated with ``optax`` and with
``fm.optim`` (the same names, arguments and defaults); both optimisers are then fed the
same gradients for several steps on the same tree (a matrix, a vector, a 0-dim leaf and a
3-d leaf, nested), and the updates and params must agree to ``1e-10`` (absolute, on values
of order one) at every step. Schedules are compared at every count from 0 to 40; signatures
name for name. Skipped when jax or optax is absent.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from funcmodels import optim

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10
STEPS = 6
# (keys in sorted order: jax flattens dicts by sorted key, torch by insertion order)
SHAPES = {"conv": (2, 3, 2), "dense": {"b": (3,), "w": (4, 3)}, "s": ()}
# per step, a factor on the gradients: small, usual and large (clipping on and off)
SCALES = [1.0, 0.01, 3.0, 100.0, 1.0, 0.3]


class Lib:
    """One library seen through the names a case uses: the optimiser module, its float32
    and float64, and ``at64``, which gives a schedule an int64 count.

    optax counts steps in int32 and JAX turns an int32 count into float32 inside a
    schedule (``count / steps``), even with x64 enabled: its schedule values inside an
    optimiser are float32-rounded (6e-8 relative). fm.optim counts in int64 and computes
    schedules in float64, the values optax's schedules give an int64 count (tested below).
    """

    def __init__(self, module, float32, float64, at64):
        self.o, self.float32, self.float64, self.at64 = module, float32, float64, at64

    def __getattr__(self, name):
        return getattr(self.o, name)


FM = Lib(optim, torch.float32, torch.float64, lambda s: s)
OPTAX = Lib(
    optax, jnp.float32, jnp.float64, lambda s: lambda count: s(jnp.asarray(count, jnp.int64))
)


def _tree(seed: int, scale: float = 1.0, nan: bool = False):
    g = torch.Generator().manual_seed(seed)

    def leaf(shape):
        return torch.randn(shape, generator=g, dtype=torch.float64) * scale

    tree = pytree.tree_map(leaf, SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    if nan:
        tree["dense"]["w"][1, 2] = float("nan")
    return tree


def _to_jax(tree):
    return jax.tree.map(lambda t: jnp.asarray(t.numpy()), tree)


def _to_np(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().numpy()
    return np.asarray(tree)


MASK = {"conv": True, "dense": {"b": False, "w": True}, "s": False}
PREFIX_MASK = {"conv": True, "dense": True, "s": False}
LABELS = {"conv": "a", "dense": {"b": "b", "w": "a"}, "s": "b"}


def matrices(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def sched(lib):
    return lib.at64(lib.warmup_cosine_decay_schedule(0.0, 0.02, 2, 8, end_value=0.001))


def linear(lib):
    return lib.at64(lib.linear_schedule(0.1, 0.0, 5))


# name -> (expression of a Lib, steps with a NaN in the gradients)
CASES = {
    # aliases
    "sgd": lambda L: L.sgd(0.1),
    "sgd-momentum": lambda L: L.sgd(0.1, momentum=0.9),
    "sgd-nesterov": lambda L: L.sgd(0.1, 0.9, nesterov=True),
    "sgd-schedule": lambda L: L.sgd(sched(L), momentum=0.5),
    "adam": lambda L: L.adam(1e-2),
    "adam-betas": lambda L: L.adam(1e-2, b1=0.5, b2=0.99, eps=1e-6),
    "adam-b1-zero": lambda L: L.adam(1e-2, b1=0.0),
    "adam-eps-root": lambda L: L.adam(1e-2, eps_root=1e-3),
    "adam-nesterov": lambda L: L.adam(1e-2, nesterov=True),
    "adam-schedule": lambda L: L.adam(sched(L), b2=0.99999),
    "adamw": lambda L: L.adamw(1e-2),
    "adamw-mask": lambda L: L.adamw(1e-2, weight_decay=0.1, mask=MASK),
    "adamw-mask-fn": lambda L: L.adamw(1e-2, weight_decay=0.1, mask=matrices),
    "adamw-wd-schedule": lambda L: L.adamw(sched(L), weight_decay=linear(L)),
    "adamw-all": lambda L: L.adamw(1e-2, 0.8, 0.95, 1e-7, 1e-5, weight_decay=0.2, nesterov=True),
    "nadam": lambda L: L.nadam(1e-2),
    "nadamw": lambda L: L.nadamw(1e-2, weight_decay=0.05),
    "lamb": lambda L: L.lamb(1e-2),
    "lamb-all": lambda L: L.lamb(1e-2, eps_root=1e-8, weight_decay=0.1, mask=PREFIX_MASK),
    "lion": lambda L: L.lion(1e-3),
    "lion-betas": lambda L: L.lion(1e-3, b1=0.95, b2=0.98, weight_decay=0.0),
    "rmsprop": lambda L: L.rmsprop(1e-2),
    "rmsprop-torch": lambda L: L.rmsprop(1e-2, 0.99, eps_in_sqrt=False),
    "rmsprop-centered": lambda L: L.rmsprop(1e-2, centered=True),
    "rmsprop-momentum": lambda L: L.rmsprop(1e-2, momentum=0.9, nesterov=True),
    "rmsprop-bias": lambda L: L.rmsprop(1e-2, bias_correction=True, initial_scale=0.1),
    "rmsprop-all": lambda L: L.rmsprop(
        1e-2, 0.95, 1e-6, 0.5, False, True, momentum=0.5, bias_correction=True
    ),
    "adagrad": lambda L: L.adagrad(0.1),
    "adagrad-zero": lambda L: L.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-10),
    "amsgrad": lambda L: L.amsgrad(1e-2),
    "amsgrad-raw": lambda L: L.amsgrad(1e-2, 0.8, 0.95, 1e-6, 1e-6, None, False, False),
    "adamax": lambda L: L.adamax(1e-2),
    "adamaxw": lambda L: L.adamaxw(1e-2, 0.8, 0.95, weight_decay=0.1, mask=MASK),
    "sign_sgd": lambda L: L.sign_sgd(0.01),
    "signum": lambda L: L.signum(0.01, beta=0.8),
    # pieces
    "scale": lambda L: L.scale(-0.5),
    "scale_by_adam": lambda L: L.scale_by_adam(),
    "scale_by_adam-eps-root": lambda L: L.scale_by_adam(eps_root=1e-3, nesterov=True),
    "scale_by_amsgrad": lambda L: L.scale_by_amsgrad(bias_correction_mu=False),
    "scale_by_adamax": lambda L: L.scale_by_adamax(0.5, 0.9, 1e-3),
    "scale_by_rms": lambda L: L.scale_by_rms(),
    "scale_by_rms-all": lambda L: L.scale_by_rms(0.8, 1e-3, 0.2, False, True),
    "scale_by_stddev": lambda L: L.scale_by_stddev(),
    "scale_by_stddev-all": lambda L: L.scale_by_stddev(0.8, 1e-3, 0.2, False, True),
    "scale_by_rss": lambda L: L.scale_by_rss(),
    "scale_by_lion": lambda L: L.scale_by_lion(),
    "scale_by_lion-smooth": lambda L: L.scale_by_lion(mode="smooth", smooth_beta=2.0),
    "scale_by_lion-refined": lambda L: L.scale_by_lion(0.5, 0.9, mode="refined"),
    "scale_by_trust_ratio": lambda L: L.scale_by_trust_ratio(),
    "scale_by_trust_ratio-min-norm": lambda L: L.scale_by_trust_ratio(2.0, 0.1, 1e-3),
    "scale_by_schedule": lambda L: L.scale_by_schedule(sched(L)),
    "scale_by_learning_rate": lambda L: L.scale_by_learning_rate(0.1),
    "scale_by_learning_rate-up": lambda L: L.scale_by_learning_rate(sched(L), flip_sign=False),
    "add_decayed_weights": lambda L: L.add_decayed_weights(0.1),
    "add_decayed_weights-schedule": lambda L: L.add_decayed_weights(sched(L), MASK),
    "clip": lambda L: L.clip(0.5),
    "clip_by_global_norm": lambda L: L.clip_by_global_norm(1.0),
    "trace": lambda L: L.trace(0.9),
    "trace-nesterov": lambda L: L.trace(0.5, nesterov=True),
    "ema": lambda L: L.ema(0.9),
    "ema-biased": lambda L: L.ema(0.7, debias=False),
    "scale_by_sign": lambda L: L.scale_by_sign(),
    "identity": lambda L: L.identity(),
    "set_to_zero": lambda L: L.set_to_zero(),
    # wrappers
    "chain": lambda L: L.chain(L.clip_by_global_norm(1.0), L.adamw(sched(L), weight_decay=0.1)),
    "masked": lambda L: L.masked(L.adam(1e-2), MASK),
    "masked-prefix": lambda L: L.masked(L.scale_by_trust_ratio(), PREFIX_MASK),
    "masked-fn": lambda L: L.masked(L.sgd(0.1, 0.9), matrices),
    "multi_transform": lambda L: L.multi_transform(
        {"a": L.adam(1e-2), "b": L.sgd(0.1, momentum=0.9)}, LABELS
    ),
    "inject-adam": lambda L: L.inject_hyperparams(L.adam)(learning_rate=sched(L)),
    "inject-adamw": lambda L: L.inject_hyperparams(L.adamw)(0.01, b1=0.8, weight_decay=linear(L)),
    "inject-scale_by_adam": lambda L: L.inject_hyperparams(L.scale_by_adam)(b1=0.5),
    "inject-static-mask": lambda L: L.inject_hyperparams(L.adamw, static_args="mask")(
        0.01, mask=matrices
    ),
    "inject-rmsprop": lambda L: L.inject_hyperparams(L.rmsprop)(
        learning_rate=0.01, momentum=0.5, centered=True
    ),
    "apply_every": lambda L: L.chain(L.sgd(0.1), L.apply_every(3)),
    "MultiSteps": lambda L: L.MultiSteps(
        L.adam(1e-2), 3, accumulator_dtype=L.float64
    ).gradient_transformation(),
    "MultiSteps-sum": lambda L: L.MultiSteps(
        L.sgd(0.1, 0.9), 2, use_grad_mean=False, accumulator_dtype=L.float64
    ).gradient_transformation(),
    "MultiSteps-schedule": lambda L: L.MultiSteps(
        L.adamw(1e-2), lambda step: 1 + step % 2, accumulator_dtype=L.float64
    ).gradient_transformation(),
    "MultiSteps-skip": lambda L: L.MultiSteps(
        L.adam(1e-2), 2, should_skip_update_fn=L.skip_not_finite, accumulator_dtype=L.float64
    ).gradient_transformation(),
    "MultiSteps-skip-large": lambda L: L.MultiSteps(
        L.sgd(0.1),
        2,
        should_skip_update_fn=functools.partial(L.skip_large_updates, max_squared_norm=400.0),
        accumulator_dtype=L.float64,
    ).gradient_transformation(),
    "apply_if_finite": lambda L: L.apply_if_finite(L.adam(1e-2), 1),
}
NAN_STEPS = {"MultiSteps-skip": {2}, "apply_if_finite": {1, 3, 4}}
# a hyperparameter replaced by hand before this step, as a user does in optax
EDITS = {"inject-adamw": (3, "learning_rate", 0.05), "inject-scale_by_adam": (2, "b2", 0.9)}


def _run(lib, make, name):
    """The params and updates after each step."""
    to = (lambda t: t) if lib is FM else _to_jax
    params = to(_tree(0))
    opt = make(lib)
    state = opt.init(params)
    # optax's update compiled once per case (its eager lax.cond compiles at every call)
    update = opt.update if lib is FM else jax.jit(opt.update)
    seen = []
    for step in range(STEPS):
        if name in EDITS and EDITS[name][0] == step:
            _, key, value = EDITS[name]
            state.hyperparams[key] = value
        grads = to(_tree(100 + step, SCALES[step], nan=step in NAN_STEPS.get(name, ())))
        updates, state = update(grads, state, params)
        params = lib.apply_updates(params, updates)
        seen.append((updates, params))
    return seen


def _max_diff(ours, theirs) -> float:
    a = [_to_np(x) for x in pytree.tree_leaves(ours)]
    b = [np.asarray(x) for x in jax.tree.leaves(theirs)]
    assert len(a) == len(b)
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype == np.float64
        assert np.array_equal(np.isnan(x), np.isnan(y))
        if x.size:
            worst = max(worst, float(np.nanmax(np.abs(x - y), initial=0.0)))
    return worst


def case_max_diff(name: str) -> float:
    """The largest absolute difference between fm.optim and optax over a case's steps."""
    ours, theirs = _run(FM, CASES[name], name), _run(OPTAX, CASES[name], name)
    return max(_max_diff(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_optax(name):
    assert case_max_diff(name) <= TOL


SCHEDULES = {
    "constant": lambda L: L.constant_schedule(0.3),
    "linear": lambda L: L.linear_schedule(0.1, 0.01, 10, transition_begin=5),
    "linear-flat": lambda L: L.linear_schedule(0.1, 0.01, 0),
    "polynomial": lambda L: L.polynomial_schedule(1.0, 0.1, 2.5, 20, -3),
    "cosine": lambda L: L.cosine_decay_schedule(0.1, 25, alpha=0.1, exponent=2.0),
    "warmup-cosine": lambda L: L.warmup_cosine_decay_schedule(0.0, 1.0, 5, 30, 0.1, 1.5),
    "warmup-cosine-no-warmup": lambda L: L.warmup_cosine_decay_schedule(0.5, 1.0, 0, 30),
    "warmup-constant": lambda L: L.warmup_constant_schedule(0.0, 0.5, 7),
    "exponential": lambda L: L.exponential_decay(0.5, 3, 0.9, transition_begin=4),
    "exponential-staircase": lambda L: L.exponential_decay(0.5, 7, 0.5, staircase=True),
    "exponential-end": lambda L: L.exponential_decay(1.0, 2, 0.5, end_value=0.2),
    "exponential-grow": lambda L: L.exponential_decay(0.1, 2, 1.5, end_value=0.9),
    "exponential-flat": lambda L: L.exponential_decay(0.1, 2, 0.0),
    "warmup-exponential": lambda L: L.warmup_exponential_decay_schedule(
        0.0, 1.0, 4, 3, 0.7, 2, True, 0.05
    ),
    "piecewise-constant": lambda L: L.piecewise_constant_schedule(0.3, {10: 0.1, 25: 0.5}),
    "piecewise-linear": lambda L: L.piecewise_interpolate_schedule(
        "linear", 0.3, {5: 2.0, 12: 0.1, 30: 0.5}
    ),
    "piecewise-cosine": lambda L: L.piecewise_interpolate_schedule(
        "cosine", 1.0, {8: 0.2, 20: 3.0}
    ),
    "onecycle-linear": lambda L: L.linear_onecycle_schedule(30, 0.5),
    "onecycle-cosine": lambda L: L.cosine_onecycle_schedule(30, 0.5, 0.2, 10.0, 100.0),
    "sgdr": lambda L: L.sgdr_schedule(
        [
            dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10),
            dict(init_value=0.1, peak_value=0.5, warmup_steps=3, decay_steps=15, end_value=0.01),
        ]
    ),
    "join": lambda L: L.join_schedules(
        [L.constant_schedule(1.0), L.linear_schedule(2.0, 0.0, 4)], [3]
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_match_optax(name):
    ours, theirs = SCHEDULES[name](FM), SCHEDULES[name](OPTAX)
    for count in range(41):
        want = float(theirs(jnp.asarray(count)))
        got = ours(torch.tensor(count))
        assert got.dtype == torch.float64 and got.dim() == 0
        assert abs(float(got) - want) <= TOL * max(1.0, abs(want)), (count, float(got), want)
        assert abs(float(ours(count)) - want) <= TOL * max(1.0, abs(want))


def test_incremental_and_periodic_updates_match_optax():
    new, old = _tree(1), _tree(2)
    for step_size in (0.0, 1e-3, 0.25, 1.0):
        ours = optim.incremental_update(new, old, step_size)
        theirs = optax.incremental_update(_to_jax(new), _to_jax(old), step_size)
        assert _max_diff(ours, theirs) <= TOL
    for steps in (0, 3, 4, 8):
        ours = optim.periodic_update(new, old, torch.tensor(steps), 4)
        theirs = optax.periodic_update(_to_jax(new), _to_jax(old), steps, 4)
        assert _max_diff(ours, theirs) == 0.0
    assert optim.global_norm(new).item() == pytest.approx(
        float(optax.tree.norm(_to_jax(new))), rel=TOL
    )


# names whose signature is optax's: every public optax name fm.optim has
SIGNED = sorted(
    n for n in optim.__all__ if hasattr(optax, n) and callable(getattr(optax, n)) and n[0].islower()
) + ["MultiSteps"]


def _default(value):
    """A default as a comparable value (optax's float32 dtype is torch's float32)."""
    if value is jnp.float32:
        return torch.float32
    if type(value).__name__ == "Precision":  # jax.lax.Precision.HIGHEST is "highest"
        return value.name.lower()
    if getattr(value, "__qualname__", None) == "_decay_rate_pow":  # Adafactor's default decay
        return optim._more_factored._decay_rate_pow
    if isinstance(value, optax.GradientTransformation):
        # lbfgs's default line search, an object of each library; that the two search
        # alike is what tests/optim/test_lbfgs_parity.py's default cases check
        return inspect.signature(optim.lbfgs).parameters["linesearch"].default
    if isinstance(value, optax.microbatching.AccumulationType):  # each library's enum
        return getattr(optim.AccumulationType, value.name)
    return value


@pytest.mark.parametrize("name", SIGNED)
def test_signatures_match_optax(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    assert list(ours) == list(theirs)
    for key, p in theirs.items():
        q = ours[key]
        assert q.kind == p.kind, key
        assert _default(p.default) == q.default or (p.default is q.default), (key, q.default)
