"""fm.nn.Remat and Repeat(remat=True): recomputed activations, unchanged values and gradients.

The reference is the same model without Remat (the same params: Remat adds no name or key
level). Values and gradients are compared bit for bit: eager with plain autograd, under
``torch.func.grad`` and ``vmap(grad)``, and compiled (``torch.autograd.grad`` of a
compiled loss against the same loss compiled without Remat). That the activations are
really recomputed is checked by counting the child's forward calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, grad_and_value, vmap
from torch.utils.checkpoint import checkpoint

import funcmodels as fm
import transforms

nn = fm.nn


def body():
    return nn.Sequential(
        nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Dropout(0.4), nn.Linear(8, 6)
    )


def with_and_without(spec_of, *, state=False):
    """Params for ``spec_of(remat)`` with remat on and off, the same tensors."""
    plain = spec_of(False)
    if state:
        params, st = fm.init_with_state(fm.key(0), plain)
    else:
        params, st = fm.init(fm.key(0), plain), None
    remat = spec_of(True)
    p2 = fm.Params(remat, params.flat())
    s2 = None if st is None else fm.State(remat, st.flat())
    return (params, st), (p2, s2)


def models(remat: bool):
    inner = nn.Remat(body()) if remat else body()
    return nn.Sequential({"stem": nn.Linear(6, 6), "mid": inner, "head": nn.Linear(6, 3)})


X = fm.random.normal(fm.key(1), (5, 6))
Y = fm.random.normal(fm.key(2), (5, 3))


def loss(p, x=X, y=Y):
    return (fm.apply(p, x, key=fm.key(3), train=True) - y).pow(2).sum()


def autograd_grads(params, fn=loss):
    leaves = {k: t.clone().requires_grad_() for k, t in params.flat().items()}
    value = fn(fm.Params(params.spec, leaves))
    return value, dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())), strict=True))


def assert_bitwise(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_params_state_and_outputs_are_those_of_the_child():
    key = fm.key(4)
    plain = fm.init(key, models(False))
    remat = fm.init(key, models(True))
    assert list(remat.flat()) == list(plain.flat())
    assert all(torch.equal(remat[k], t) for k, t in plain.flat().items())
    # dropout inside draws from the Remat's key as the child would from its own
    assert torch.equal(
        fm.apply(remat, X, key=fm.key(3), train=True), fm.apply(plain, X, key=fm.key(3), train=True)
    )


def test_gradients_bitwise_under_autograd_func_grad_and_per_sample():
    (plain, _), (remat, _) = with_and_without(models)
    value, want = autograd_grads(plain)
    got_value, got = autograd_grads(remat)
    assert torch.equal(got_value, value)
    assert_bitwise(got, want)
    g, v = grad_and_value(loss)(remat)
    assert torch.equal(v, value)
    assert_bitwise(g.flat(), grad(loss)(plain).flat())
    assert_bitwise(g.flat(), want)

    def one(p, xi, yi):
        return loss(p, xi, yi)

    per = vmap(grad(one), in_dims=(None, 0, 0))
    assert_bitwise(per(remat, X, Y).flat(), per(plain, X, Y).flat())


@dataclass(frozen=True)
class _Counted(fm.Spec):
    """tanh(x * w); counts its forward calls in ``calls``."""

    calls: list = None  # a list to count in; not part of the config (tests only)

    def param_shapes(self):
        return {"w": (6,)}

    def init_params(self, key, *, dtype, device):
        return {"w": fm.random.normal(key, (6,), dtype, device)}

    def forward(self, ctx, x):
        self.calls.append(1)
        return torch.tanh(x * ctx.param("w"))

    def __hash__(self):
        return id(self)


@pytest.mark.parametrize("how", ["autograd", "func.grad", "vmap(grad)"])
def test_the_child_runs_again_in_the_backward_pass(how):
    calls: list = []
    counted = _Counted(calls)
    params = fm.init(fm.key(0), nn.Remat(counted))
    plain = fm.Params(counted, params.flat())

    def f(p, x):
        return fm.apply(p, x).pow(2).sum()

    for p, want in ((plain, 1), (params, 2)):
        calls.clear()
        if how == "autograd":
            autograd_grads(p, lambda q: f(q, X))
        elif how == "func.grad":
            grad(f)(p, X)
        else:
            vmap(grad(f), in_dims=(None, 0))(p, X)
        assert len(calls) == want, (p.spec, calls)
    # without gradients nothing is recomputed
    calls.clear()
    with torch.no_grad():
        fm.apply(params, X)
    assert len(calls) == 1


def test_batchnorm_updates_once_and_equal_without_remat():
    def spec_of(remat):
        blk = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU())
        return nn.Sequential(
            {"a": nn.Remat(blk) if remat else blk, "r": nn.Repeat(blk, 3, remat=remat)}
        )

    (p, s), (pr, sr) = with_and_without(spec_of, state=True)

    def run_loss(params, state):
        def f(q):
            out = fm.run(q, X, state=state, train=True)
            f.state = out.state
            return out.out.pow(2).sum()

        value, g = autograd_grads(params, f)
        return value, g, f.state

    value, g, new = run_loss(p, s)
    value_r, g_r, new_r = run_loss(pr, sr)
    assert torch.equal(value_r, value)
    assert_bitwise(g_r, g)
    assert_bitwise(new_r.flat(), new.flat())
    assert new_r["a.1.num_batches_tracked"].item() == 1
    assert new_r["r.1.num_batches_tracked"].tolist() == [1, 1, 1]


def test_tied_weights_stay_one_leaf():
    def spec_of(remat):
        pair = nn.Sequential(nn.Linear(6, 6, bias=False), nn.Tanh(), nn.Linear(6, 6, bias=False))
        return nn.Remat(pair) if remat else pair

    (plain, _), _ = with_and_without(spec_of)
    w = plain["0.weight"].clone().requires_grad_()
    grads = []
    for remat in (False, True):
        tied = fm.Params(spec_of(remat), {"0.weight": w, "2.weight": w})
        (g,) = torch.autograd.grad(fm.apply(tied, X).pow(2).sum(), [w])
        grads.append(g)
    assert torch.equal(grads[0], grads[1])
    # the gradient is the sum over both uses: not the gradient of either alone
    alone = fm.Params(spec_of(False), {"0.weight": w, "2.weight": w.detach()})
    (g_alone,) = torch.autograd.grad(fm.apply(alone, X).pow(2).sum(), [w])
    assert not torch.allclose(grads[0], g_alone)


def test_repeat_remat_equals_repeat_bitwise():
    def spec_of(remat):
        return nn.Repeat(body(), 4, remat=remat)

    (plain, _), (remat, _) = with_and_without(spec_of)
    x = fm.random.normal(fm.key(1), (5, 6))

    def f(p, xi=x):
        return fm.apply(p, xi, key=fm.key(3), train=True).pow(2).sum()

    value, want = autograd_grads(plain, f)
    got_value, got = autograd_grads(remat, f)
    assert torch.equal(got_value, value)
    assert_bitwise(got, want)
    assert_bitwise(grad(f)(remat).flat(), grad(f)(plain).flat())
    per = vmap(grad(f), in_dims=(None, 0))
    assert_bitwise(per(remat, x).flat(), per(plain, x).flat())


def test_nested_remat_equals_no_remat_bitwise():
    def spec_of(remat):
        inner = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        block = nn.Sequential(nn.Linear(6, 6), nn.Remat(inner) if remat else inner)
        return nn.Remat(nn.Repeat(block, 3, remat=remat)) if remat else nn.Repeat(block, 3)

    (plain, _), (remat, _) = with_and_without(spec_of)

    def f(p, x=X):
        return fm.apply(p, x).pow(2).sum()

    assert_bitwise(autograd_grads(remat, f)[1], autograd_grads(plain, f)[1])
    assert_bitwise(grad(f)(remat).flat(), grad(f)(plain).flat())
    per = vmap(grad(f), in_dims=(None, 0))
    assert_bitwise(per(remat, X).flat(), per(plain, X).flat())


def test_a_checkpointed_fm_apply_stops_its_recomputation_early():
    # torch.utils.checkpoint stops a recomputation by raising through the function it
    # re-runs; fm.apply must let that through rather than name a layer in it.
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)))
    leaves = {k: t.clone().requires_grad_() for k, t in params.flat().items()}
    p = fm.Params(params.spec, leaves)
    out = checkpoint(lambda x: fm.apply(p, x).sum() * 2.0, X, use_reentrant=False)
    got = torch.autograd.grad(out, list(leaves.values()))
    want = torch.autograd.grad(fm.apply(p, X).sum() * 2.0, list(leaves.values()))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_stack_of_remat_and_the_torch_bridge(tmp_path):
    def spec_of(remat):
        return nn.Stack(nn.Remat(body()) if remat else body(), 3)

    (plain, _), (remat, _) = with_and_without(spec_of)

    def f(p):
        return fm.apply(p, X, key=fm.key(3), train=True).pow(2).sum()

    assert_bitwise(autograd_grads(remat, f)[1], autograd_grads(plain, f)[1])
    spec = models(True)
    params = fm.init(fm.key(0), spec)
    fm.save(tmp_path / "r.safetensors", params)
    p2, _ = fm.load(tmp_path / "r.safetensors")
    assert p2.spec == spec and fm.from_config(spec.to_config()) == spec
    assert {r.path: r.type for r in fm.summary(spec, (6,)).rows}["mid"] == "Remat"
    module = transforms.to_module(params)
    assert list(module.state_dict()) == list(fm.to_state_dict(params))
    with torch.no_grad():
        assert torch.equal(module(X), fm.apply(params, X))
    assert transforms.from_module(module)[0].spec == spec


def test_bad_child():
    with pytest.raises(TypeError, match="Remat: spec must be a layer spec .* got int"):
        nn.Remat(3)


@pytest.mark.slow
def test_compiled_gradients_equal_compiled_without_remat_bitwise():
    import torch._dynamo

    for spec_of in (models, lambda r: nn.Repeat(body(), 3, remat=r)):
        (plain, _), (remat, _) = with_and_without(spec_of)
        x = fm.random.normal(fm.key(1), (5, 6))

        def f(p, x=x):
            return fm.apply(p, x, key=fm.key(3), train=True).pow(2).sum()

        torch._dynamo.reset()
        value, want = autograd_grads(plain, torch.compile(f, fullgraph=True))
        torch._dynamo.reset()
        got_value, got = autograd_grads(remat, torch.compile(f, fullgraph=True))
        assert torch.equal(got_value, value)
        assert_bitwise(got, want)
    torch._dynamo.reset()


@pytest.mark.slow
def test_under_compile_of_a_torch_func_transform_remat_is_refused():
    import torch._dynamo

    # dynamo reports the ValueError raised while tracing as its own "Observed exception",
    # quoting it
    (_, _), (remat, _) = with_and_without(models)
    torch._dynamo.reset()
    with pytest.raises(
        Exception, match=r"layer 'mid' \(Remat\): cannot recompute activations under torch.compile"
    ):
        torch.compile(grad(loss), fullgraph=True)(remat)
    torch._dynamo.reset()
