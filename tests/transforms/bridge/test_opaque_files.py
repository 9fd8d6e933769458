"""TorchModule in files and configs: the recipe it is written as, the refusal without one,
the trust model on reading (no class is imported by name; only registered classes are
built), and a Hugging Face model (skipped where transformers is not installed).

Tolerances: ``EXACT`` as in ``test_opaque.py`` (torch's own kernels on both sides).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, grad, vmap

import funcmodels as fm
import transforms
from tests.transforms.bridge.opaque_models import SwiGLU, seeded

EXACT = dict(rtol=1e-6, atol=1e-7)
TARGET = "tests.transforms.bridge.opaque_models.SwiGLU"


def _swiglu_args(module: SwiGLU) -> dict:
    return {"dim": module.w1.in_features, "hidden": module.w1.out_features}


@pytest.fixture
def registered():
    transforms.register_module_class(SwiGLU, init_args=_swiglu_args)
    yield
    transforms.bridge.unregister_module_class(SwiGLU)


def _model():
    return seeded(nn.Sequential(nn.Linear(6, 8), SwiGLU(8, 16), nn.ReLU()))


def _stored(path) -> object:
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["spec"])


def test_save_refuses_a_module_without_constructor_arguments_and_the_way_out_loads(tmp_path):
    params, _ = transforms.from_module(_model())
    with pytest.raises(
        ValueError,
        match=r"config\[1\] \(TorchModule\): the torch module .*SwiGLU cannot be written: its "
        r"constructor arguments are unknown.*register_module_class.*fm.load\(path, spec\)",
    ):
        fm.save(tmp_path / "m.safetensors", params)
    save_file(fm.to_state_dict(params), tmp_path / "plain.safetensors")
    loaded, _ = fm.load(tmp_path / "plain.safetensors", params.spec)
    for k, t in params.flat().items():
        assert torch.equal(loaded[k], t), k


def test_a_registered_class_is_written_as_its_recipe_and_read_back(tmp_path, registered):
    module = _model()
    params, _ = transforms.from_module(module)
    assert params.spec == transforms.from_module(_model())[0].spec  # the recipe: equal
    assert hash(params.spec) == hash(transforms.from_module(_model())[0].spec)
    path = tmp_path / "m.safetensors"
    fm.save(path, params)
    assert _stored(path)[1] == {  # the file layout: must not drift
        "type": "TorchModule",
        "name": "1",
        "params": {"target": TARGET, "args": '{"dim": 8, "hidden": 16}', "style": "kwargs"},
    }
    loaded, _ = fm.load(path)
    assert loaded.spec == params.spec and loaded.spec.child("1").module_type is SwiGLU
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(loaded, x), module(x), **EXACT)


def test_reading_imports_nothing_and_builds_only_registered_classes(tmp_path, registered):
    params, _ = transforms.from_module(_model())
    path = tmp_path / "m.safetensors"
    fm.save(path, params)
    transforms.bridge.unregister_module_class(SwiGLU)
    with pytest.raises(ValueError, match=r"'.*SwiGLU' named by the file is not registered.*"):
        fm.load(path)
    loaded, _ = fm.load(path, params.spec)  # the caller's spec supplies the module
    assert loaded.spec is params.spec
    doc = _stored(path)
    doc[1]["params"]["target"] = "never_imported_package.Evil"
    sd = {k: t.contiguous() for k, t in fm.to_state_dict(params).items()}
    meta = {"format": "funcmodels", "version": "2", "spec": json.dumps(doc)}
    save_file(sd, tmp_path / "evil.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="never_imported_package.Evil.*never imports"):
        fm.load(tmp_path / "evil.safetensors")
    assert "never_imported_package" not in sys.modules
    with pytest.raises(ValueError, match="the file was saved for a different spec"):
        fm.load(tmp_path / "evil.safetensors", params.spec)
    transforms.register_module_class(SwiGLU, init_args=_swiglu_args)
    doc[1]["params"] = {"target": TARGET, "args": '{"bogus": 1}', "style": "kwargs"}
    meta["spec"] = json.dumps(doc)
    save_file(sd, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"stored for .*SwiGLU do not build it \(TypeError"):
        fm.load(tmp_path / "bad.safetensors")


def test_init_args_that_do_not_rebuild_the_module_are_refused():
    with pytest.raises(ValueError, match=r"init_args build a different module .*w1.weight"):
        transforms.TorchModule(SwiGLU(8, 16), init_args={"dim": 8, "hidden": 4})
    with pytest.raises(ValueError, match="init_args do not build SwiGLU"):
        transforms.TorchModule(SwiGLU(8, 16), init_args={"width": 8})
    with pytest.raises(ValueError, match="must be JSON values"):
        transforms.TorchModule(SwiGLU(8, 16), init_args={"dim": torch.tensor(8)})
    spec = transforms.TorchModule(SwiGLU(8, 16), init_args={"dim": 8, "hidden": 16})
    assert spec.to_config()["params"]["target"] == TARGET
    with pytest.raises(TypeError, match="give init_args=lambda module"):
        transforms.register_module_class(SwiGLU)
    with pytest.raises(TypeError, match="expected an nn.Module class"):
        transforms.register_module_class(SwiGLU(8, 16))


# -- Hugging Face --------------------------------------------------------------------------


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_hugging_face_gpt2_converts_trains_per_example_and_goes_back():
    model = _gpt2()
    params, state = transforms.from_module(model)
    spec = params.spec
    assert type(spec) is transforms.TorchModule and spec.style == "config"
    assert "lm_head.weight" not in params.flat()  # tied to transformer.wte.weight
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            fm.apply(params, ids, state=state).logits, model(ids).logits, **EXACT
        )

    def loss(logits, ids):
        return F.cross_entropy(logits[0, :-1], ids[1:])

    def ours(p, ids):
        return loss(fm.apply(p, ids[None], state=state).logits, ids)

    def theirs(p, ids):
        return loss(functional_call(model, p, (ids[None],)).logits, ids)

    got = vmap(grad(ours), in_dims=(None, 0))(params, ids).flat()
    want = vmap(grad(theirs), in_dims=(None, 0))(
        {k: v.detach() for k, v in model.named_parameters()}, ids
    )
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **EXACT, msg=k)
    back = transforms.to_module(params, state)
    assert type(back) is type(model) and back.lm_head.weight is back.transformer.wte.weight
    assert list(back.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, **EXACT)


def test_hugging_face_gpt2_is_saved_with_its_config_and_loads_once_trusted(tmp_path):
    model = _gpt2()
    params, state = transforms.from_module(model)
    path = tmp_path / "gpt2.safetensors"
    fm.save(path, params, state)
    entry = _stored(path)
    assert entry["params"]["target"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert json.loads(entry["params"]["args"])["n_layer"] == 2
    loaded, _ = fm.load(path, params.spec)
    assert loaded.spec is params.spec
    with pytest.raises(ValueError, match="GPT2LMHeadModel' named by the file is not registered"):
        fm.load(path)
    transforms.register_module_class(type(model))
    try:
        loaded, loaded_state = fm.load(path)
    finally:
        transforms.bridge.unregister_module_class(type(model))
    assert loaded.spec == params.spec
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            fm.apply(loaded, ids, state=loaded_state).logits, model(ids).logits, **EXACT
        )
    model.lm_head = nn.Linear(32, 50, bias=False)  # changed after construction: no recipe
    params, _ = transforms.from_module(model)
    with pytest.raises(ValueError, match="cannot be written: its config build a different"):
        fm.save(tmp_path / "changed.safetensors", params)
