"""The contract every registered layer type keeps (DESIGN.md, "What works means here"):

* its config round trip: ``spec.to_config()`` (in JSON, with and without defaults, alone
  and as an entry of a chain) gives the spec back through ``fm.from_config``;
* its file round trip: ``fm.save``/``fm.load`` give the spec, params and state bitwise,
  and the loaded model computes the same output bitwise;
* its torch.nn round trip: ``transforms.to_module`` holds the same ``state_dict``, a
  sub-layer with a ``torch.nn`` namesake is that torch class, the module computes what
  ``fm.apply`` does (in train mode too, buffers included, where the layer draws no random
  numbers), and ``transforms.from_module`` gives back the spec, params and state bitwise;
* one graph under ``torch.compile(fullgraph=True)`` where the layer is static, in eval
  and in train mode, with the eager outputs and new state.

The layer types come from the registry: funcmodels' own and those ``transforms``
registers. Each is checked on its examples in ``EXAMPLES`` (tests/layer_examples.py, the
one table), or, for a type built without arguments and not listed there, on ``cls()``
with a ``DEFAULT_SHAPE`` input. A registered type with neither fails
:func:`test_every_registered_type_has_an_example`, so a new layer type adds its examples
there.

Tolerances: round trips are exact (the same tensors, the same kernels). The torch module
computes exactly what ``fm.apply`` does, except where an example says otherwise: attention
runs BLAS on tensors at other addresses, whose last bit may round differently (``CLOSE``);
Embedding's ``max_norm`` renormalises with torch's own in-place kernel (``RENORM``); torch's
recurrent kernels sum in another order than the scan (``F64`` in float64, ``F32`` in
float32). Train-mode buffers (running statistics) are within ``STATS``: the same formula,
the reduction order may differ by a rounding step. Compiled outputs are within
``COMPILED_TOL`` of eager ones (Inductor fuses and reorders float arithmetic), new states
within ``STATS``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch._dynamo
import torch.utils._pytree as pytree

import funcmodels as fm
import transforms
from funcmodels import _registry
from tests.helpers import randomised, torch_run
from tests.layer_examples import (
    COMPILED_ELSEWHERE,
    COMPILED_TOL,
    DEFAULT_SHAPE,
    EXACT,
    EXAMPLES,
    STATS,
    Example,
    x,
)

nn = fm.nn

pytestmark = [
    # torch's own warnings about its fast paths and about mixing bool and float masks
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
    # nearest-exact has no vmap batching rule in torch: it runs, with a slow-path warning
    pytest.mark.filterwarnings("ignore:There is a performance drop"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


def _registered() -> list[type]:
    """Every public spec type of funcmodels and transforms, in the registry's order."""
    return [
        cls
        for cls in _registry.types().values()
        if cls.__module__.split(".")[0] in ("funcmodels", "transforms")
    ]


def _examples(cls: type) -> list[Example]:
    if cls in EXAMPLES:
        return EXAMPLES[cls]
    try:
        spec = cls()
    except (TypeError, ValueError):
        return []
    return [Example(spec, x(*DEFAULT_SHAPE))]


CASES = [
    pytest.param(example, id=f"{cls.__name__}-{i}")
    for cls in _registered()
    for i, example in enumerate(_examples(cls))
]
# Known defects, each pinned to fail until it is fixed (strict: a fix shows up as XPASS).
CONFIG_DEFECTS: dict[type, str] = {}


def _config_marks(example: Example) -> list:
    return [
        pytest.mark.xfail(strict=True, reason=CONFIG_DEFECTS[cls])
        for cls in {type(s) for _, s in example.spec.walk()} & set(CONFIG_DEFECTS)
    ]


CONFIG_CASES = [
    pytest.param(*case.values, id=case.id, marks=_config_marks(case.values[0])) for case in CASES
]
COMPILED = [case.values[0] for case in CASES if case.values[0].compiled]


