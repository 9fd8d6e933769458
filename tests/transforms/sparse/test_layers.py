"""transforms.SparseLinear and CompressedLinear: fidelity to ``F.linear(x, W * M, b)`` and its
autograd under every kernel and transform, masks by magnitude, the inference form's
training, files, configs and the torch bridge.

Tolerances: float64 results of the masked dense kernel equal the reference to 1e-12 (the
same products); the CSR kernel sums in another order, 1e-10 in float64, 1e-5 in float32.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, jacfwd, jacrev, vmap

import funcmodels as fm
import transforms
from transforms.sparse import _layers as sparse_layers

nn = fm.nn
F64 = dict(atol=1e-10, rtol=1e-10)


def bits(mask: torch.Tensor) -> list[int]:
    """Each row of a bool mask as the integer its bits spell (first column highest)."""
    return [int("".join("1" if b else "0" for b in row), 2) for row in mask.tolist()]


def layer(in_f=12, out_f=6, **kw) -> tuple[fm.Params, fm.State]:
    params, state = fm.init_with_state(fm.key(0), transforms.SparseLinear(in_f, out_f, **kw))
    return fm.tree.map(lambda t: t.double(), params), state


def reference(params, state, x):
    """``F.linear(x, W * M, b)`` and its autograd gradients of ``sum(y ** 2)``."""
    w = params["weight"].detach().clone().requires_grad_()
    b = params["bias"].detach().clone().requires_grad_() if "bias" in params else None
    xr = x.detach().clone().requires_grad_()
    y = F.linear(xr, w * state["mask"], b)
    y.square().sum().backward()
    return y.detach(), w.grad, None if b is None else b.grad, xr.grad


def with_kernel(params, state, kernel):
    spec = transforms.SparseLinear(
        params.spec.in_features,
        params.spec.out_features,
        params.spec.bias,
        params.spec.sparsity,
        kernel=kernel,
    )
    return fm.Params(spec, params.flat()), fm.State(spec, state.flat())


# -- fidelity ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.9, 0.99]),
    kernel=st.sampled_from(["dense", "sparse", "auto"]),
    lead=st.sampled_from([(), (1,), (5,), (2, 3)]),
    sizes=st.tuples(st.integers(1, 9), st.integers(1, 7)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_and_gradients_equal_the_masked_product(sparsity, kernel, lead, sizes, bias, seed):
    """Eager ``fm.apply`` with autograd (the CSR kernel where chosen) and ``torch.func.grad``
    (the masked dense kernel): output and gradients of x, W and b as the reference's."""
    in_f, out_f = sizes
    params, state = layer(in_f, out_f, sparsity=sparsity, bias=bias, kernel=kernel)
    x = fm.random.normal(fm.key(seed), (*lead, in_f), dtype=torch.float64)
    y_ref, gw_ref, gb_ref, gx_ref = reference(params, state, x)
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    xr = x.clone().requires_grad_()
    y = fm.apply(leaves, xr, state=state)
    y.square().sum().backward()
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(leaves["weight"].grad, gw_ref, **F64)
    torch.testing.assert_close(xr.grad, gx_ref, **F64)
    if bias:
        torch.testing.assert_close(leaves["bias"].grad, gb_ref, **F64)
    g = grad(lambda p: fm.apply(p, x, state=state).square().sum())(params)
    torch.testing.assert_close(g["weight"], gw_ref, **F64)
    assert bool((g["weight"][~state["mask"]] == 0).all())


def test_the_csr_kernel_runs_where_chosen_and_only_there(monkeypatch):
    calls = []
    real = sparse_layers.csr_linear
    monkeypatch.setattr(sparse_layers, "csr_linear", lambda *a: calls.append(1) or real(*a))
    x = fm.random.normal(fm.key(1), (4, 40))
    for kernel, sparsity, want in (
        ("auto", 0.95, 1),
        ("auto", 0.5, 0),
        ("sparse", 0.5, 1),
        ("dense", 0.99, 0),
    ):
        calls.clear()
        params, state = fm.init_with_state(
            fm.key(0), transforms.SparseLinear(40, 30, sparsity=sparsity, kernel=kernel)
        )
        y = fm.apply(params, x, state=state)
        assert len(calls) == want, (kernel, sparsity)
        torch.testing.assert_close(y, F.linear(x, params["weight"] * state["mask"], params["bias"]))
        calls.clear()
        vmap(lambda xi, p=params, s=state: fm.apply(p, xi, state=s))(x)  # transforms: dense
        assert not calls


