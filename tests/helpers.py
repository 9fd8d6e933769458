"""Helpers shared by the test modules (fixtures live in ``tests/conftest.py``).

* torch references: :func:`torch_twin` loads funcmodels tensors into a torch module,
  :func:`torch_twin_of` builds the torch module of a spec, :func:`spec_and_module` builds
  a spec and a torch module from the same arguments, :func:`twin` gives params and the
  torch module holding them, :class:`TorchResidualBlock` is the torch layout of
  ``fm.nn.ResidualBlock``, :func:`torch_shapes` records the output shape of every
  submodule, :func:`torch_run` runs a module on torch's regular path, :func:`causal`
  is torch's causal mask;
* per-sample gradients: :func:`assert_per_sample_grads_match` compares ``vmap(grad)``
  with a loop of single-sample ``torch.autograd.grad`` calls;
* tensors off their initial values: :func:`randomised`; test inputs: :func:`example_input`;
* :data:`MODELS`, small models covering every ``funcmodels.nn`` layer;
* the examples: :data:`ROOT`, :func:`run_example` and :func:`parse_float`.

Random values here come from ``torch.Generator`` objects seeded by the caller: they are
independent of the funcmodels generator under test, and never touch torch's global one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._spec import field_values

fnn = fm.nn


# -- torch references ---------------------------------------------------------------------


def torch_twin(module: nn.Module, params: fm.Params, state: fm.State | None = None):
    """Load funcmodels tensors into a torch module (strict: every key must match)."""
    module.load_state_dict(fm.to_state_dict(params, state), strict=True)
    return module


class TorchResidualBlock(nn.Module):
    """The reference block: one activation instance per use and an out-of-place sum."""

    def __init__(
        self,
        in_channels,
        out_channels,
        stride=1,
        groups=1,
        dilation=1,
        use_se=False,
        se_ratio=0.25,
        norm=nn.BatchNorm2d,
        activation=nn.ReLU,
        conv_bias=False,
    ):
        super().__init__()
        conv = dict(padding=dilation, groups=groups, bias=conv_bias, dilation=dilation)
        self.main_branch = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, **conv),
            norm(out_channels),
            activation(),
            nn.Conv2d(out_channels, out_channels, 3, stride=1, **conv),
            norm(out_channels),
        )
        self.use_se = use_se
        if use_se:
            reduced = max(1, int(out_channels * se_ratio))
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(out_channels, reduced, 1),
                activation(),
                nn.Conv2d(reduced, out_channels, 1),
                nn.Sigmoid(),
            )
        self.projection = None
        if in_channels != out_channels or stride != 1:
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=conv_bias),
                norm(out_channels),
            )
        self.activation = activation()

    def forward(self, x):
        identity = x
        out = self.main_branch(x)
        if self.use_se:
            out = out * self.se(out)
        if self.projection is not None:
            identity = self.projection(x)
        return self.activation(out + identity)


# Spec type -> torch.nn type for the layers whose fields are torch's constructor arguments.
TORCH_TYPES = {
    fnn.Linear: nn.Linear,
    fnn.Conv1d: nn.Conv1d,
    fnn.Conv2d: nn.Conv2d,
    fnn.BatchNorm1d: nn.BatchNorm1d,
    fnn.BatchNorm2d: nn.BatchNorm2d,
    fnn.LayerNorm: nn.LayerNorm,
    fnn.GroupNorm: nn.GroupNorm,
    fnn.Identity: nn.Identity,
    fnn.ReLU: nn.ReLU,
    fnn.GELU: nn.GELU,
    fnn.SiLU: nn.SiLU,
    fnn.Sigmoid: nn.Sigmoid,
    fnn.Tanh: nn.Tanh,
    fnn.Softmax: nn.Softmax,
    fnn.LogSoftmax: nn.LogSoftmax,
    fnn.Dropout: nn.Dropout,
    fnn.Flatten: nn.Flatten,
    fnn.MaxPool2d: nn.MaxPool2d,
    fnn.AvgPool2d: nn.AvgPool2d,
    fnn.AdaptiveAvgPool1d: nn.AdaptiveAvgPool1d,
    fnn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
}


def torch_twin_of(spec: fm.Spec) -> nn.Module:
    """The torch.nn module of a fully sized spec, with fresh tensors: the ``torch.nn``
    class of the same name, built with the spec's fields (plain ReLU residual blocks)."""
    if isinstance(spec, fnn.Sequential):
        return nn.Sequential(OrderedDict((n, torch_twin_of(c)) for n, c in spec.layers))
    if isinstance(spec, fnn.ResidualBlock):
        assert spec.norm == "batch" and spec.activation == fnn.ReLU()
        return TorchResidualBlock(
            spec.in_channels,
            spec.out_channels,
            spec.stride,
            spec.groups,
            spec.dilation,
            spec.use_se,
            spec.se_ratio,
        )
    cls = TORCH_TYPES.get(type(spec)) or getattr(nn, type(spec).__name__)
    return cls(**field_values(spec))


