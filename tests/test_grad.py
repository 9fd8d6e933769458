"""fm.value_and_grad / fm.grad: torch.func's results, bitwise, on the fast path and inside
transforms; inputs untouched; torch.func's errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.func import grad_and_value, hessian, jacrev, vmap

import funcmodels as fm
import transforms
from funcmodels import _grad

fnn = fm.nn


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(dropout: float = 0.0):
    layers = [fnn.Linear(12, 32), fnn.ReLU()]
    if dropout:
        layers.append(fnn.Dropout(dropout))
    return fnn.Sequential(*layers, fnn.Linear(32, 32), fnn.Tanh(), fnn.Linear(32, 5))


def _data(n: int = 16, d: int = 12, classes: int = 5, seed: int = 0):
    g = _gen(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _assert_same(got, want) -> None:
    """Same pytree structure, every leaf bitwise equal (same dtype, shape and values)."""
    g_leaves, g_spec = pytree.tree_flatten(got)
    w_leaves, w_spec = pytree.tree_flatten(want)
    assert g_spec == w_spec
    for a, b in zip(g_leaves, w_leaves, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()
        assert not a.requires_grad and a.grad_fn is None


def _both(fn, *args, argnums=0, has_aux=False):
    """(fm.value_and_grad's result, torch.func.grad_and_value's in JAX's order)."""
    ours = fm.value_and_grad(fn, argnums=argnums, has_aux=has_aux)(*args)
    g, v = grad_and_value(fn, argnums=argnums, has_aux=has_aux)(*args)
    return ours, (v, g)


def _ce(params, x, y):
    return F.cross_entropy(fm.apply(params, x), y)


def test_fast_path_is_taken_outside_transforms(monkeypatch):
    calls = []
    plain = _grad._plain
    monkeypatch.setattr(_grad, "_plain", lambda *a: calls.append(1) or plain(*a))
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    fm.value_and_grad(_ce)(params, x, y)
    assert calls == [1]
    vmap(fm.grad(_ce), in_dims=(None, 0, 0))(params, x, y)
    assert calls == [1], "the fast path ran inside vmap"


def test_mlp_bitwise_and_jax_order():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    ours, ref = _both(_ce, params, x, y)
    _assert_same(ours, ref)
    loss, grads = ours
    assert loss.dim() == 0 and isinstance(grads, fm.Params)
    assert torch.equal(loss, _ce(params, x, y).detach())
    _assert_same(fm.grad(_ce)(params, x, y), ref[1])


def test_dropout_train_mode_bitwise():
    params = fm.init(fm.key(1), _mlp(0.3))
    x, y = _data()

    def loss(p, x, y, k):
        return F.cross_entropy(fm.apply(p, x, key=k, train=True), y)

    ours, ref = _both(loss, params, x, y, fm.key(7))
    _assert_same(ours, ref)


def test_cnn_with_batchnorm_state_through_aux():
    spec = fnn.Sequential(
        fnn.Conv2d(1, 4, 3), fnn.BatchNorm2d(4), fnn.ReLU(), fnn.Flatten(), fnn.Linear(144, 3)
    )
    params, state = fm.init_with_state(fm.key(2), spec)
    g = _gen(3)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)

    def loss(p, s, x, y):
        out = fm.run(p, x, state=s, train=True)
        return F.cross_entropy(out.out, y), out.state

    ours, ref = _both(loss, params, state, x, y, has_aux=True)
    _assert_same(ours, ref)
    (_, new_state), _ = ours
    assert isinstance(new_state, fm.State)
    assert not torch.equal(new_state["1.running_mean"], state["1.running_mean"])


def test_moe_with_sown_aux_bitwise():
    expert = fnn.Sequential(fnn.Linear(8, 16), fnn.GELU(), fnn.Linear(16, 8))
    params = fm.init(fm.key(4), transforms.MoE(expert=expert, num_experts=4, top_k=2))
    x = torch.randn(24, 8, generator=_gen(5))

    def loss(p, x):
        out = fm.run(p, x)
        return out.out.square().mean() + 0.01 * out.aux[""]["load_balance_loss"], out.aux

    ours, ref = _both(loss, params, x, has_aux=True)
    _assert_same(ours, ref)


