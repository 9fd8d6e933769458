"""to_module / from_module: real torch.nn layers that compute what fm.apply computes.

References: ``fm.apply``/``fm.run`` for outputs and state updates, ``torch.func.grad`` of
``fm.apply`` for gradients, a functional SGD loop for training with ``torch.optim``.
Tolerances: outputs and state within ``atol=1e-6, rtol=1e-5`` (the same float32 kernels
run on both sides, so only summation order may differ); gradients and trained weights
within ``atol=1e-5, rtol=1e-4``; round trips exact (``torch.equal``).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import grad

import funcmodels as fm
import transforms
from tests.helpers import MODELS, example_input, randomised
from tests.transforms.bridge.reference import OUT_TOL, assert_same_tensors
from transforms.bridge import FunctionalModule

GRAD_TOL = dict(atol=1e-5, rtol=1e-4)
# Models without dropout and with batches large enough for train-mode BatchNorm.
TRAINABLE = ["conv1d", "cnn", "resnet", "nested", "block", "linear", "mlp"]


@pytest.fixture(params=sorted(MODELS))
def model(request):
    spec, shape = MODELS[request.param]
    params, state = randomised(spec)
    return params, state, example_input(shape)


def test_state_dict_matches_to_state_dict(model):
    params, state, _ = model
    module = transforms.to_module(params, state)
    assert_same_tensors(module.state_dict(), fm.to_state_dict(params, state))


def test_layers_are_torch_nn_twins():
    params, state = randomised(MODELS["cnn"][0])
    module = transforms.to_module(params, state)
    kinds = [type(m) for m in module]
    assert kinds == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.GroupNorm,
        nn.Sigmoid,
        nn.AvgPool2d,
        nn.Flatten,
        nn.Linear,
    ]
    assert not module.training


def test_forward_matches_apply_in_eval_mode(model):
    params, state, x = model
    module = transforms.to_module(params, state)
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x, state=state), **OUT_TOL)


@pytest.mark.parametrize("name", TRAINABLE)
def test_forward_and_state_match_run_in_train_mode(name):
    spec, shape = MODELS[name]
    params, state = randomised(spec)
    x = example_input(shape)
    module = transforms.to_module(params, state).train()
    want = fm.run(params, x, state=state, train=True, key=fm.key(0))
    with torch.no_grad():
        got = module(x)
    torch.testing.assert_close(got, want.out, **OUT_TOL)
    new = fm.to_state_dict(params, want.state)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, new[k], **OUT_TOL, msg=k)


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("train", [False, True])
def test_gradients_match_torch_func_grad(name, train):
    spec, shape = MODELS[name]
    params, state = randomised(spec)
    x = example_input(shape)
    module = transforms.to_module(params, state).train(train)
    with torch.no_grad():
        weights = example_input(fm.apply(params, x, state=state).shape, seed=2)

    def loss(p):
        out = fm.run(p, x, state=state, train=train, key=fm.key(0)).out
        return (out * weights).sum()

    want = fm.to_state_dict(grad(loss)(params))
    (module(x) * weights).sum().backward()
    got = {n: p.grad for n, p in module.named_parameters()}
    assert list(got) == list(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], **GRAD_TOL, msg=n)


def test_trains_with_torch_optim_like_functional_sgd():
    spec, shape = MODELS["cnn"]
    params, state = randomised(spec)
    x = example_input(shape)
    target = torch.randn(shape[0], 4, generator=torch.Generator().manual_seed(3))
    module = transforms.to_module(params, state).train()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        ((module(x) - target) ** 2).mean().backward()
        opt.step()

    def loss(p, s):
        out = fm.run(p, x, state=s, train=True)
        return ((out.out - target) ** 2).mean(), out.state

    p, s = params, state
    for _ in range(3):
        g, s_next = grad(loss, has_aux=True)(p, s)
        p = fm.Params(spec, {k: v - 0.1 * g[k] for k, v in p.flat().items()})
        s = s_next
    want = fm.to_state_dict(p, s)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, want[k], **GRAD_TOL, msg=k)
    # The functional params were copied, not shared: training left them unchanged.
    assert not torch.equal(module[0].weight.detach(), params["0"]["weight"])


def test_module_owns_copies_and_keeps_dtype_and_rng():
    spec = MODELS["nested"][0]
    params, state = randomised(spec, dtype=torch.float64)
    before = {k: v.clone() for k, v in fm.to_state_dict(params, state).items()}
    rng = torch.get_rng_state()
    module = transforms.to_module(params, state)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(t.dtype == torch.float64 for t in module.parameters())
    for t in module.parameters():
        t.data.add_(1.0)
    for b in module.buffers():
        b.add_(1)
    assert_same_tensors(fm.to_state_dict(params, state), before)
    assert all(p.requires_grad for p in module.parameters())


def test_round_trip_from_funcmodels_is_exact(model):
    params, state, x = model
    back_params, back_state = transforms.from_module(transforms.to_module(params, state))
    assert back_params.spec == params.spec
    assert_same_tensors(back_params.flat(), params.flat())
    assert_same_tensors(back_state.flat(), state.flat())


def torch_model() -> nn.Module:
    """A model written directly with torch.nn, torch's own initialisation."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding="valid"), nn.BatchNorm2d(6)),
        nn.ReLU(inplace=True),
        nn.Dropout(0.1),
        nn.Conv2d(6, 6, (1, 3), padding=(0, 1), padding_mode="circular"),
        nn.GroupNorm(3, 6),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(24, 8), nn.LayerNorm(8, bias=False), nn.Tanh()),
        nn.Linear(8, 2),
    )
    model.train()(torch.randn(4, 3, 9, 9))  # moves the running statistics
    return model.eval()