def spec_and_module(name: str, *args, **kwargs) -> tuple[fm.Spec, nn.Module]:
    """``fm.nn.<name>`` and ``torch.nn.<name>`` built from the same arguments (the module
    with torch's own fresh tensors)."""
    return getattr(fnn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)


def twin(
    spec: fm.Spec, seed: int = 0, *, module: nn.Module | None = None, randomise: bool = True
) -> tuple[fm.Params, nn.Module]:
    """Params of ``spec`` and a torch module holding the same tensors.

    Arguments:
        spec: a fully sized spec.
        seed: the key of ``fm.init`` (and the generator's seed of :func:`randomised`).
        module: the module to load (default: :func:`torch_twin_of` the spec).
        randomise: move every tensor off its initial value (:func:`randomised`), so that
            a misplaced tensor shows; ``False`` keeps ``fm.init``'s values.

    Returns:
        ``(params, module)``; the module holds the state too, where the spec has one.
    """
    if randomise:
        params, state = randomised(spec, seed)
    else:
        params, state = fm.init_with_state(fm.key(seed), spec)
    return params, torch_twin(torch_twin_of(spec) if module is None else module, params, state)


def torch_run(module: nn.Module, *args, fast: bool = False, **kwargs):
    """The module's output without autograd, on torch's regular path (``fast=False``) or
    with the fast paths of its attention layers allowed (eval mode: native attention,
    the fused encoder layer, nested tensors)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fast)
    try:
        with torch.no_grad():
            return module(*args, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def causal(n: int) -> torch.Tensor:
    """torch's float causal mask of ``n`` positions."""
    return torch.nn.Transformer.generate_square_subsequent_mask(n)