def _early_exit():
    blocks = tuple(fnn.Sequential(fnn.Linear(8, 8), fnn.ReLU()) for _ in range(3))
    heads = tuple(fnn.Linear(8, 4) for _ in range(3))
    return fm.init(fm.key(6), transforms.EarlyExit(blocks=blocks, heads=heads, threshold=0.4))


def test_early_exit_train_mode_bitwise():
    params = _early_exit()
    x = torch.randn(32, 8, generator=_gen(7))

    def loss(p, x):
        return fm.run(p, x, train=True).aux[""]["exit_logits"].logsumexp(-1).mean()

    ours, ref = _both(loss, params, x)
    _assert_same(ours, ref)


def test_early_exit_eval_gives_the_eager_numbers():
    # In eval, EarlyExit's eager path drops finished samples from the batch (smaller
    # matmuls, other rounding); under torch.func it masks. The fast path runs the layer
    # eagerly, so it equals plain autograd on fm.apply bitwise and torch.func to rounding.
    params = _early_exit()
    x = torch.randn(32, 8, generator=_gen(7))
    y = torch.randint(0, 4, (32,), generator=_gen(8))
    (loss, grads), (ref_loss, ref_grads) = _both(_ce, params, x, y)
    leaves = [t.detach().requires_grad_() for t in fm.tree.leaves(params)]
    plain = _ce(pytree.tree_unflatten(leaves, pytree.tree_structure(params)), x, y)
    want = [
        torch.zeros_like(t) if g is None else g
        for g, t in zip(torch.autograd.grad(plain, leaves, allow_unused=True), leaves, strict=True)
    ]
    for a, b, c in zip(fm.tree.leaves(grads), want, fm.tree.leaves(ref_grads), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)


def test_tuple_and_negative_argnums():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    for argnums in ((0, 1), (1, 0), -3, (-3,)):
        ours, ref = _both(_ce, params, x, y, argnums=argnums)
        _assert_same(ours, ref)
    (_, (gp, gx)) = fm.value_and_grad(_ce, argnums=(0, 1))(params, x, y)
    assert isinstance(gp, fm.Params) and gx.shape == x.shape


def test_unused_leaves_get_zeros_and_a_constant_loss_zero_grads():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()

    def first_layer_only(p, x):
        return fm.apply(p["0"], x).sum()

    ours, ref = _both(first_layer_only, params, x)
    _assert_same(ours, ref)
    grads = ours[1]
    assert torch.count_nonzero(grads["4.weight"]) == 0 and grads["4.weight"].shape == (5, 32)
    ours, ref = _both(lambda p, x: x.sum(), params, x)
    _assert_same(ours, ref)


def test_inputs_are_not_mutated_and_flags_untouched():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    before = [t.clone() for t in fm.tree.leaves(params)]
    fm.value_and_grad(_ce, argnums=(0, 1))(params, x, y)
    for t, b in zip(fm.tree.leaves(params), before, strict=True):
        assert torch.equal(t, b) and not t.requires_grad and t.grad is None
    assert not x.requires_grad and x.grad is None


def test_an_argument_in_an_outer_graph_defers_to_torch_func():
    # Gradients must flow back to a tensor that requires grad, as torch.func's do.
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    x = x.clone().requires_grad_()
    _, grads = fm.value_and_grad(_ce)(params, x, y)
    g, _ = grad_and_value(_ce)(params, x, y)
    _assert_same(grads["0.weight"].detach(), g["0.weight"].detach())
    assert grads["0.weight"].grad_fn is not None
    (ours,) = torch.autograd.grad(grads["0.weight"].sum(), x)
    (ref,) = torch.autograd.grad(g["0.weight"].sum(), x)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "dict"])
def test_an_outer_graph_is_found_inside_any_argument(wrap):
    # The outer-graph check has fast paths for a tensor and for () / None: a tensor that
    # requires grad inside a container must still send the call to torch.func.
    w = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    packed = {"tensor": x, "tuple": (x,), "dict": {"x": x}}[wrap]

    def f(w, data, empty):
        t = data if wrap == "tensor" else (data[0] if wrap == "tuple" else data["x"])
        return (t @ w).tanh().sum()

    _, grads = fm.value_and_grad(f)(w, packed, ())
    assert grads.grad_fn is not None  # differentiable with respect to x, as torch.func's
    (ours,) = torch.autograd.grad(grads.sum(), x)
    (ref,) = torch.autograd.grad(grad_and_value(f)(w, packed, ())[0].sum(), x)
    assert torch.equal(ours, ref)