def test_per_sample_gradients_equal_a_loop():
    spec = nn.Sequential(
        transforms.SparseLinear(10, 16, sparsity=0.7, kernel="sparse"), nn.Tanh(), nn.Linear(16, 3)
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (6, 10))
    y = fm.random.normal(fm.key(2), (6, 3))

    def loss(p, xi, yi):
        return (fm.apply(p, xi, state=state) - yi).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(6):
        want = grad(loss)(params, x[i], y[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-6, rtol=1e-5, msg=name)
    assert bool((got["0.weight"][:, ~state["0.mask"]] == 0).all())


def test_forward_and_reverse_jacobians_agree():
    params, state = layer(7, 5, sparsity=0.6)
    x = fm.random.normal(fm.key(3), (7,), dtype=torch.float64)

    def of_x(xx):
        return fm.apply(params, xx, state=state)

    def of_params(p):
        return fm.apply(p, x, state=state)

    torch.testing.assert_close(jacfwd(of_x)(x), jacrev(of_x)(x), **F64)
    fwd, rev = jacfwd(of_params)(params), jacrev(of_params)(params)
    for name in ("weight", "bias"):
        torch.testing.assert_close(fwd[name], rev[name], **F64)
    pruned = ~state["mask"]
    assert bool((rev["weight"][:, pruned] == 0).all())


@pytest.mark.slow
def test_compiled_gradients_are_exact_with_pruned_gradients_zero():
    """``torch.compile(grad(f))`` ignores a custom backward in torch 2.13: the forward's own
    masked product must give the gradients, and it does."""
    spec = nn.Sequential(transforms.SparseLinear(12, 8, sparsity=0.75), nn.ReLU(), nn.Linear(8, 2))
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 12))

    def loss(p):
        return fm.apply(p, x, state=state).square().sum()

    torch._dynamo.reset()
    try:
        got = torch.compile(grad(loss), fullgraph=True)(params)
        per_sample = torch.compile(
            vmap(grad(lambda p, xi: fm.apply(p, xi, state=state).sum()), in_dims=(None, 0))
        )(params, x)
    finally:
        torch._dynamo.reset()
    want = grad(loss)(params)
    for name, g in want.flat().items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert bool((got["0.weight"][~state["0.mask"]] == 0).all())
    assert bool((per_sample["0.weight"][:, ~state["0.mask"]] == 0).all())


def test_inputs_and_the_mask_are_not_modified():
    params, state = layer(8, 4, sparsity=0.5, kernel="sparse")
    before = {k: v.clone() for k, v in {**params.flat(), **state.flat()}.items()}
    x = fm.random.normal(fm.key(1), (3, 8), dtype=torch.float64)
    x0 = x.clone()
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    fm.apply(leaves, x, state=state).sum().backward()
    transforms.sparsify(params, state, 0.8)
    transforms.compress(params, state, crossover=0.0)
    assert torch.equal(x, x0)
    for k, v in {**params.flat(), **state.flat()}.items():
        assert torch.equal(v, before[k]), k


# -- masks, the inference form, files and the bridge -------------------------------------