def torch_shapes(module: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-example output shape of every submodule (by dotted name) on the batch ``x``."""
    seen: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        # A hook that returns a value would replace the module's output.
        def record(_module, _inputs, out) -> None:
            seen.setdefault(name, tuple(out.shape[1:]))

        return record

    hooks = [m.register_forward_hook(hook(name)) for name, m in module.named_modules()]
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


# -- per-sample gradients -----------------------------------------------------------------


def per_sample_grads(params, x, y, *, state=None, loss=None):
    """``vmap(grad(loss))`` over the batch; ``loss(out, target)`` defaults to squared error."""
    loss = loss or (lambda out, t: ((out - t) ** 2).sum())

    def f(p, xi, yi):
        return loss(fm.apply(p, xi, state=state), yi)

    return vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)


def loop_grads(params, x, y, *, state=None, loss=None):
    """Reference: one ``torch.autograd.grad`` call per sample, stacked."""
    loss = loss or (lambda out, t: ((out - t) ** 2).sum())
    flat = fm.to_state_dict(params)
    names = list(flat)
    per: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        leaves = {n: t.detach().requires_grad_(True) for n, t in flat.items()}
        p = fm.Params(params.spec, leaves)
        out = fm.apply(p, x[i : i + 1], state=state)[0]
        gs = torch.autograd.grad(loss(out, y[i]), [leaves[n] for n in names], allow_unused=True)
        for n, g in zip(names, gs, strict=True):
            per[n].append(torch.zeros_like(flat[n]) if g is None else g)
    return {n: torch.stack(v) for n, v in per.items()}


def assert_per_sample_grads_match(params, x, y, *, state=None, loss=None, atol=1e-5, rtol=1e-4):
    """vmap(grad) per-sample gradients equal a loop of single-sample gradients."""
    got = fm.to_state_dict(per_sample_grads(params, x, y, state=state, loss=loss))
    want = loop_grads(params, x, y, state=state, loss=loss)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=atol, rtol=rtol, msg=f"grad of {n}")


# -- parameter-free layers against their torch.nn namesakes ---------------------------------
#
# Each check takes a case (layer name, positional and keyword arguments shared by our spec
# and torch's module, batched input shape, how one example compares: "torch" when torch
# takes it alike, "batch" when torch only takes a batch, None when an example means
# something else). Same kernels on the same input: exact equality.

_EXACT = {"atol": 0.0, "rtol": 0.0}


def check_matches_torch(name, args, kwargs, shape, single) -> None:
    """Batched, one example and train mode equal torch's; the input is left untouched."""
    spec, module = spec_and_module(name, *args, **kwargs)
    params = fm.init(fm.key(0), spec)
    assert fm.to_state_dict(params) == {} == module.state_dict()
    x = example_input(shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **_EXACT)
    if single is not None:
        want = module(x[1]) if single == "torch" else module(x[1:2])[0]
        torch.testing.assert_close(fm.apply(params, x[1]), want, **_EXACT)
    train = fm.apply(params, x, key=fm.key(2), train=True)
    torch.testing.assert_close(train, module.train()(x), **_EXACT)
    torch.testing.assert_close(x, before, **_EXACT)


def check_zero_size_batch(name, args, kwargs, shape) -> None:
    spec, module = spec_and_module(name, *args, **kwargs)
    x = example_input(shape)[:0]
    got = fm.apply(fm.init(fm.key(0), spec), x)
    assert got.shape == module(x).shape and got.shape[0] == 0


def check_shape_inference(name, args, kwargs, shape) -> None:
    spec, module = spec_and_module(name, *args, **kwargs)
    assert fm.shapes(spec, shape[1:])[""] == tuple(module(example_input(shape)).shape[1:])


def check_per_sample_grads(name, args, kwargs, shape) -> None:
    """Behind a 1x1 conv (which fixes the example rank, so that fm.apply batches each
    single example) and before a Linear."""
    layer, module = spec_and_module(name, *args, **kwargs)
    conv = {3: fnn.Conv1d, 4: fnn.Conv2d, 5: fnn.Conv3d}[len(shape)]
    channels = shape[1]
    flat = module(torch.ones(1, *shape[1:])).numel()
    spec = fnn.Sequential(conv(channels, channels, 1), layer, fnn.Flatten(), fnn.Linear(flat, 2))
    params = fm.init(fm.key(2), spec)
    x = example_input(shape, seed=3)
    y = example_input((shape[0], 2), seed=4)
    assert_per_sample_grads_match(params, x, y)


def check_torch_module_and_back(name, args, kwargs, shape) -> None:
    """``to_module`` gives torch's class computing the same; torch's own module (and the
    one to_module made) read back to the spec."""
    spec, module = spec_and_module(name, *args, **kwargs)
    params = fm.init(fm.key(0), spec)
    built = transforms.to_module(params)
    assert type(built) is type(module)
    x = example_input(shape)
    torch.testing.assert_close(built(x), fm.apply(params, x), **_EXACT)
    assert transforms.from_module(built)[0].spec == spec
    assert transforms.from_module(module)[0].spec == spec


def check_config_and_file(name, args, kwargs, directory: Path) -> None:
    spec, _ = spec_and_module(name, *args, **kwargs)
    for defaults in (False, True):
        assert fm.from_config(spec.to_config(defaults=defaults)) == spec
    assert spec.to_config()["type"] == name.lower()
    wrapped = fnn.Sequential(spec)
    fm.save(directory / "m.safetensors", fm.init(fm.key(0), wrapped))
    assert fm.load(directory / "m.safetensors")[0].spec == wrapped


# -- tensors off their initial values ------------------------------------------------------


def _moved(name: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``t`` moved off its initial value; the rule depends on the tensor's name."""
    if not t.is_floating_point():  # num_batches_tracked
        return torch.full_like(t, 7)
    if name.endswith("running_var"):
        return torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5
    if name.endswith("running_mean"):
        return 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
    return t + 0.2 * torch.randn(t.shape, generator=g, dtype=t.dtype)


def randomised(model, seed: int = 0, *, dtype: torch.dtype = torch.float32):
    """Every tensor of a model moved off its initial value, from a ``torch.Generator``.

    Norm layers start at weight 1, bias 0, mean 0, var 1, where a wrong mapping of those
    tensors would go unnoticed; random values expose it. Parameters get noise of std 0.2
    added (so they keep the scale of their initialisation), running means are drawn with
    std 0.3, running variances from ``[0.5, 1.5)``, and ``num_batches_tracked`` is 7.

    Arguments:
        model: a spec, or a ``torch.nn.Module``.
        seed: the key of ``fm.init_with_state`` (for a spec) and the generator's seed.
        dtype: the dtype of the spec's tensors (a module keeps its own).

    Returns:
        ``(params, state)`` for a spec; for a module, the module itself, with every
        parameter and buffer of its ``state_dict`` replaced in place.
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, nn.Module):
        with torch.no_grad():
            for name, t in model.state_dict().items():
                t.copy_(_moved(name, t, g))
        return model
    params, state = fm.init_with_state(fm.key(seed), model, dtype=dtype)
    entries = {n: _moved(n, t, g) for n, t in fm.to_state_dict(params, state).items()}
    return fm.from_state_dict(model, entries)


def example_input(shape: tuple[int, ...], seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """A standard-normal input of ``shape`` from a seeded ``torch.Generator``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- small models covering every funcmodels.nn layer ----------------------------------------

# name -> (spec, input shape); the batch of 6 gives BatchNorm real batch statistics.
MODELS: dict[str, tuple[fm.Spec, tuple[int, ...]]] = {
    "mlp": (
        fnn.Sequential(
            fnn.Linear(6, 8),
            fnn.LayerNorm(8),
            fnn.GELU("tanh"),
            fnn.Dropout(0.0),
            fnn.Linear(8, 4, bias=False),
            fnn.SiLU(),
            fnn.Linear(4, 3),
            fnn.LogSoftmax(),
        ),
        (6, 6),
    ),
    "conv1d": (
        fnn.Sequential(
            fnn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect"),
            fnn.BatchNorm1d(4, momentum=None),
            fnn.Tanh(),
            fnn.AdaptiveAvgPool1d(3),
            fnn.Flatten(),
            fnn.Linear(12, 5),
            fnn.BatchNorm1d(5),
            fnn.Softmax(),
        ),
        (6, 2, 7),
    ),
    "cnn": (
        fnn.Sequential(
            fnn.Conv2d(3, 8, 3, padding=1),
            fnn.BatchNorm2d(8),
            fnn.ReLU(),
            fnn.MaxPool2d(2),
            fnn.Conv2d(8, 8, 3, groups=2, bias=False),
            fnn.GroupNorm(2, 8),
            fnn.Sigmoid(),
            fnn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            fnn.Flatten(),
            fnn.Linear(8, 4),
        ),
        (6, 3, 8, 8),
    ),
    "resnet": (
        fnn.Sequential(
            fnn.ResidualBlock(3, 8, stride=2, use_se=True),
            fnn.ResidualBlock(8, 8, norm="group", norm_groups=2, activation=fnn.GELU()),
            fnn.ResidualBlock(8, 8, norm="none"),
            fnn.AdaptiveAvgPool2d((1, None)),
            fnn.Flatten(),
            fnn.Linear(32, 3),
        ),
        (6, 3, 8, 8),
    ),
    "nested": (
        fnn.Sequential(
            {
                "stem": fnn.Sequential(fnn.Conv2d(1, 4, 3), fnn.BatchNorm2d(4, affine=False)),
                "head": fnn.Sequential(
                    fnn.Flatten(),
                    fnn.Linear(4 * 4 * 4, 6),
                    fnn.BatchNorm1d(6, eps=1e-3),
                    fnn.ReLU(),
                    fnn.Linear(6, 2),
                ),
            }
        ),
        (6, 1, 6, 6),
    ),
    "block": (fnn.ResidualBlock(4, 6, use_se=True, se_ratio=0.5), (6, 4, 5, 5)),
    "linear": (fnn.Linear(5, 3), (6, 5)),
}


# -- the examples ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` in a fresh interpreter; return its stdout (fail on exit != 0)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def parse_float(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in ``text``; fails the test when absent."""
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))
