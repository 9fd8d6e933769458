"""What every ``fm.optim.contrib`` name shares: optax.contrib's signatures (by
``inspect``), states that go through ``fm.checkpoint``, the dtype rule of fm.optim (each
leaf keeps its dtype, float64 tensor hyperparameters never promote a float32 0-dim leaf),
inputs never written, and the leaf-by-leaf path under ``vmap`` over an ensemble equal to a
loop over its members."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels.checkpoint import _registry
from funcmodels.optim import contrib

from ..checkpoint.test_format import same
from .contrib_harness import jnp, optax

FUNCTIONS = [n for n in contrib.__all__ if n[0].islower()]
STATES = [n for n in contrib.__all__ if n.endswith("State")]


def test_every_name_is_optax_contribs():
    # (the pair a complex leaf is split into appears in states, so checkpoints need its
    # name: optax defines it in optax.contrib._complex_valued without exporting it)
    extra = {"SplitRealAndImaginaryArrays"}
    assert set(contrib.__all__) - extra <= set(dir(optax.contrib))
    assert optax.contrib._complex_valued.SplitRealAndImaginaryArrays._fields == (
        contrib.SplitRealAndImaginaryArrays._fields
    )


def _same_default(ours, theirs) -> bool:
    if theirs is inspect.Parameter.empty:
        return ours is inspect.Parameter.empty
    if isinstance(theirs, optax.GradientTransformation):  # Sophia's estimator: see below
        return ours is None
    if theirs is jnp.float32:
        return ours is torch.float32
    if callable(theirs) and callable(ours):  # ADOPT's clip value, count**0.25
        return all(
            float(ours(torch.tensor(c, dtype=torch.float64))) == pytest.approx(float(theirs(c)))
            for c in (0, 1, 7, 100)
        )
    return ours == theirs or ours is theirs


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signatures_match_optax(name):
    """Names, order, kinds and defaults; two defaults are objects of optax's that compare
    by behaviour: ADOPT's clip value function, and Sophia's estimator (optax makes one at
    import, shared by every ``sophia``; fm.optim's default ``None`` makes a fresh one)."""
    ours = inspect.signature(getattr(contrib, name)).parameters
    theirs = inspect.signature(getattr(optax.contrib, name)).parameters
    assert list(ours) == list(theirs)
    for key, p in theirs.items():
        assert ours[key].kind == p.kind, key
        assert _same_default(ours[key].default, p.default), (key, ours[key].default, p.default)


@pytest.mark.parametrize("name", STATES)
def test_states_have_optax_fields_and_are_registered(name):
    cls = getattr(contrib, name)
    theirs = getattr(optax.contrib, name)
    assert cls._fields == theirs._fields
    assert _registry.resolve(_registry.name_of(cls)) is cls


def _params():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.ReLU(), fm.nn.Linear(4, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 3))
    grads = torch.func.grad(lambda p: fm.apply(p, x).square().sum())(params)
    return params, grads


OPTIMISERS = {
    "schedule_free_adamw": lambda: contrib.schedule_free_adamw(1e-2),
    "prodigy": lambda: contrib.prodigy(),
    "dadapt_adamw": lambda: contrib.dadapt_adamw(),
    "sam": lambda: contrib.sam(fm.optim.adam(1e-2), fm.optim.sgd(0.05)),
    "mechanize": lambda: contrib.mechanize(fm.optim.adam(1e-2)),
    "cocob": lambda: contrib.cocob(),
    "ademamix": lambda: contrib.ademamix(1e-2),
    "simplified_ademamix": lambda: contrib.simplified_ademamix(1e-2),
    "adopt": lambda: contrib.adopt(1e-2),
    "muon": lambda: contrib.muon(1e-2),
    "madgrad": lambda: contrib.madgrad(1e-2),
    "acprop": lambda: contrib.acprop(1e-2),
    "dog": lambda: contrib.dog(),
    "dowg": lambda: contrib.dowg(),
    "split_real_and_imaginary": lambda: contrib.split_real_and_imaginary(fm.optim.adam(1e-2)),
}


WITH_VALUE = {
    "reduce_on_plateau": lambda: contrib.reduce_on_plateau(0.5, 1),
    "momo": lambda: contrib.momo(adapt_lower_bound=True),
    "momo_adam": lambda: contrib.momo_adam(),
}


@pytest.mark.parametrize("name", [*OPTIMISERS, *WITH_VALUE])
def test_states_round_trip_through_checkpoints(name, tmp_path):
    params, grads = _params()
    if name == "split_real_and_imaginary":  # a complex leaf among the params
        params, grads = {"c": torch.randn(3, dtype=torch.complex64)}, {"c": torch.randn(3) * 1j}
    valued = name in WITH_VALUE
    opt = WITH_VALUE[name]() if valued else OPTIMISERS[name]()
    kw = {"value": torch.tensor(1.0)} if valued else {}
    s = opt.init(params)
    _, s = opt.update(grads, s, params, **kw)  # a state past its first step
    tree = {"params": params, "opt": s}
    fm.checkpoint.save(tmp_path / "c", tree)
    got = fm.checkpoint.load(tmp_path / "c", like=tree)
    same(got, tree)
    want_u, want_s = opt.update(grads, s, params, **kw)
    got_u, got_s = opt.update(grads, got["opt"], got["params"], **kw)
    same(got_u, want_u)
    same(got_s, want_s)


def _f64(x):
    return torch.tensor(x, dtype=torch.float64)


