"""transforms.TorchModule: any torch module as a layer, against torch itself.

Fidelity to the module's own forward, per-sample gradients against torch.func's
``functional_call`` + ``vmap(grad)`` recipe on the same module, state and train mode,
init through the module's reset hooks under a generator seeded from the key, Stack,
``transforms.dp``, the opaque boundary of ``from_module`` and the way back with
``to_module``. Files and configs are in ``test_opaque_files.py``.

Tolerances: ``EXACT`` (``rtol=1e-6, atol=1e-7``) where funcmodels runs the very kernels
torch runs (the opaque part is torch's own forward, and the known layers around it call
the same functional ops); the DP comparisons use ``reference.py``'s float64 ``rtol=1e-9``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import funcmodels as fm
import transforms
from tests.transforms.bridge.opaque_models import Noisy, SwiGLU, TinyLM, Tracking, seeded
from tests.transforms.dp.reference import TOL, reference
from transforms.bridge._skeleton import seed_of

EXACT = dict(rtol=1e-6, atol=1e-7)


def _model():
    return seeded(nn.Sequential(nn.Linear(6, 8), SwiGLU(8, 16), nn.ReLU(), nn.Linear(8, 3)))


def _x(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _reference_grads(module, loss, *batch):
    """torch.func's recipe: ``vmap(grad)`` of ``functional_call`` on the module itself."""
    module = module.eval()
    params = {k: v.detach() for k, v in module.named_parameters()}

    def one(p, *example):
        return loss(functional_call(module, p, tuple(e[None] for e in example[:1])), *example)

    return vmap(grad(one), in_dims=(None, *[0] * len(batch)))(params, *batch)


# -- the layer against its module ------------------------------------------------------------


def test_unknown_block_becomes_a_torch_module_with_the_module_names():
    module = _model()
    params, state = transforms.from_module(module)
    kinds = [type(s).__name__ for _, s in params.spec.children()]
    assert kinds == ["Linear", "TorchModule", "ReLU", "Linear"]
    assert params.spec.child("1").module_type is SwiGLU
    sd = fm.to_state_dict(params, state)
    assert list(sd) == list(module.state_dict())
    for k, t in module.state_dict().items():
        assert torch.equal(sd[k], t), k
    x = _x((5, 6))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)


def test_per_sample_grads_equal_torch_funcs_recipe_on_the_same_module():
    module = _model()
    params, _ = transforms.from_module(module)
    x, y = _x((7, 6)), torch.arange(7) % 3

    def loss(out, x, y):
        return F.cross_entropy(out, y[None])

    def ours(p, x, y):
        return loss(fm.apply(p, x[None]), x, y)

    got = vmap(grad(ours), in_dims=(None, 0, 0))(params, x, y).flat()
    want = _reference_grads(module, loss, x, y)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **EXACT, msg=k)


def test_tied_head_is_held_once_and_trains_as_one_tensor():
    module = seeded(TinyLM())
    params, state = transforms.from_module(module)
    spec = params.spec
    assert type(spec) is transforms.TorchModule
    assert "head.weight" not in params.flat() and "embed.weight" in params.flat()
    assert "temperature" not in state.flat()  # a constant of the layer, not state
    ids = torch.randint(0, 11, (4, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, ids), module(ids), **EXACT)

    def loss(out, ids):
        return F.cross_entropy(out[0, :-1], ids[1:])

    got = vmap(grad(lambda p, ids: loss(fm.apply(p, ids[None]), ids)), in_dims=(None, 0))(
        params, ids
    ).flat()
    want = _reference_grads(module, loss, ids)
    for k in want:  # functional_call's tie_weights: one gradient for the tied pair
        torch.testing.assert_close(got[k], want[k], **EXACT, msg=k)