def test_from_torch_module_computes_the_same_and_round_trips():
    module = torch_model()
    x = torch.randn(5, 3, 9, 9)
    params, state = transforms.from_module(module)
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(params, x, state=state), module(x), **OUT_TOL)
    back = transforms.to_module(params, state)
    assert [(n, type(m)) for n, m in back.named_modules()] == [
        (n, type(m)) for n, m in module.named_modules()
    ]
    assert_same_tensors(back.state_dict(), module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), module(x), **OUT_TOL)


def test_from_module_copies_tensors():
    module = torch_model()
    params, _ = transforms.from_module(module)
    with torch.no_grad():
        module[3].weight.add_(1.0)
    assert not torch.equal(params["3"]["weight"], module[3].weight)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_symbolic_trace_and_export_work(name):
    spec, shape = MODELS[name]
    params, state = randomised(spec)
    x = example_input(shape)
    module = transforms.to_module(params, state)
    with torch.no_grad():
        want = module(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(module)(x), want, **OUT_TOL)
        exported = torch.export.export(module, (x,))
        torch.testing.assert_close(exported.module()(x), want, **OUT_TOL)


def test_export_in_train_mode_updates_batchnorm_statistics():
    params, state = randomised(MODELS["resnet"][0])
    x = example_input(MODELS["resnet"][1])
    module = transforms.to_module(params, state).train()
    exported = torch.export.export(module, (x,)).module()
    want = fm.run(params, x, state=state, train=True)
    torch.testing.assert_close(exported(x), want.out, **OUT_TOL)
    got = exported.state_dict()
    for k, v in fm.to_state_dict(params, want.state).items():
        torch.testing.assert_close(got[k], v, **OUT_TOL, msg=k)


def test_stateful_spec_without_state_is_an_error():
    params = fm.init(fm.key(0), MODELS["cnn"][0])
    with pytest.raises(ValueError, match="has state .*init_with_state"):
        transforms.to_module(params)


class _Unknown(nn.Module):
    """A module type no converter knows."""

    def forward(self, x):
        return x


def test_unsupported_module_names_its_path_and_type():
    module = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), _Unknown()))
    with pytest.raises(TypeError, match=r"module '1\.1' \(_Unknown\) is not supported"):
        transforms.from_module(module)


@dataclass(frozen=True)
class _Scale(fm.Spec):
    """A layer outside funcmodels.nn: ``x * weight``, one weight per feature."""

    features: int

    def param_shapes(self):
        return {"weight": (self.features,)}

    def init_params(self, key, *, dtype, device):
        return {"weight": fm.random.normal(key, (self.features,), dtype, device)}

    def forward(self, ctx, x):
        return x * ctx.param("weight")


class _ScaleModule(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(features))

    def forward(self, x):
        return x * self.weight


def test_registered_converter_is_used_both_ways(scratch_converters):
    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), _Scale(4))
    params = fm.init(fm.key(0), spec)
    transforms.register_converter(
        _Scale,
        _ScaleModule,
        build=lambda s, child: _ScaleModule(s.features),
        infer=lambda m, child: _Scale(m.weight.shape[0]),
    )
    module = transforms.to_module(params)
    assert isinstance(module[1], _ScaleModule)
    x = example_input((2, 3))
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), **OUT_TOL)
    back, _ = transforms.from_module(module)
    assert back.spec == spec
    assert_same_tensors(back.flat(), params.flat())


