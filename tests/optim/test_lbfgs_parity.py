"""fm.optim's L-BFGS and line searches against optax, side by side, in float64.

Each case is one expression written once and built with ``optax`` and with ``fm.optim``;
both run the standard optax loop (``value_and_grad_from_state``, then ``update`` with
``value=``, ``grad=``, ``value_fn=``, then ``apply_updates``) on the same problem: a
quadratic, Rosenbrock in 2 and 5 dimensions, and a least-squares fit over a tree of two
leaves whose data travel as extra arguments of ``update``. At every iteration the params
must agree to ``1e-10`` (absolute, on values of order one) and the line search must make
the same discrete decisions (the same number of trial steps). Rosenbrock is run for 15
iterations: it amplifies the last-bit differences of the two libraries' gradients (1e-16
at the first steps, 1.3e-13 at step 15, 1.8e-11 at step 21: no branch differs, the step
counts stay equal). Skipped when jax or optax is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funcmodels import optim

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10
_G = np.random.default_rng(0)
_M = _G.standard_normal((4, 4))
Q = _M @ _M.T + 0.5 * np.eye(4)  # symmetric positive definite
C = _G.standard_normal(4)
X = _G.standard_normal((8, 3))
Y = _G.standard_normal((8, 2))


def _problems(np_like):
    """The losses, written once for torch and for jax.numpy (``np_like``)."""

    def quadratic(p):
        x = p["x"]
        return 0.5 * (x * (np_like.asarray(Q) @ x)).sum() - (np_like.asarray(C) * x).sum()

    def rosenbrock(p):
        x = p["x"]
        return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()

    def least_squares(p, x, y):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    return {"quadratic": quadratic, "rosenbrock": rosenbrock, "least_squares": least_squares}


class _Torch:
    asarray = staticmethod(torch.as_tensor)


FM_FNS = _problems(_Torch)
JAX_FNS = _problems(jnp)
START = {
    "quadratic": {"x": np.array([1.0, -2.0, 0.5, 3.0])},
    "rosenbrock": {"x": np.array([-1.2, 1.0])},
    "rosenbrock5": {"x": np.array([-1.2, 1.0, -0.5, 0.8, 1.3])},
    "least_squares": {
        "b": np.array([0.1, -0.2]),
        "w": np.array([[0.5, -1.0], [0.2, 0.3], [1.0, 0.0]]),
    },
}

# name -> (expression of a library, problem, iterations, whether the state keeps the grad)
CASES = {
    "lbfgs-quadratic": (lambda o: o.lbfgs(), "quadratic", 12, True),
    "lbfgs-rosenbrock": (lambda o: o.lbfgs(), "rosenbrock", 15, True),
    "lbfgs-rosenbrock5": (lambda o: o.lbfgs(), "rosenbrock5", 15, True),
    "lbfgs-least-squares": (lambda o: o.lbfgs(), "least_squares", 15, True),
    "lbfgs-memory-2": (lambda o: o.lbfgs(memory_size=2), "rosenbrock5", 15, True),
    "lbfgs-no-scale": (lambda o: o.lbfgs(scale_init_precond=False), "rosenbrock", 15, True),
    "lbfgs-zoom-keep": (
        lambda o: o.lbfgs(
            linesearch=o.scale_by_zoom_linesearch(
                10, max_learning_rate=2.0, approx_dec_rtol=None, initial_guess_strategy="keep"
            )
        ),
        "rosenbrock",
        15,
        True,
    ),
    "lbfgs-zoom-tight": (
        lambda o: o.lbfgs(
            linesearch=o.scale_by_zoom_linesearch(
                4, increase_factor=3.0, curv_rtol=0.1, slope_rtol=0.3, stepsize_precision=1e-3
            )
        ),
        "rosenbrock5",
        12,
        True,
    ),
    "lbfgs-backtracking": (
        lambda o: o.lbfgs(linesearch=o.scale_by_backtracking_linesearch(20, store_grad=True)),
        "rosenbrock5",
        15,
        True,
    ),
    "lbfgs-lr-no-search": (
        lambda o: o.lbfgs(learning_rate=0.05, linesearch=None),
        "quadratic",
        12,
        False,
    ),
    "sgd-backtracking": (
        lambda o: o.chain(o.sgd(1.0), o.scale_by_backtracking_linesearch(15, store_grad=True)),
        "quadratic",
        15,
        True,
    ),
    "sgd-backtracking-tols": (
        lambda o: o.chain(
            o.sgd(1.0),
            o.scale_by_backtracking_linesearch(
                8, 0.3, 0.5, 2.0, max_learning_rate=3.0, atol=1e-3, rtol=1e-2
            ),
        ),
        "least_squares",
        15,
        False,
    ),
    "sgd-zoom": (
        lambda o: o.chain(o.sgd(1.0), o.scale_by_zoom_linesearch(15)),
        "least_squares",
        15,
        True,
    ),
}


def _data(lib_is_fm: bool, problem: str) -> dict:
    if problem != "least_squares":
        return {}
    conv = torch.as_tensor if lib_is_fm else jnp.asarray
    return {"x": conv(X), "y": conv(Y)}


def _run(lib, case: str):
    make, problem, steps, stored = CASES[case]
    is_fm = lib is optim
    fn = (FM_FNS if is_fm else JAX_FNS)[problem.rstrip("5")]
    conv = torch.as_tensor if is_fm else jnp.asarray
    params = {k: conv(v) for k, v in START[problem].items()}
    data = _data(is_fm, problem)
    opt = make(lib)
    state = opt.init(params)
    if is_fm:
        update, plain = opt.update, lambda p, **kw: torch.func.grad_and_value(fn)(p, **kw)[::-1]
    else:
        update, plain = jax.jit(opt.update, static_argnames="value_fn"), jax.value_and_grad(fn)
    from_state = lib.value_and_grad_from_state(fn)
    trail = []
    for _ in range(steps):
        if stored:
            value, grad = from_state(params, state=state, **data)
        else:
            value, grad = plain(params, **data)
        updates, state = update(grad, state, params, value=value, grad=grad, value_fn=fn, **data)
        params = lib.apply_updates(params, updates)
        search = state[-1] if isinstance(state, tuple) and hasattr(state[-1], "info") else None
        steps_taken = None if search is None else int(search.info.num_linesearch_steps)
        trail.append(({k: np.asarray(v) for k, v in params.items()}, steps_taken))
    return trail


@pytest.mark.parametrize("case", sorted(CASES))
def test_iterates_match_optax(case):
    ours, theirs = _run(optim, case), _run(optax, case)
    for i, ((p, n), (q, m)) in enumerate(zip(ours, theirs, strict=True)):
        assert n == m, (case, i, "line-search steps", n, m)
        for k in q:
            assert p[k].dtype == np.float64
            np.testing.assert_allclose(p[k], q[k], rtol=0, atol=TOL, err_msg=f"{case} step {i}")


def test_lbfgs_state_matches_optax():
    """The memory, weights and count of scale_by_lbfgs after several updates."""
    for lib in (optim, optax):
        conv = torch.as_tensor if lib is optim else jnp.asarray
        opt = lib.scale_by_lbfgs(memory_size=3)
        params = {"x": conv(np.array([0.3, -0.2, 1.0]))}
        state = opt.init(params)
        for t in range(5):  # more updates than the memory holds: the ring wraps
            grad = {"x": conv(np.array([np.sin(t + 1.0), np.cos(2.0 * t), t * 0.1 - 0.2]))}
            updates, state = opt.update(grad, state, params)
            params = {"x": params["x"] - 0.1 * updates["x"]}
        if lib is optim:
            ours = (np.asarray(updates["x"]), state)
        else:
            theirs = (np.asarray(updates["x"]), state)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=TOL)
    assert int(ours[1].count) == int(theirs[1].count) == 5
    for field in ("diff_params_memory", "diff_updates_memory"):
        a, b = getattr(ours[1], field)["x"], getattr(theirs[1], field)["x"]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=TOL)
    np.testing.assert_allclose(
        np.asarray(ours[1].weights_memory), np.asarray(theirs[1].weights_memory), rtol=1e-12
    )


def test_polyak_inside_chain_matches_optax():
    """scale_by_polyak takes value= through a chain now (it could not before)."""
    got = {}
    for lib in (optim, optax):
        conv = torch.as_tensor if lib is optim else jnp.asarray
        opt = lib.chain(lib.clip(10.0), lib.scale_by_polyak(max_learning_rate=0.5), lib.scale(-1.0))
        g = {"a": conv(np.array([1.0, -2.0])), "b": conv(np.array([[0.5]]))}
        state = opt.init(g)
        updates, _ = opt.update(g, state, g, value=conv(np.array(1.5)))
        got[lib.__name__] = {k: np.asarray(v) for k, v in updates.items()}
    for k in ("a", "b"):
        np.testing.assert_allclose(got["funcmodels.optim"][k], got["optax"][k], rtol=0, atol=TOL)