@pytest.mark.slow
def test_compiled_forward_and_per_sample_grads_equal_eager():
    module = _model()
    params, _ = transforms.from_module(module)
    x, y = _x((5, 6)), torch.arange(5) % 3

    def ours(p, x, y):
        return F.cross_entropy(fm.apply(p, x[None]), y[None])

    step = torch.compile(vmap(grad(ours), in_dims=(None, 0, 0)), fullgraph=True)
    eager = vmap(grad(ours), in_dims=(None, 0, 0))(params, x, y).flat()
    compiled = step(params, x, y).flat()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    forward = torch.compile(lambda p, x: fm.apply(p, x), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(forward(params, x), module(x), rtol=1e-5, atol=1e-6)


# -- state and train mode --------------------------------------------------------------------


def test_buffers_the_module_updates_come_back_as_new_state_and_the_input_is_untouched():
    module = seeded(Tracking())
    params, state = transforms.from_module(module)
    before = {k: v.clone() for k, v in state.flat().items()}
    x = _x((6, 4))
    out = fm.run(params, x, state=state, train=True)
    module.train()
    want = module(x)
    torch.testing.assert_close(out.out, want, **EXACT)
    after = module.state_dict()
    assert set(out.state.flat()) == set(before)
    for k in before:  # assigned (seen), changed in place (average), the BatchNorm statistics
        torch.testing.assert_close(out.state[k], after[k], **EXACT, msg=k)
        assert torch.equal(state[k], before[k]), f"{k} was changed in place"
    assert int(out.state["seen"]) == int(before["seen"]) + 6


def test_dropout_inside_draws_from_torchs_generator_without_a_key_and_repeats_when_seeded():
    params, _ = transforms.from_module(seeded(Noisy()))
    x = _x((4, 6))
    torch.manual_seed(3)
    first = fm.apply(params, x, train=True)  # no key needed: the module cannot take one
    torch.manual_seed(3)
    again = fm.apply(params, x, train=True)
    assert torch.equal(first, again)
    assert (first == 0).any() and not torch.equal(first, fm.apply(params, x))
    mixed, _ = transforms.from_module(nn.Sequential(Noisy(), nn.Dropout(0.1)))
    with pytest.raises(ValueError, match=r"layer '1' \(Dropout\): needs a PRNG key"):
        fm.apply(mixed, x, train=True)  # funcmodels' own dropout still needs its key


# -- init, Stack -----------------------------------------------------------------------------


def test_init_runs_the_reset_hooks_under_a_generator_seeded_from_the_key():
    assert seed_of(fm.key(0)) == 18355299132458382170  # the key -> seed map must not drift
    spec = transforms.from_module(Tracking())[0].spec
    rng = torch.get_rng_state()
    params, state = fm.init_with_state(fm.key(0), spec)
    assert torch.equal(torch.get_rng_state(), rng)
    twin = Tracking()
    torch.manual_seed(seed_of(fm.key(0)))  # torch's own hooks on torch's generator
    twin.norm.reset_parameters()
    twin.reset_parameters()
    got = fm.to_state_dict(params, state)
    for k, t in twin.state_dict().items():
        assert torch.equal(got[k], t), k
    swiglu = transforms.from_module(SwiGLU())[0].spec
    a, b = fm.init(fm.key(0), swiglu), fm.init(fm.key(1), swiglu)
    assert not torch.equal(a["w1.weight"], b["w1.weight"])
    twin = SwiGLU()
    torch.manual_seed(seed_of(fm.key(0)))
    for layer in (twin.w1, twin.w3, twin.w2):
        layer.reset_parameters()
    for k, t in twin.state_dict().items():
        assert torch.equal(a[k], t), k


def test_init_names_tensors_no_hook_sets_and_refuses_vmap_over_keys():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    spec = transforms.from_module(Scale())[0].spec
    with pytest.raises(ValueError, match=r"cannot initialise \['scale'\].*reset_parameters"):
        fm.init(fm.key(0), spec)
    swiglu = transforms.from_module(SwiGLU())[0].spec
    with pytest.raises(ValueError, match="use fm.nn.Stack"):
        vmap(fm.init, in_dims=(0, None), randomness="different")(fm.split(fm.key(0), 2), swiglu)


def test_stack_members_are_the_module_reinitialised_from_their_keys():
    member = transforms.from_module(SwiGLU(4, 8))[0].spec
    stack = fm.nn.Stack(member, 3)
    key = fm.key(5)
    params = fm.init(key, stack)
    x = _x((2, 4))
    out = fm.apply(params, x)
    assert out.shape == (3, 2, 4)
    for i in range(3):
        alone = fm.init(fm.fold_in(key, i), member)
        for k, t in alone.flat().items():
            assert torch.equal(params[k][i], t), (i, k)
        torch.testing.assert_close(out[i], fm.apply(alone, x), **EXACT)


# -- transforms.dp -----------------------------------------------------------------------------


def test_clipped_grad_equals_materialising_and_keeps_the_closed_forms_outside(monkeypatch):
    import transforms.dp._rules as rules

    seen = []
    compute = rules.LinearRule.compute

    def spy(self, spec, x, g):
        seen.append(spec)
        return compute(self, spec, x, g)

    monkeypatch.setattr(rules.LinearRule, "compute", spy)
    params, _ = transforms.from_module(_model().double())
    x, y = _x((6, 6)).double(), torch.arange(6) % 3

    def loss(p, x, y):
        return F.cross_entropy(fm.apply(p, x), y, reduction="none")

    got, norms = transforms.dp.clipped_grad(loss, 0.5)(params, x, y)
    want, want_norms = reference(loss, params, x, y, max_norm=0.5)
    torch.testing.assert_close(norms, want_norms, **TOL)
    for k, g in want.items():
        torch.testing.assert_close(got[k], g, **TOL, msg=k)
    assert seen == [params.spec.child("0"), params.spec.child("3")]  # the opaque part: vmap


# -- the boundary and the way back -----------------------------------------------------------


def test_to_module_gives_back_the_original_type_with_ties_constants_and_outputs():
    module = seeded(TinyLM())
    params, state = transforms.from_module(module)
    back = transforms.to_module(params, state)
    assert type(back) is TinyLM and back.head.weight is back.embed.weight
    assert float(back.temperature) == float(module.temperature)
    assert list(back.state_dict()) == list(module.state_dict())
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), module(ids), **EXACT)
    nested = seeded(nn.Sequential(nn.Linear(4, 4), Tracking()))
    back = transforms.to_module(*transforms.from_module(nested))
    assert [type(m) for m in back] == [nn.Linear, Tracking]
    for k, t in nested.state_dict().items():
        assert torch.equal(back.state_dict()[k], t), k
    assert not back._load_state_dict_pre_hooks and not back[1]._load_state_dict_post_hooks


