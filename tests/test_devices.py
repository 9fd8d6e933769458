"""Devices and dtypes: every leaf where it was asked for, meta init, Params/State.to."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

import funcmodels as fm

nn = fm.nn


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
        nn.LayerNorm(3),
    )


def devices(tree) -> set[torch.device]:
    return {t.device for t in tree.flat().values()}


def test_every_leaf_lands_on_the_device_asked_for():
    params, state = fm.init_with_state(fm.key(0), cnn(), device="meta")
    assert devices(params) == devices(state) == {torch.device("meta")}
    assert state["1.num_batches_tracked"].dtype == torch.int64
    # By default the key's device.
    params, state = fm.init_with_state(fm.key(0, device="meta"), cnn())
    assert devices(params) == devices(state) == {torch.device("meta")}
    params, state = fm.init_with_state(fm.key(0), cnn())
    assert devices(params) == devices(state) == {torch.device("cpu")}


def test_meta_init_of_a_huge_model_is_instant_and_has_the_shapes():
    spec = nn.Sequential(nn.Linear(100_000, 100_000), nn.ReLU(), nn.Linear(100_000, 10))
    start = time.perf_counter()
    params = fm.init(fm.key(0), spec, device="meta")  # 10^10 values: 40 GB if real
    assert time.perf_counter() - start < 5.0  # generous: it allocates nothing
    assert params["0.weight"].shape == (100_000, 100_000)
    assert params["0.weight"].is_meta
    assert fm.summary(params).trainable == 100_000 * 100_001 + 10 * 100_001


def test_values_do_not_depend_on_where_the_keys_are_folded():
    # init folds keys on the CPU whatever the device; the draws match a plain init.
    spec = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    a = fm.init(fm.key(5), spec)
    b = fm.init(fm.key(5), spec, device="cpu", dtype=torch.float32)
    assert all(torch.equal(a[k], b[k]) for k in a.flat())


def test_params_and_state_to_keep_the_spec():
    params, state = fm.init_with_state(fm.key(0), cnn())
    p64, s64 = params.to(torch.float64), state.to(torch.float64)
    assert p64.spec is params.spec and s64.spec is state.spec
    assert {t.dtype for t in p64.flat().values()} == {torch.float64}
    assert s64["1.running_mean"].dtype == torch.float64
    assert s64["1.num_batches_tracked"].dtype == torch.int64  # integer buffers keep theirs
    for k, t in params.flat().items():
        torch.testing.assert_close(p64[k], t.double(), atol=0, rtol=0)
    x = fm.random.normal(fm.key(1), (2, 1, 5, 5), dtype=torch.float64)
    assert fm.apply(p64, x, state=s64).dtype == torch.float64
    meta = params.to("meta")
    assert devices(meta) == {torch.device("meta")}
    assert params.to(device="cpu")["0.weight"] is params["0.weight"]  # nothing to move
    assert all(t is not params[k] for k, t in p64.flat().items())
    with pytest.raises(TypeError, match="Params.to: dtype must be a floating dtype"):
        params.to(torch.int32)


def test_load_onto_the_meta_device(tmp_path):
    params, state = fm.init_with_state(fm.key(0), cnn())
    fm.save(tmp_path / "m.safetensors", params, state)
    p2, s2 = fm.load(tmp_path / "m.safetensors", device="meta")
    assert devices(p2) == devices(s2) == {torch.device("meta")}
    assert p2.spec == cnn()
    with pytest.raises(TypeError, match="device must be a torch.device or a string"):
        fm.load(tmp_path / "m.safetensors", device=3.5)


def _meta_cases():
    import transforms

    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    return {
        "sparse-magnitude": transforms.SparseLinear(8, 4, sparsity=0.5),
        "sparse-2:4-random": transforms.SparseLinear(8, 4, pattern="2:4", init_mask="random"),
        "moe": nn.Sequential(transforms.MoE(mlp, num_experts=4)),
        "early-exit": transforms.EarlyExit(
            blocks=(nn.Linear(8, 8), nn.Linear(8, 8)), heads=(nn.Linear(8, 3), nn.Linear(8, 3))
        ),
        "lstm-attention": nn.Sequential(
            nn.LSTM(8, 8, batch_first=True), nn.MultiheadAttention(8, 2, batch_first=True)
        ),
    }


@pytest.mark.parametrize("name", list(_meta_cases()))
def test_transform_layers_initialise_on_meta(name):
    """Shapes only: a model too large for memory is planned on meta (masks included)."""
    spec = _meta_cases()[name]
    params, state = fm.init_with_state(fm.key(0, device="meta"), spec)
    assert devices(params) | devices(state) == {torch.device("meta")}
    want_p, want_s = fm.init_with_state(fm.key(0), spec)
    for got, want in ((params, want_p), (state, want_s)):
        for n, t in want.flat().items():
            assert (got[n].shape, got[n].dtype) == (t.shape, t.dtype), n
    if name.startswith("sparse"):  # the others' dispatch depends on values
        out = fm.apply(params, torch.empty(3, 8, device="meta"), state=state)
        assert out.shape == (3, 4) and out.device.type == "meta"


@dataclass(frozen=True)
class _Careless(fm.Spec):
    """Ignores what init asks for in one way or another."""

    mistake: str

    def param_shapes(self):
        return {"w": (3,)}

    def init_params(self, key, *, dtype, device):
        if self.mistake == "device":
            return {"w": torch.zeros(3, dtype=dtype)}  # always on the CPU
        if self.mistake == "dtype":
            return {"w": torch.zeros(3, dtype=torch.float64, device=device)}
        if self.mistake == "shape":
            return {"w": torch.zeros(4, dtype=dtype, device=device)}
        if self.mistake == "names":
            return {"v": torch.zeros(3, dtype=dtype, device=device)}
        return {"w": [0.0, 0.0, 0.0]}


@pytest.mark.parametrize(
    "mistake, device, pattern",
    [
        (
            "device",
            "meta",
            r"init_params returned 'w' as a tensor on cpu, but the device asked for is meta",
        ),
        (
            "dtype",
            "cpu",
            r"init_params returned 'w' as dtype torch.float64, but the dtype asked for is "
            r"torch.float32",
        ),
        (
            "shape",
            "cpu",
            r"init_params returned 'w' as shape \(4,\), but the declared shape is \(3,\)",
        ),
        ("names", "cpu", r"init_params returned \['v'\], but its declared shapes name \['w'\]"),
        ("list", "cpu", r"init_params returned 'w' as a list, not a tensor"),
    ],
)
def test_init_checks_what_a_layer_returns(mistake, device, pattern):
    spec = nn.Sequential({"c": _Careless(mistake)})
    with pytest.raises(TypeError, match=r"layer 'c' \(_Careless\): " + pattern):
        fm.init(fm.key(0), spec, device=device)


def test_a_key_on_another_device_than_the_input_is_refused():
    params = fm.init(fm.key(0), nn.Dropout(0.5))
    with pytest.raises(ValueError, match=r"the key is on meta but the input on cpu; make the key"):
        fm.apply(params, torch.ones(3), key=fm.key(1, device="meta"), train=True)


@dataclass(frozen=True)
class _PlainStateShape(fm.Spec):
    """Declares a buffer by its shape alone, forgetting the dtype."""

    def state_shapes(self):
        return {"count": (3,)}


def test_a_malformed_state_declaration_names_the_layer():
    spec = nn.Sequential({"s": _PlainStateShape()})
    pattern = (
        r"layer 's' \(_PlainStateShape\): state_shapes\(\) must map each buffer name to "
        r"\(shape, dtype or None\), got \(3,\) for 'count'"
    )
    with pytest.raises(TypeError, match=pattern):
        fm.init_with_state(fm.key(0), spec)


def test_bad_device_argument(tmp_path):
    with pytest.raises(TypeError, match=r"fm.init: device must be a torch.device or a string"):
        fm.init(fm.key(0), nn.Linear(2, 2), device=1.5)
    with pytest.raises(ValueError, match=r"fm.init: 'bogus' names no device torch knows"):
        fm.init(fm.key(0), nn.Linear(2, 2), device="bogus")
    # 'cpu:0' is the CPU, as tensors report it
    assert devices(fm.init(fm.key(0), nn.Linear(2, 2), device="cpu:0")) == {torch.device("cpu")}
    path = tmp_path / "m.safetensors"
    fm.save(path, fm.init(fm.key(0), nn.Linear(2, 2)))
    # no machine has a hundredth card (nor a CPU-only build any card)
    with pytest.raises(ValueError, match=r"fm.load\(.*\): device cuda:99 is not available here"):
        fm.load(path, device="cuda:99")