# hyperparameters as float64 0-dim tensors, for float32 params
TENSOR_HYPER = {
    "schedule_free_adamw": lambda: contrib.schedule_free_adamw(_f64(1e-2), b1=_f64(0.9)),
    "prodigy": lambda: contrib.prodigy(_f64(1.0), (_f64(0.9), _f64(0.99)), eps=_f64(1e-8)),
    "dadapt_adamw": lambda: contrib.dadapt_adamw(_f64(1.0), (_f64(0.9), _f64(0.99))),
    "cocob": lambda: contrib.cocob(_f64(1.0), _f64(100.0), _f64(1e-8)),
    "ademamix": lambda: contrib.ademamix(_f64(1e-2), _f64(0.9), _f64(0.99), _f64(0.999)),
    "simplified_ademamix": lambda: contrib.simplified_ademamix(_f64(1e-2), _f64(0.9)),
    "adopt": lambda: contrib.adopt(_f64(1e-2), _f64(0.9), _f64(0.99), _f64(1e-6)),
    "mechanize": lambda: contrib.mechanize(fm.optim.sgd(0.1), _f64(1e-2), _f64(1e-8)),
    "muon": lambda: contrib.muon(_f64(1e-2), beta=_f64(0.9)),
    "madgrad": lambda: contrib.madgrad(_f64(1e-2), _f64(0.9), _f64(0.1), _f64(1e-6)),
    "acprop": lambda: contrib.acprop(_f64(1e-2), _f64(0.9), _f64(0.99), _f64(1e-16)),
    "dog": lambda: contrib.dog(_f64(1.0), ("distance", _f64(1e-3)), _f64(1e-8)),
    "dowg": lambda: contrib.dowg(_f64(1.0), _f64(1e-3), _f64(1e-4)),
}


def _dtypes(tree):
    return [x.dtype for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("name", list(TENSOR_HYPER))
def test_leaves_keep_their_dtype(name):
    """float32 params (a 0-dim leaf among them) with float64 tensor hyperparameters:
    updates, params and state keep their dtypes over steps; nothing passed in changes."""
    params = {"w": torch.randn(4, 3), "b": torch.randn(3), "s": torch.randn(())}
    opt = TENSOR_HYPER[name]()
    state = opt.init(params)
    before = _dtypes(state)
    for step in range(3):
        grads = {k: torch.randn_like(p) * (step + 1) for k, p in params.items()}
        copies = [x.clone() for x in pytree.tree_leaves((grads, state, params))]
        updates, new_state = opt.update(grads, state, params)
        for a, b in zip(pytree.tree_leaves((grads, state, params)), copies, strict=True):
            assert torch.equal(a, b), "an input was written"
        assert _dtypes(updates) == [torch.float32] * 3
        assert _dtypes(new_state) == before
        params, state = fm.optim.apply_updates(params, updates), new_state
        assert _dtypes(params) == [torch.float32] * 3


def test_reduce_on_plateau_keeps_dtypes_and_takes_a_float64_value():
    params = {"w": torch.randn(4, 3), "s": torch.randn(())}
    opt = contrib.reduce_on_plateau(0.5, 1)
    state = opt.init(params)
    for v in (3.0, 3.0, 3.0):
        updates, state = opt.update(params, state, params, value=_f64(v))
        assert _dtypes(updates) == [torch.float32] * 2
    # the first value is the best; each later one is a plateau of patience 1
    assert state.scale.dtype == torch.float32 and float(state.scale) == 0.25


VMAPPED = {
    "ademamix": lambda: contrib.ademamix(1e-2, alpha=2.0),
    "adopt": lambda: contrib.adopt(1e-2, nesterov=True),
    "cocob": lambda: contrib.cocob(),
    "schedule_free_adamw": lambda: contrib.schedule_free_adamw(1e-2),
    "prodigy": lambda: contrib.prodigy(),
    "muon": lambda: contrib.muon(1e-2),
    "madgrad": lambda: contrib.madgrad(1e-2),
    "acprop": lambda: contrib.acprop(1e-2),
    "dog": lambda: contrib.dog(),
    "dowg": lambda: contrib.dowg(),
}


@pytest.mark.parametrize("name", list(VMAPPED))
def test_vmap_over_an_ensemble_equals_a_loop(name):
    """Three members trained at once under ``vmap`` (the leaf-by-leaf path) against each
    member alone, over three steps, within 1e-12 (float64)."""
    members = 3
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(members, *shape, generator=g, dtype=torch.float64)

    params = {"w": rand(4, 3), "b": rand(3), "s": rand()}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(3)]
    opt = VMAPPED[name]()

    def step(p, s, gr):
        u, s = opt.update(gr, s, p)
        return fm.optim.apply_updates(p, u), s

    p, s = params, torch.func.vmap(opt.init)(params)
    for gr in grads:
        p, s = torch.func.vmap(step)(p, s, gr)
    for i in range(members):
        pi = {k: v[i] for k, v in params.items()}
        si = opt.init(pi)
        for gr in grads:
            pi, si = step(pi, si, {k: v[i] for k, v in gr.items()})
        for k in pi:
            torch.testing.assert_close(p[k][i], pi[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("factory", [contrib.ademamix, contrib.prodigy, contrib.muon])
def test_inject_hyperparams_rebuilds_contrib_optimisers(factory):
    """``inject_hyperparams(contrib.X)(learning_rate=...)`` as with optax; a learning rate
    replaced in the state is the one used (Muon's int ``ns_steps``, held as a tensor, sets
    its loop)."""
    params = {
        "w": torch.randn(3, 2, dtype=torch.float64),
        "s": torch.randn((), dtype=torch.float64),
    }
    opt = fm.optim.inject_hyperparams(factory)(learning_rate=0.01)
    state = opt.init(params)
    state.hyperparams["learning_rate"] = torch.tensor(0.0, dtype=torch.float64)
    updates, _ = opt.update(params, state, params)
    assert all(float(u.abs().max()) == 0.0 for u in updates.values())
