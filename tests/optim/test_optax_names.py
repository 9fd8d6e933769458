"""Which of optax's public names fm.optim has: every name of optax's top level and of its
submodules, against a written list of the ones not there (each with its reason in
NOTES.md, "Which optax names fm.optim has"). A name added to fm.optim or to optax moves a
name in or out of that list, and this test says which. Skipped when optax is absent."""

import pytest

import funcmodels.optim as fmo

optax = pytest.importorskip("optax")

SUBMODULES = [
    "assignment",
    "contrib",
    "losses",
    "microbatching",
    "perturbations",
    "projections",
    "schedules",
    "second_order",
    "transforms",
    "tree",
    "tree_utils",
]

# (module, name) pairs optax 0.2.8 has and fm.optim does not: its `experimental` module,
# empty in 0.2.8 (nothing to port).
NOT_YET = {("", "experimental")}


def _public(module) -> set[str]:
    return {n for n in dir(module) if not n.startswith("_")}


def _missing() -> set[tuple[str, str]]:
    out = {("", n) for n in _public(optax) if not hasattr(fmo, n)}
    for sub in SUBMODULES:
        theirs = getattr(optax, sub, None)
        if theirs is None:
            continue
        ours = getattr(fmo, sub, None)
        for n in _public(theirs):
            value = getattr(theirs, n)
            if type(value).__name__ == "module":
                continue  # optax's own imports (jax, jnp, ...), not its API
            if ours is None or not hasattr(ours, n):
                out.add((sub, n))
    return out


def test_optax_names_fm_optim_lacks_are_the_listed_ones():
    missing = _missing()
    assert missing - NOT_YET == set(), "optax names fm.optim lacks, not listed"
    assert NOT_YET - missing == set(), "listed as missing but present now: take them out"
