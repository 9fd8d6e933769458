"""``inject_stateful_hyperparams`` and ``WrappedSchedule`` against optax 0.2.8, side by
side in float64 (1e-10 absolute on every update, param and injected value), plus the
state's layout, checkpointing and fm.optim's dtype rule."""

from __future__ import annotations

import warnings

import pytest
import torch

import funcmodels as fm
from funcmodels import optim

from .test_optax_parity import FM, OPTAX, TOL, _max_diff, _to_jax, _tree, linear, sched

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")


class Halving:
    """A stateful schedule written once for both libraries: the learning rate halves at
    each step whose ``value`` (an extra argument of ``update``) exceeds 1."""

    def __init__(self, where, zero):
        self.where, self.zero = where, zero

    def init(self):
        return {"halvings": self.zero()}

    def update(self, state, value=0.0, **extra):
        return {"halvings": self.where(value > 1.0, state["halvings"] + 1.0, state["halvings"])}

    def __call__(self, state, **extra):
        return 0.1 * 0.5 ** state["halvings"]


def halving(lib):
    if lib is FM:
        return Halving(torch.where, lambda: torch.zeros((), dtype=torch.float64))
    return Halving(jnp.where, lambda: jnp.zeros((), jnp.float64))


def _matrices(lib):
    """A mask function (a callable argument that is not a schedule)."""
    if lib is OPTAX:
        return lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    return lambda p: fm.tree.map(lambda x: x.dim() > 1, p)


CASES = {
    "adam-schedule": lambda L: L.inject_stateful_hyperparams(L.adam)(learning_rate=sched(L)),
    "adamw-numbers": lambda L: L.inject_stateful_hyperparams(L.adamw)(
        0.01, b1=0.8, weight_decay=linear(L)
    ),
    "scale_by_adam": lambda L: L.inject_stateful_hyperparams(L.scale_by_adam)(b1=0.5),
    "static-mask": lambda L: L.inject_stateful_hyperparams(L.adamw, static_args="mask")(
        0.01, weight_decay=0.1, mask=_matrices(L)
    ),
    "sgd-stateful": lambda L: L.inject_stateful_hyperparams(L.sgd)(halving(L), momentum=0.9),
}
EDITS = {"adamw-numbers": (3, "learning_rate", 0.05), "scale_by_adam": (2, "b2", 0.9)}
VALUES = [0.5, 2.0, 3.0, 0.1, 5.0, 0.2]  # the extra argument ``value`` at each step


def _run(lib, name):
    to = (lambda t: t) if lib is FM else _to_jax
    params = to(_tree(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opt = CASES[name](lib)
    state = opt.init(params)
    update = opt.update if lib is FM else jax.jit(opt.update)
    seen = []
    for step, value in enumerate(VALUES):
        if name in EDITS and EDITS[name][0] == step:
            state.hyperparams[EDITS[name][1]] = EDITS[name][2]
        grads = to(_tree(100 + step, 1.0 + step))
        value = torch.tensor(value, dtype=torch.float64) if lib is FM else jnp.float64(value)
        updates, state = update(grads, state, params, value=value)
        params = lib.apply_updates(params, updates)
        seen.append((updates, params, dict(sorted(state.hyperparams.items()))))
    return seen, state


@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_optax(name):
    ours, ours_state = _run(FM, name)
    theirs, theirs_state = _run(OPTAX, name)
    for (u, p, h), (tu, tp, th) in zip(ours, theirs, strict=True):
        assert _max_diff(u, tu) <= TOL and _max_diff(p, tp) <= TOL
        assert list(h) == list(th)
        for key in h:
            assert abs(float(h[key]) - float(th[key])) <= TOL, key
    assert type(ours_state).__name__ == type(theirs_state).__name__
    assert ours_state._fields == theirs_state._fields
    assert sorted(ours_state.hyperparams_states) == sorted(theirs_state.hyperparams_states)
    assert int(ours_state.count) == int(theirs_state.count) == len(VALUES)


def test_stateful_schedule_sees_the_extra_arguments():
    _, state = _run(FM, "sgd-stateful")
    # values above 1 at steps 1, 2 and 4: three halvings, all before the last step's value
    assert float(state.hyperparams_states["learning_rate"]["halvings"]) == 3.0
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1 / 8, abs=1e-15)


def test_wrapped_schedule_matches_optax():
    ours = optim.WrappedSchedule(optim.linear_schedule(1.0, 0.0, 4))
    theirs = optax.WrappedSchedule(optax.linear_schedule(1.0, 0.0, 4))
    s, t = ours.init(), theirs.init()
    assert type(s).__name__ == "WrappedScheduleState" and s._fields == t._fields
    for _ in range(6):
        assert abs(float(ours(s)) - float(theirs(t))) <= TOL
        s, t = ours.update(s, value=1.0), theirs.update(t, value=1.0)
    assert int(s.count) == int(t.count) == 6 and s.count.dtype == torch.int64


def test_warns_deprecated_as_optax():
    with pytest.warns(DeprecationWarning, match="use inject_hyperparams"):
        optim.inject_stateful_hyperparams(optim.adam)


def test_bad_arguments():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match="static_args"):
            optim.inject_stateful_hyperparams(optim.adam, static_args="nope")
        with pytest.raises(TypeError, match="factory"):
            optim.inject_stateful_hyperparams(3)
        opt = optim.inject_stateful_hyperparams(optim.adam)(1e-2)
    with pytest.raises(TypeError, match="WrappedSchedule"):
        optim.WrappedSchedule(0.1)
    params = {"w": torch.ones(3)}
    with pytest.raises(TypeError, match="InjectStatefulHyperparamsState"):
        opt.update(params, optim.adam(1e-2).init(params), params)


def test_float32_leaves_keep_their_dtype_and_inputs_are_not_mutated():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opt = optim.inject_stateful_hyperparams(optim.adam)(
            optim.linear_schedule(0.1, 0.01, 5), b1=torch.tensor(0.9, dtype=torch.float64)
        )
    params = {"s": torch.ones((), dtype=torch.float32), "w": torch.ones(3, dtype=torch.float32)}
    state = opt.init(params)
    grads = {"s": torch.tensor(0.5), "w": torch.arange(3.0)}
    copies = {k: v.clone() for k, v in grads.items()}
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    assert all(v.dtype == torch.float32 for v in params.values())
    assert all(v.dtype == torch.float32 for v in state.inner_state[0].mu.values())
    assert all(torch.equal(grads[k], copies[k]) for k in grads)


def test_state_checkpoints(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opt = optim.inject_stateful_hyperparams(optim.adam)(optim.linear_schedule(0.1, 0.0, 9))
    params = {"w": torch.randn(4, dtype=torch.float64)}
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    fm.checkpoint.save(tmp_path / "s.safetensors", state)
    back = fm.checkpoint.load(tmp_path / "s.safetensors")
    assert type(back) is optim.InjectStatefulHyperparamsState
    assert type(back.hyperparams_states["learning_rate"]) is optim.WrappedScheduleState
    a, _ = opt.update(params, state, params)
    b, _ = opt.update(params, back, params)
    assert torch.equal(a["w"], b["w"])