def test_register_converter_checks_its_arguments(scratch_converters):
    build = lambda s, child: _ScaleModule(s.features)  # noqa: E731
    infer = lambda m, child: _Scale(m.weight.shape[0])  # noqa: E731
    with pytest.raises(TypeError, match="spec_type must be a Spec subclass, got <class 'int'>"):
        transforms.register_converter(int, _ScaleModule, build=build, infer=infer)
    with pytest.raises(TypeError, match="spec_type must be a Spec subclass, got _Scale"):
        transforms.register_converter(_Scale(2), _ScaleModule, build=build, infer=infer)
    with pytest.raises(TypeError, match="module_type must be an nn.Module subclass.*_Scale"):
        transforms.register_converter(_Scale, _Scale, build=build, infer=infer)
    with pytest.raises(TypeError, match="build must be callable, got None"):
        transforms.register_converter(_Scale, _ScaleModule, build=None, infer=infer)
    with pytest.raises(TypeError, match="infer must be callable, got 'x'"):
        transforms.register_converter(_Scale, _ScaleModule, build=build, infer="x")
    # Nothing was registered by the failed calls.
    assert _Scale not in scratch_converters._BY_SPEC
    assert _ScaleModule not in scratch_converters._BY_MODULE


def test_converter_that_builds_the_wrong_module_type_names_the_spec(scratch_converters):
    transforms.register_converter(
        _Scale,
        _ScaleModule,
        build=lambda s, child: nn.Identity(),
        infer=lambda m, child: _Scale(m.weight.shape[0]),
    )
    params = fm.init(fm.key(0), fm.nn.Sequential(fm.nn.Linear(3, 4), _Scale(4)))
    with pytest.raises(
        TypeError, match=r"converter of _Scale returned Identity, expected _ScaleModule"
    ):
        transforms.to_module(params)


def test_converter_asking_for_a_missing_child_names_the_module(scratch_converters):
    transforms.register_converter(
        _Scale,
        _ScaleModule,
        build=lambda s, child: _ScaleModule(s.features),
        infer=lambda m, child: child("inner"),
    )
    module = nn.Sequential(nn.Linear(3, 4), _ScaleModule(4))
    with pytest.raises(
        ValueError, match=r"module '1' \(_ScaleModule\) has no child 'inner'; children: \[\]"
    ):
        transforms.from_module(module)


def test_to_module_and_from_module_reject_the_wrong_argument_types():
    params = fm.init(fm.key(0), fm.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="to_module: expected Params from fm.init, got dict"):
        transforms.to_module(params.flat())
    with pytest.raises(TypeError, match="from_module: expected an nn.Module, got Linear"):
        transforms.from_module(params.spec)
    with pytest.raises(TypeError, match="FunctionalModule: expected a layer spec, got Linear"):
        FunctionalModule(nn.Linear(2, 3))


@dataclass(frozen=True)
class _Counter(fm.Spec):
    """A layer without a converter: ``x * weight``, plus noise drawn from its key in train
    mode, where it also counts the examples it has seen (a buffer); plus the count in eval
    mode."""

    features: int

    def param_shapes(self):
        return {"weight": (self.features,)}

    def init_params(self, key, *, dtype, device):
        return {"weight": torch.ones(self.features, dtype=dtype, device=device)}

    def state_shapes(self):
        return {"seen": ((), None)}

    def init_state(self, key, *, dtype, device):
        return {"seen": torch.zeros((), dtype=dtype, device=device)}

    def forward(self, ctx, x):
        x = x * ctx.param("weight")
        if ctx.train:
            ctx.set_buffer("seen", ctx.buffer("seen") + x.shape[0])
            return x + fm.random.normal(ctx.key(), x.shape)
        return x + ctx.buffer("seen")


def test_a_spec_without_converter_becomes_a_functional_module():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), _Counter(4))
    params, state = randomised(spec)
    seen = state["1.seen"].clone()
    module = transforms.to_module(params, state)
    assert type(module[1]) is FunctionalModule and module[1].spec == _Counter(4)
    assert "_Counter(features=4)" in repr(module)
    assert list(module.state_dict()) == list(fm.to_state_dict(params, state))
    x = example_input((5, 3))
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x, state=state), **OUT_TOL)
    # Train mode: the buffer is updated in place as fm.run updates it, and the key comes
    # from torch's global generator, so a seed fixes the output.
    module.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        a = module(x)
        torch.manual_seed(0)
        b = module(x)
        c = module(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    torch.testing.assert_close(module[1].seen, seen + 3 * 5)
    assert torch.equal(state["1.seen"], seen)  # the functional state is left alone
    # The spec is read back from the module: the round trip is exact.
    back, back_state = transforms.from_module(module.eval())
    assert back.spec == spec
    assert torch.equal(back["1.weight"], params["1.weight"])
    assert torch.equal(back_state["1.seen"], module[1].seen)


@pytest.mark.slow
def test_import_directions_and_torchao_is_optional():
    # funcmodels never imports transforms; transforms works with torchao missing (a None
    # entry in sys.modules makes every import of it fail), which also shows the import
    # is lazy.
    code = (
        "import sys; sys.modules['torchao'] = None; import funcmodels as fm; "
        "assert 'transforms' not in sys.modules; import transforms; "
        "p = fm.init(fm.key(0), fm.nn.Linear(2, 3)); "
        "assert transforms.from_module(transforms.to_module(p))[0].spec == p.spec"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