def test_initial_masks_are_pinned():
    """The mask stream must not drift: the rows of masks from fm.key(0) and fm.key(3)."""
    _, s = fm.init_with_state(
        fm.key(0), transforms.SparseLinear(8, 4, sparsity=0.5, init_mask="random")
    )
    assert bits(s["mask"]) == [53, 108, 135, 142]
    _, s = fm.init_with_state(fm.key(0), transforms.SparseLinear(8, 4, sparsity=0.5))
    assert bits(s["mask"]) == [96, 59, 119, 200]
    _, s = fm.init_with_state(fm.key(3), transforms.SparseLinear(8, 2, pattern="2:4"))
    assert bits(s["mask"]) == [57, 197]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.tuples(st.integers(1, 12), st.integers(1, 9)),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_magnitude_masks_keep_the_largest_weights(sizes, sparsity, seed):
    params, state = fm.init_with_state(
        fm.key(seed), transforms.SparseLinear(*sizes, sparsity=sparsity)
    )
    mask, w = state["mask"], params["weight"].abs()
    assert int(mask.sum()) == mask.numel() - round(sparsity * mask.numel())
    if mask.any() and (~mask).any():
        assert w[mask].min() >= w[~mask].max()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_the_compressed_form_trains_its_kept_values_by_sparse_products(sparsity, bias):
    """With autograd on, in eager mode, the compressed layer's gradients (input, values,
    bias) come from sparse products and an SDDMM, no dense weight; they equal those of the
    dense weight its values make (the transform path's), in float64 to 1e-10."""
    spec = transforms.SparseLinear(40, 24, sparsity=sparsity, bias=bias)
    params, state = fm.init_with_state(fm.key(2), spec, dtype=torch.float64)
    cp, cs = transforms.compress(params, state)
    assert isinstance(cp.spec, transforms.CompressedLinear)
    leaves = fm.Params(cp.spec, {k: v.clone().requires_grad_() for k, v in cp.flat().items()})
    x = fm.random.normal(fm.key(3), (3, 5, 40), dtype=torch.float64).requires_grad_()
    y = fm.apply(leaves, x, state=cs)
    names = list(leaves.flat())
    seen, stack = set(), [y.grad_fn]
    while stack:  # the sparse Function is in the graph
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    assert "_CSRValuesLinearBackward" in {type(n).__name__ for n in seen}
    g_out = fm.random.normal(fm.key(4), y.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, [x, *(leaves[n] for n in names)], g_out)

    def through_dense(x_, p):  # the transform path: values scattered into a dense weight
        return fm.apply(p, x_, state=cs)

    want_x, want_p = torch.func.vjp(through_dense, x.detach(), cp)[1](g_out)
    torch.testing.assert_close(got[0], want_x, rtol=1e-10, atol=1e-12)
    for n, g in zip(names, got[1:], strict=True):
        assert g.shape == cp[n].shape  # (nnz,) for the values: no dense gradient
        torch.testing.assert_close(g, want_p[n], rtol=1e-10, atol=1e-12, msg=n)


def test_files_round_trip_both_forms_and_the_compressed_one_is_small(tmp_path):
    params, state = fm.init_with_state(
        fm.key(0), nn.Sequential(transforms.SparseLinear(256, 128, sparsity=0.9))
    )
    cp, cs = transforms.compress(params, state)
    x = fm.random.normal(fm.key(1), (4, 256))
    for name, (p, s) in {"sparse": (params, state), "compressed": (cp, cs)}.items():
        path = tmp_path / f"{name}.safetensors"
        fm.save(path, p, s)
        p2, s2 = fm.load(path)
        assert p2.spec == p.spec
        torch.testing.assert_close(fm.apply(p2, x, state=s2), fm.apply(p, x, state=s))
    dense = fm.init(fm.key(0), nn.Sequential(nn.Linear(256, 128)))
    fm.save(tmp_path / "dense.safetensors", dense)
    disk = os.path.getsize(tmp_path / "compressed.safetensors") / os.path.getsize(
        tmp_path / "dense.safetensors"
    )
    memory = sum(t.nbytes for t in (*cp.flat().values(), *cs.flat().values())) / sum(
        t.nbytes for t in dense.flat().values()
    )
    # values (4 bytes) + int32 columns (4 bytes) for 10% of the weights, plus row pointers
    assert memory <= 0.25 and disk <= 0.25, (memory, disk)


