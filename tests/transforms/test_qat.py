"""transforms.qat: PT2E quantization-aware training to int8 through torchao.

References: the float module for the fake-quantized model, the fake-quantized model (in
eval mode) for the int8 one, the int8 model itself for its saved and reloaded copy.
8-bit quantization moves outputs by about 1% of their range here, so the comparisons
allow 3% of the largest output magnitude; the reload must be bit-exact.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import fx

import funcmodels as fm
import transforms

REL_TOL = 0.03


def assert_close_to(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= REL_TOL * scale, f"max error {err:.3g} exceeds {REL_TOL} x {scale:.3g}"


@pytest.fixture
def float_model():
    """A small conv net with BatchNorm via to_module, in eval mode, and a batch."""
    nn = fm.nn
    spec = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    return transforms.to_module(params, state), x, y


def fake_quant_modules(gm: fx.GraphModule) -> int:
    from torchao.quantization.pt2e import FakeQuantizeBase

    return sum(isinstance(m, FakeQuantizeBase) for m in gm.modules())


@pytest.mark.slow
def test_prepare_inserts_fake_quantization_close_to_float(float_model):
    module, x, _ = float_model
    fused = transforms.fuse(module)
    prepared = transforms.qat.prepare(fused, (x,))
    assert prepared.training
    # Conv and linear weights, and the activations between them, are fake-quantized.
    assert fake_quant_modules(prepared) >= 4
    for _ in range(3):  # observers calibrate in train mode
        prepared(x)
    prepared.eval()
    with torch.no_grad():
        got, want = prepared(x), fused(x)
    assert_close_to(got, want)
    assert not torch.equal(got, want)
    # The batch size is not fixed by the example input.
    with torch.no_grad():
        assert_close_to(prepared(x[:5]), fused(x[:5]))


@pytest.mark.slow
def test_prepared_model_trains_with_torch_optim(float_model):
    module, x, y = float_model
    before = {k: v.clone() for k, v in module.state_dict().items()}
    prepared = transforms.qat.prepare(module, (x,))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    # The float model given to prepare is not trained along.
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_convert_gives_int8_weights_matching_the_fake_quantized_model(float_model, tmp_path):
    module, x, y = float_model
    # Fused first, as in deployment (converting a kept Conv-BatchNorm pair works too, but
    # torchao's pattern matching for it takes seconds).
    prepared = transforms.qat.prepare(transforms.fuse(module), (x,))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    for _ in range(3):
        loss = F.cross_entropy(prepared(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prepared.eval()
    with torch.no_grad():
        want = prepared(x)
    int8 = transforms.qat.convert(prepared)
    sd = int8.state_dict()
    shapes = {tuple(v.shape) for v in sd.values() if v.dtype == torch.int8}
    assert shapes == {(4, 1, 3, 3), (3, 144)}
    # The float weights are gone: only biases, scales and zero points remain besides.
    assert not [k for k, v in sd.items() if v.dtype == torch.float32 and v.dim() > 1]
    with torch.no_grad():
        got = int8(x)
    assert_close_to(got, want)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9

    path = tmp_path / "int8.pt2"
    batch = torch.export.Dim.AUTO
    torch.export.save(torch.export.export(int8, (x,), dynamic_shapes=({0: batch},)), path)
    reloaded = torch.export.load(path).module()
    with torch.no_grad():
        assert torch.equal(reloaded(x), got)
        assert torch.equal(reloaded(x[:5]), int8(x[:5]))


def test_without_torchao_the_error_says_how_to_install(float_model, monkeypatch):
    module, x, _ = float_model
    # A None entry makes `import torchao` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ImportError, match="needs torchao.*pip install"):
        transforms.qat.prepare(module, (x,))
    with pytest.raises(ImportError, match="needs torchao.*pip install"):
        transforms.qat.convert(fx.symbolic_trace(module))


def test_bad_arguments_are_type_errors(float_model):
    module, x, _ = float_model
    with pytest.raises(TypeError, match=r"tuple of inputs such as \(x,\)"):
        transforms.qat.prepare(module, x)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        transforms.qat.prepare(fm.nn.Linear(2, 2), (x,))
    with pytest.raises(TypeError, match="GraphModule from transforms.qat.prepare"):
        transforms.qat.convert(module)