def test_every_registered_type_has_an_example():
    missing = [cls.__name__ for cls in _registered() if not _examples(cls)]
    assert not missing, f"add examples of {missing} to EXAMPLES in tests/layer_examples.py"
    # and every example is of the type it is listed under, somewhere in its spec
    for cls, examples in EXAMPLES.items():
        for example in examples:
            found = {type(s) for _, s in example.spec.walk()}
            assert cls in found, f"{example.spec!r} holds no {cls.__name__}"


# -- comparisons ------------------------------------------------------------------------------


def assert_same_entries(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """The same names in the same order, dtypes and values bitwise."""
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name


def assert_trees_close(got: Any, want: Any, **tol: float) -> None:
    got_leaves, got_tree = pytree.tree_flatten(got)
    want_leaves, want_tree = pytree.tree_flatten(want)
    assert got_tree == want_tree
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def call_module(example: Example, module: torch.nn.Module) -> Any:
    """The torch module's output on its regular (non-fast) path."""
    inputs = example.input
    if example.call is not None:
        return torch_run(example.call, module, inputs)
    if isinstance(inputs, tuple):
        return torch_run(module, *inputs)
    if isinstance(inputs, dict):
        return torch_run(module, **inputs)
    return torch_run(module, inputs)


def torch_namesakes(spec: fm.Spec, module: torch.nn.Module) -> list[tuple[str, type]]:
    """(path, torch.nn class) of every layer of ``spec`` with a namesake in torch.nn, except
    inside a layer the module runs functionally (a ``FunctionalModule`` has no sub-layers)."""
    out = []
    functional = [
        name for name, m in module.named_modules() if isinstance(m, transforms.FunctionalModule)
    ]
    for path, sub in spec.walk():
        path = path.rstrip(".")
        twin = getattr(torch.nn, type(sub).__name__, None)
        inside = any(path.startswith(f"{f}.") or f == "" for f in functional if f != path)
        if type(sub).__module__.startswith("funcmodels.nn") and isinstance(twin, type):
            if not inside:
                out.append((path, twin))
    return out


def train_without_a_key(params, state, inputs) -> fm.Output | None:
    """``fm.run`` in train mode, or ``None`` for a layer that draws random numbers there."""
    try:
        return fm.run(params, inputs, state=state, train=True)
    except ValueError as e:
        if "key" not in str(e):
            raise
        return None


# -- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("example", CONFIG_CASES)
def test_config_round_trip(example):
    spec = example.spec
    for defaults in (False, True):
        doc = spec.to_config(defaults=defaults)
        assert fm.from_config(doc) == spec
        assert fm.from_config(json.loads(json.dumps(doc))) == spec
    written = spec.to_config()
    if isinstance(written, dict):
        assert written["type"] == _registry.config_name_of(type(spec))
    chain = nn.Sequential(spec, nn.Identity())
    assert fm.from_config(json.loads(json.dumps(chain.to_config()))) == chain


@pytest.mark.parametrize("example", CASES)
def test_file_round_trip(example, tmp_path):
    params, state = example.trees()
    path = tmp_path / "m.safetensors"
    fm.save(path, params, state)
    loaded, loaded_state = fm.load(path, example.spec)
    assert loaded.spec == example.spec
    assert_same_entries(fm.to_state_dict(loaded, loaded_state), fm.to_state_dict(params, state))
    if example.runs:
        got = fm.apply(loaded, example.input, state=loaded_state)
        assert_trees_close(got, fm.apply(params, example.input, state=state), **EXACT)


@pytest.mark.parametrize("example", CASES)
def test_to_module_round_trip(example):
    params, state = example.trees()
    entries = fm.to_state_dict(params, state)
    module = transforms.to_module(params, state)
    assert_same_entries(module.state_dict(), entries)
    for path, twin in torch_namesakes(example.spec, module):
        # torch's class itself, or a transforms subclass that also takes fm's input form
        layer = type(module.get_submodule(path))
        ours = issubclass(layer, twin) and layer.__module__.startswith("transforms")
        assert layer is twin or ours, path
    # read back before the module runs: torch's max_norm and train mode write into it
    back, back_state = transforms.from_module(module)
    assert back.spec == example.spec
    assert_same_entries(fm.to_state_dict(back, back_state), entries)
    if example.runs:
        want = fm.apply(params, example.input, state=state)
        assert_trees_close(call_module(example, module.eval()), want, **example.tol)
        out = train_without_a_key(params, state, example.input)
        if out is not None:
            with torch.random.fork_rng():  # a FunctionalModule draws its key there
                got = call_module(example, module.train())
            # normalised by this batch's statistics: the rounding of the reductions shows
            assert_trees_close(got, out.out, **(STATS if example.tol is EXACT else example.tol))
            buffers = module.state_dict()
            for name, t in out.state.flat().items():
                torch.testing.assert_close(buffers[name], t, **STATS, msg=name)


def test_every_static_type_is_compiled():
    compiled = {type(s) for example in COMPILED for _, s in example.spec.walk()}
    static = {cls for cls in _registered() if any(e.static for e in _examples(cls))}
    missing = static - compiled - set(COMPILED_ELSEWHERE)
    assert not missing, f"no compiled example holds {sorted(c.__name__ for c in missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_static_layers_compile_to_one_graph(train):
    """The examples compiled in this mode, all in one function, compiled with
    ``fullgraph=True``: a graph break anywhere raises, naming its source line. dynamo's
    own backend runs the captured graph as it is (a compiled layer may take another path
    than in eager mode, the scan rather than torch's recurrent kernel, say): its outputs
    are the eager ones within ``COMPILED_TOL`` and its new states within ``STATS``, for two
    keys (no key is baked into the graph as a constant). Inductor's code is checked where
    it could differ from eager in more than rounding, by the next test."""
    mode = "train" if train else "eval"
    examples = [example for example in COMPILED if mode in example.compiled]
    trees = [example.trees() for example in examples]
    inputs = [example.input for example in examples]

    def run_all(trees, inputs, key):
        outs = [
            fm.run(p, xi, state=s, key=key, train=train)
            for (p, s), xi in zip(trees, inputs, strict=True)
        ]
        return [(o.out, o.state) for o in outs]

    torch._dynamo.reset()
    try:
        compiled = torch.compile(run_all, fullgraph=True, backend="eager")
        for seed in (2, 3):
            got = compiled(trees, inputs, fm.key(seed))
            want = run_all(trees, inputs, fm.key(seed))
            for example, (out, state), (want_out, want_state) in zip(
                examples, got, want, strict=True
            ):
                try:
                    assert_trees_close(out, want_out, **COMPILED_TOL)
                    assert_trees_close(state, want_state, **STATS)
                except AssertionError as e:
                    raise AssertionError(f"{example.spec!r}: {e}") from e
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_keeps_the_random_bits_and_the_running_statistics():
    """One Inductor compile of a train step through every kind of randomness (dropout
    masks, RReLU slopes) and running statistics: the same mask bits and new state as
    eager, for two keys; outputs within ``COMPILED_TOL`` (Inductor reorders float
    arithmetic around the masks), new state within ``STATS``."""
    spec = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.RReLU(0.1, 0.3),
        nn.Dropout2d(0.1),
        nn.FeatureAlphaDropout(0.2),
        nn.Flatten(2),
        nn.Dropout1d(0.3),
        nn.Flatten(),
        nn.AlphaDropout(0.4),
        nn.Linear(36, 8),
        nn.Dropout(0.5),
    )
    params, state = randomised(spec)
    inputs = x(3, 2, 5, 5)

    def step(params, state, key):
        out = fm.run(params, inputs, state=state, key=key, train=True)
        return out.out, out.state

    torch._dynamo.reset()
    try:
        compiled = torch.compile(step, fullgraph=True)
        for seed in (2, 3):
            (out, new), (want, want_state) = (
                compiled(params, state, fm.key(seed)),
                step(params, state, fm.key(seed)),
            )
            assert torch.equal(out == 0, want == 0)  # the same masks
            torch.testing.assert_close(out, want, **COMPILED_TOL)
            for name, t in want_state.flat().items():
                torch.testing.assert_close(new[name], t, **STATS, msg=name)
    finally:
        torch._dynamo.reset()