def test_config_round_trip_and_aliases():
    spec = nn.Sequential(
        transforms.SparseLinear(8, 4, sparsity=0.8, pattern="2:4"),
        transforms.CompressedLinear(4, 2, 5),
    )
    config = json.loads(json.dumps(spec.to_config()))
    assert [entry["type"] for entry in config] == ["sparse_linear", "compressed_linear"]
    assert fm.from_config(config) == spec
    one = [{"type": "sparse_linear", "params": {"in_features": 8, "out_features": 4}}]
    assert fm.from_config(one)["layer_0"] == transforms.SparseLinear(8, 4)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (
            lambda: transforms.SparseLinear(8, 4, sparsity=1.0),
            ValueError,
            r"sparsity must be a number in \[0, 1\)",
        ),
        (lambda: transforms.SparseLinear(8, 4, sparsity=-0.1), ValueError, "sparsity"),
        (lambda: transforms.SparseLinear(8, 4, sparsity="0.5"), ValueError, "sparsity"),
        (lambda: transforms.SparseLinear(6, 4, pattern="2:4"), ValueError, "divisible by 4, got 6"),
        (
            lambda: transforms.SparseLinear(8, 4, pattern="4:8"),
            ValueError,
            "pattern must be one of",
        ),
        (lambda: transforms.SparseLinear(8, 4, kernel="csr"), ValueError, "kernel must be one of"),
        (
            lambda: transforms.CompressedLinear(4, 2, 9),
            ValueError,
            r"nnz must be an int in \[0, 8\]",
        ),
    ],
)
def test_invalid_specs_are_refused(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    sparsity=st.floats(0.0, 0.99),
)
def test_magnitude_masks_break_ties_by_the_lower_index(values, sparsity):
    """Selection by threshold keeps what a stable descending sort keeps, ties included."""
    scores = torch.tensor(values, dtype=torch.float32)
    order = torch.argsort(scores, descending=True, stable=True)
    want = torch.zeros(len(values), dtype=torch.bool)
    want[order[: len(values) - round(sparsity * len(values))]] = True
    assert torch.equal(transforms.sparse.magnitude_mask(scores, sparsity, "unstructured"), want)


def test_the_compressed_form_trains_in_half_precision_and_after_an_index_edit():
    """MKL's sparse kernels take float32/float64 only: bfloat16 (and autocast) training
    takes the dense path; and edited index state is never served from the cache."""
    spec = transforms.SparseLinear(16, 8, sparsity=0.9)
    params, state = fm.init_with_state(fm.key(0), spec)
    cp, cs = transforms.compress(params, state)
    half = cp.to(torch.bfloat16)
    values = half["values"].clone().requires_grad_()
    p = fm.Params(half.spec, {**half.flat(), "values": values})
    x = fm.random.normal(fm.key(1), (4, 16), dtype=torch.bfloat16)
    (g,) = torch.autograd.grad(fm.apply(p, x, state=cs).sum(), values)
    assert g.dtype == torch.bfloat16 and g.shape == values.shape
    # two weights, one per row; then both in row 0: the transposed pattern follows
    tiny = fm.Params(
        transforms.CompressedLinear(2, 2, 2, bias=False), {"values": torch.tensor([1.0, 10.0])}
    )
    st = fm.State(
        tiny.spec,
        {"crow_indices": torch.tensor([0, 1, 2], dtype=torch.int32),
         "col_indices": torch.tensor([0, 1], dtype=torch.int32)},
    )  # fmt: skip
    xi = torch.ones(1, 2, requires_grad=True)
    weight = torch.tensor([1.0, 3.0])  # rows weighted apart: grad_x = weight @ W

    def grad_x():
        return torch.autograd.grad((fm.apply(tiny, xi, state=st) * weight).sum(), xi)[0]

    assert grad_x().tolist() == [[1.0, 30.0]]  # W = [[1, 0], [0, 10]]
    st["crow_indices"].copy_(torch.tensor([0, 2, 2], dtype=torch.int32))
    assert grad_x().tolist() == [[1.0, 10.0]]  # W = [[1, 10], [0, 0]]
    st["col_indices"].copy_(torch.tensor([1, 0], dtype=torch.int32))
    assert grad_x().tolist() == [[10.0, 1.0]]  # W = [[10, 1], [0, 0]]
