"""Dropout's masks and ``fold_in`` under ``torch.compile``: one opaque call each
(``funcmodels::keep_mask``, ``funcmodels::scaled_keep_mask``, ``funcmodels::fold_in``)
instead of traced Philox rounds, with the eager bits, under vmap over keys and
``vmap(grad)``, and the operators' own checks (``torch.library.opcheck``)."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels.random._samplers import keep_mask, scaled_keep_mask

_SHAPES = [(64, 128), (3, 5, 7), (1,), (0, 4), (9,)]


def _graph_ops(fn, *args) -> list[str]:
    """The call targets of the one graph dynamo makes of ``fn(*args)`` (after AOT
    autograd's functionalisation, the operators inductor would get)."""
    seen: list[str] = []

    def backend(gm, example_inputs):
        def record(fx, inputs):
            seen.extend(str(n.target) for n in fx.graph.nodes if n.op == "call_function")
            return fx

        from torch._functorch.aot_autograd import aot_module_simplified

        return aot_module_simplified(gm, example_inputs, fw_compiler=record)

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return seen


def test_a_dropout_forward_compiles_to_the_operators_not_philox_rounds():
    spec = fm.nn.Sequential(fm.nn.Linear(8, 16), fm.nn.Dropout(0.2), fm.nn.Dropout(0.3))
    params = fm.init(fm.key(0), spec)
    ops = _graph_ops(
        lambda p, x, k: fm.apply(p, x, key=k, train=True), params, torch.ones(4, 8), fm.key(1)
    )
    assert ops.count("funcmodels.scaled_keep_mask.default") == 2
    assert ops.count("funcmodels.fold_in.default") == 2
    # Traced rounds would be ~100 integer products, shifts and XORs per mask or key.
    assert not [op for op in ops if "bitwise" in op or "rshift" in op]
    assert len(ops) < 12


@pytest.mark.parametrize("shape", _SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_compiled_masks_are_the_eager_masks(shape, p):
    k = fm.fold_in(fm.key(3), 7)

    def masks(kk):
        # p = 1 is outside scaled_keep_mask's range (0 / 0); Dropout multiplies by 0 there
        scaled = scaled_keep_mask(kk, p, shape, torch.float32) if p < 1.0 else None
        return keep_mask(kk, 1.0 - p, shape), scaled

    torch._dynamo.reset()
    got = torch.compile(masks, backend="aot_eager", fullgraph=True)(k)
    for g, e in zip(got, masks(k), strict=True):
        if e is not None:
            assert g.dtype == e.dtype and g.shape == e.shape
            assert torch.equal(g, e)
    if p in (0.0, 1.0):
        assert torch.equal(got[0], torch.full(shape, p == 0.0))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inductor_calls_the_operators_with_the_eager_bits(dtype):
    keys = fm.split(fm.key(4), 3)

    def masks(k):
        m = scaled_keep_mask(k, 0.3, (33, 65), dtype)
        return m, vmap(lambda kk: scaled_keep_mask(kk, 0.3, (5, 7), dtype))(fm.split(k, 4))

    torch._dynamo.reset()
    compiled = torch.compile(masks, fullgraph=True)
    for k in keys:
        got, want = compiled(k), masks(k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_vmap_over_keys_compiled_is_each_keys_own_mask():
    keys = fm.split(fm.key(5), 6).reshape(2, 3, 2)
    shape = (7, 11)
    alone = torch.stack([scaled_keep_mask(k, 0.25, shape, torch.float32) for k in keys.view(-1, 2)])
    alone = alone.reshape(2, 3, *shape)

    def nested(ks):
        return vmap(vmap(lambda k: scaled_keep_mask(k, 0.25, shape, torch.float32)))(ks)

    assert torch.equal(nested(keys), alone)  # the eager vmap path
    torch._dynamo.reset()
    assert torch.equal(torch.compile(nested, backend="aot_eager", fullgraph=True)(keys), alone)
    # Keys batched along their last-but-one dim: the rule moves the batch to the front.
    by_column = vmap(lambda k: keep_mask(k, 0.6, shape), in_dims=1)
    columns = keys[0].T.contiguous()
    want = torch.stack([keep_mask(k, 0.6, shape) for k in keys[0]])
    torch._dynamo.reset()
    assert torch.equal(torch.compile(by_column, backend="aot_eager", fullgraph=True)(columns), want)


def test_vmap_of_grad_compiled_has_the_eager_masks():
    keys = fm.split(fm.key(6), 4)
    shape = (6, 10)

    def masked_sum(w, k):
        return (w * scaled_keep_mask(fm.fold_in(k, 3), 0.2, shape, torch.float32)).sum()

    per_key = vmap(grad(masked_sum), in_dims=(None, 0))
    want = torch.stack(
        [scaled_keep_mask(fm.fold_in(k, 3), 0.2, shape, torch.float32) for k in keys]
    )
    w = torch.ones(shape)
    assert torch.equal(per_key(w, keys), want)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(per_key, backend="aot_eager", fullgraph=True)(w, keys), want)


@pytest.mark.parametrize("data", [0, 1, 12345, 2**32 - 1])
def test_fold_in_compiled_and_vmapped_is_eager_fold_in(data):
    keys = fm.split(fm.key(8), 3)
    want = torch.stack([fm.fold_in(k, data) for k in keys])
    fold = vmap(lambda k: fm.fold_in(k, data))
    torch._dynamo.reset()
    one = torch.compile(lambda k: fm.fold_in(k, data), backend="aot_eager", fullgraph=True)
    assert torch.equal(one(keys[1]), want[1])
    torch._dynamo.reset()
    assert torch.equal(torch.compile(fold, backend="aot_eager", fullgraph=True)(keys), want)


def test_dropout_layers_compiled_give_the_eager_output():
    spec = fm.nn.Sequential(
        fm.nn.Dropout(0.2), fm.nn.Dropout1d(0.5), fm.nn.Dropout2d(0.1), fm.nn.Dropout(0.0)
    )
    params = fm.init(fm.key(0), spec)
    x = torch.randn(4, 6, 9)

    def run(k):
        return fm.apply(params, x, key=k, train=True)

    torch._dynamo.reset()
    compiled = fm.jit(run)
    for seed in (1, 2):
        assert torch.equal(compiled(fm.key(seed)), run(fm.key(seed)))


def test_the_operators_pass_torchs_opcheck():
    k = fm.key(9)
    batched = fm.split(k, 3)
    cpu = torch.device("cpu")
    ops = torch.ops.funcmodels
    for key in (k, batched):
        torch.library.opcheck(ops.keep_mask.default, (key, 0.7, [5, 3], cpu))
        torch.library.opcheck(ops.scaled_keep_mask.default, (key, 0.3, [4, 9], torch.float32, cpu))
        torch.library.opcheck(ops.fold_in.default, (key, 11))


@pytest.mark.parametrize("shape", [(3, 0, 4), (2, 3, 0)])
def test_compiled_vmap_over_keys_of_empty_masks(shape):
    # The batched operator's rows view names its batch size: ``-1`` is ambiguous when
    # the masks have no entries.
    def f(k, x):
        return x * scaled_keep_mask(k, 0.5, tuple(x.shape), x.dtype)

    keys = fm.split(fm.key(0), shape[0])
    x = torch.ones(shape)
    want = vmap(f)(keys, x)
    got = torch.compile(vmap(f), backend="eager", fullgraph=True)(keys, x)
    assert got.shape == want.shape == x.shape