def test_an_empty_aux_comes_back_as_it_went():
    w = torch.randn(3, dtype=torch.float64)
    (value, aux), g = fm.value_and_grad(lambda w: (w.square().sum(), ()), has_aux=True)(w)
    assert aux == () and torch.equal(g, 2 * w) and torch.equal(value, w.square().sum())


def test_under_no_grad_still_differentiates():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()
    with torch.no_grad():
        ours, ref = _both(_ce, params, x, y)
    _assert_same(ours, ref)


def test_per_sample_grads_under_vmap_equal_torch_func():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data(8)

    def one(p, xi, yi):
        return F.cross_entropy(fm.apply(p, xi[None]), yi[None])

    ours = vmap(fm.grad(one), in_dims=(None, 0, 0))(params, x, y)
    ref = vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, y)
    _assert_same(ours, ref)
    assert ours["0.weight"].shape == (8, 32, 12)


def test_nested_grads_jacrev_and_hessian():
    w = torch.randn(3, generator=_gen(9))
    x = torch.randn(5, 3, generator=_gen(10))

    def f(w, x):
        return (x @ w).tanh().square().sum()

    # grad of a function of a grad: the inner call runs under the outer transform.
    outer = fm.grad(lambda w, x: fm.grad(f)(w, x).square().sum())(w, x)
    ref = torch.func.grad(lambda w, x: torch.func.grad(f)(w, x).square().sum())(w, x)
    _assert_same(outer, ref)
    _assert_same(jacrev(fm.grad(f))(w, x), jacrev(torch.func.grad(f))(w, x))
    # hessian is forward-over-reverse: other rounding, the same matrix.
    torch.testing.assert_close(jacrev(fm.grad(f))(w, x), hessian(f)(w, x), rtol=1e-5, atol=1e-6)


def test_has_aux_structure_and_grad_with_aux():
    params = fm.init(fm.key(0), _mlp())
    x, y = _data()

    def loss(p, x, y):
        logits = fm.apply(p, x)
        return F.cross_entropy(logits, y), {"logits": logits, "acc": (logits.argmax(1) == y)}

    ours, ref = _both(loss, params, x, y, has_aux=True)
    _assert_same(ours, ref)
    grads, aux = fm.grad(loss, has_aux=True)(params, x, y)
    _assert_same((grads, aux), (ref[1], ref[0][1]))


def _error(fn, *args, **kw):
    with pytest.raises(Exception) as info:
        fn(*args, **kw)
    return type(info.value), str(info.value)


@pytest.mark.parametrize(
    ("loss", "args", "kw"),
    [
        (lambda w: w * 2, (torch.ones(3),), {}),  # not a scalar
        (lambda w: float(w.sum()), (torch.ones(3),), {}),  # not a tensor
        (lambda w: w.sum(), (torch.ones(3, dtype=torch.int64),), {}),  # integer leaf
        (lambda w: w.sum(), (2.0,), {}),  # not a tensor leaf
        (lambda w: w.sum(), (torch.ones(3),), {"has_aux": True}),  # no (loss, aux) pair
        (lambda w: (w.sum(), 1.0), (torch.ones(3),), {"has_aux": True}),  # aux not tensors
        (lambda w, x: w.sum(), (torch.ones(3), torch.ones(1)), {"argnums": 2}),
        (lambda w, x: w.sum(), (torch.ones(3), torch.ones(1)), {"argnums": (0, 0)}),
        (lambda w, x: w.sum(), (torch.ones(3), torch.ones(1)), {"argnums": ()}),
    ],
)
def test_errors_are_torch_funcs(loss, args, kw):
    want = _error(grad_and_value(loss, **kw), *args)
    assert _error(fm.value_and_grad(loss, **kw), *args) == want
    assert _error(fm.grad(loss, **kw), *args) == want


def test_bad_arguments_fail_at_once():
    with pytest.raises(TypeError, match="fm.value_and_grad: fn must be callable, got int"):
        fm.value_and_grad(3)
    with pytest.raises(TypeError, match="argnums must be an int or a tuple of ints, got list"):
        fm.grad(_ce, argnums=[0])
    with pytest.raises(TypeError, match="has_aux must be a bool, got int"):
        fm.value_and_grad(_ce, has_aux=1)