def test_a_weight_shared_by_known_layers_makes_their_common_parent_opaque():
    embed, head = nn.Embedding(7, 4), nn.Linear(4, 7, bias=False)
    head.weight = embed.weight
    inner = nn.Sequential(embed, nn.Tanh())
    model = nn.Sequential(nn.Sequential(inner, head), nn.ReLU())
    params, _ = transforms.from_module(model)
    assert type(params.spec.child("0")) is transforms.TorchModule
    assert type(params.spec.child("1")) is fm.nn.ReLU
    assert list(params.flat()) == ["0.0.0.weight"]
    shared = nn.Linear(3, 3)
    params, _ = transforms.from_module(nn.Sequential(shared, nn.ReLU(), shared))
    assert type(params.spec) is transforms.TorchModule and list(params.flat()) == [
        "0.weight",
        "0.bias",
    ]


def test_opaque_keeps_known_modules_whole_by_type_or_path_and_errors_say_so():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    by_type, _ = transforms.from_module(model, opaque=[nn.Linear])
    assert [type(s).__name__ for _, s in by_type.spec.walk()] == [
        "Sequential",
        "TorchModule",
        "Sequential",
        "TorchModule",
        "ReLU",
    ]
    by_path, _ = transforms.from_module(model, opaque=["1"])
    assert type(by_path.spec.child("1")) is transforms.TorchModule
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=lambda t: t.tanh())
    with pytest.raises(ValueError, match=r"as a TorchModule: from_module\(module, opaque=\[''\]\)"):
        transforms.from_module(layer)
    params, _ = transforms.from_module(layer, opaque=[""])
    x = _x((2, 3, 8))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, x), layer.eval()(x), **EXACT)
    with pytest.raises(TypeError, match="opaque= takes nn.Module classes and dotted"):
        transforms.from_module(model, opaque=[3])


def test_shapes_come_from_the_module_on_the_meta_device():
    params, _ = transforms.from_module(_model())
    shapes = fm.shapes(params.spec, (6,))
    assert shapes["1"] == (8,) and shapes[""] == (3,)
    lm = transforms.from_module(TinyLM())[0].spec
    assert fm.shapes(lm, (5,))[""] == (5, 11)  # token ids: tried as int64


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="TorchModule: expected an nn.Module, got int"):
        transforms.TorchModule(3)
    spec = transforms.TorchModule(SwiGLU())
    assert spec == spec and spec != transforms.TorchModule(SwiGLU())  # no recipe: identity
    assert hash(spec) == hash(spec) and repr(spec).endswith("opaque_models.SwiGLU)")
