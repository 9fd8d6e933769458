"""Every optimiser of fm.optim on a tree with no leaves, as optax runs them: an empty
params tree, and a mask that chooses no leaf (``masked`` over an all-False mask, the
usual case of weight decay restricted to a group that happens to be empty)."""

import inspect
import warnings

import pytest
import torch

import funcmodels as fm

optim = fm.optim

# Values for the required arguments of the constructors (the others keep their defaults).
_REQUIRED = {
    "learning_rate": 0.1,
    "step_size": 0.1,
    "max_norm": 1.0,
    "max_delta": 1.0,
    "clipping": 0.1,
    "block_size": 2,
    "decay": 0.9,
    "factor": 0.5,
}


def _optimisers():
    """``(name, optimiser)`` for every public constructor of fm.optim whose required
    arguments are all in ``_REQUIRED`` and which returns a GradientTransformation."""
    out = []
    for name in sorted(optim.__all__):
        f = getattr(optim, name)
        if not inspect.isfunction(f):
            continue
        params = inspect.signature(f).parameters.values()
        required = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not all(r in _REQUIRED for r in required):
            continue
        try:
            with warnings.catch_warnings():  # (deprecated names warn as optax's do)
                warnings.simplefilter("ignore", DeprecationWarning)
                opt = f(*[_REQUIRED[r] for r in required])
        except TypeError:
            continue
        if isinstance(opt, optim.GradientTransformation):
            out.append((name, opt))
    return out


OPTIMISERS = _optimisers()


def test_the_table_covers_the_optimisers():
    # Guards the generic construction above: the names below must all be in the table.
    names = {n for n, _ in OPTIMISERS}
    assert len(names) >= 60
    assert {"adam", "adamw", "sgd", "lamb", "lars", "scale_by_trust_ratio", "sm3"} <= names


@pytest.mark.parametrize("name,opt", OPTIMISERS, ids=[n for n, _ in OPTIMISERS])
def test_empty_tree(name, opt):
    state = opt.init({})
    for _ in range(2):
        updates, state = opt.update({}, state, {})
        assert updates == {}


@pytest.mark.parametrize("name,opt", OPTIMISERS, ids=[n for n, _ in OPTIMISERS])
def test_mask_choosing_no_leaf(name, opt):
    params = {"a": torch.ones(3), "b": torch.full((2,), 2.0)}
    grads = {"a": torch.full((3,), 0.5), "b": torch.full((2,), -1.0)}
    masked = optim.masked(opt, {"a": False, "b": False})
    state = masked.init(params)
    for _ in range(2):
        updates, state = masked.update(grads, state, params)
        # Leaves the mask leaves out pass through unchanged (optax's rule).
        for k in grads:
            assert torch.equal(updates[k], grads[k])
