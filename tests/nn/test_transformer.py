"""The transformer layers, stacks and the whole transformer (``_transformer.py``,
``_transformer_stack.py``) against torch.nn on the same weights.

Attention runs torch's own sequence of ops (the regular, non-fast path), but BLAS rounds
the last bit differently for tensors at other addresses, so outputs agree to a few
float32 ulps rather than exactly: ``CLOSE`` below. torch's fast paths (the fused encoder
layer, nested tensors) are other kernels: ``FAST``. Configs, files, the torch.nn round
trip and compile: tests/test_contract.py.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._spec import field_values
from tests.helpers import assert_per_sample_grads_match, causal, randomised, torch_run, twin

nn = fm.nn
CLOSE = {"atol": 2e-6, "rtol": 1e-5}
FAST = {"atol": 1e-5, "rtol": 1e-5}
pytestmark = [
    # torch's own warnings about its fast paths and about mixing bool and float masks
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:Support for mismatched"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
    pytest.mark.filterwarnings("ignore:Converting mask without torch.bool dtype"),
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


def torch_activation(activation):
    if isinstance(activation, str):
        return activation
    return transforms.to_module(fm.init(fm.key(0), activation))


@st.composite
def layer_cases(draw, decoder: bool):
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    heads = draw(st.sampled_from([1, 2, 4]))
    activation = draw(st.sampled_from(["relu", "gelu", nn.GELU("tanh"), nn.SiLU()]))
    spec = cls(
        heads * draw(st.integers(1, 3)),
        heads,
        dim_feedforward=draw(st.integers(1, 12)),
        dropout=draw(st.sampled_from([0.0, 0.1])),
        activation=activation,
        layer_norm_eps=draw(st.sampled_from([1e-5, 1e-3])),
        batch_first=draw(st.booleans()),
        norm_first=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    sizes = (draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 3)))
    flags = {
        "batched": draw(st.booleans()),
        "padding": draw(st.sampled_from([None, "bool", "float"])),
        "mask": draw(st.sampled_from([None, "causal", "bool", "float"])),
        "hint": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
    }
    return spec, sizes, flags


def torch_layer(spec) -> torch.nn.Module:
    cls = (
        torch.nn.TransformerDecoderLayer
        if isinstance(spec, nn.TransformerDecoderLayer)
        else torch.nn.TransformerEncoderLayer
    )
    values = field_values(spec)
    values["activation"] = torch_activation(spec.activation)
    return cls(**values)


def sequence(spec, length, n, batched, seed) -> torch.Tensor:
    if not batched:
        return randn(length, spec.d_model, seed=seed)
    shape = (n, length) if spec.batch_first else (length, n)
    return randn(*shape, spec.d_model, seed=seed)


def masks(flags, lq, s, n, prefix, seed) -> dict:
    """Masks under torch's argument names ``{prefix}_mask`` and
    ``{prefix}_key_padding_mask``; a causal mask comes with the hint when ``hint``."""
    out = {}
    batch = (n,) if flags["batched"] else ()
    if flags["padding"] == "bool":
        pad = torch.rand(*batch, s, generator=gen(seed)) < 0.4
        out[f"{prefix}_key_padding_mask"] = pad.index_fill(-1, torch.tensor([0]), False)
    elif flags["padding"] == "float":
        out[f"{prefix}_key_padding_mask"] = randn(*batch, s, seed=seed)
    kind = flags["mask"]
    if kind == "causal" and lq == s:
        out[f"{prefix}_mask"] = causal(lq)
        if flags["hint"]:
            out["is_causal" if prefix == "src" else f"{prefix}_is_causal"] = True
    elif kind == "bool":
        mask = torch.rand(lq, s, generator=gen(seed + 1)) < 0.4
        out[f"{prefix}_mask"] = mask.index_fill(-1, torch.tensor([0]), False)
    elif kind == "float":
        out[f"{prefix}_mask"] = randn(lq, s, seed=seed + 1)
    return out


@settings(max_examples=60, deadline=None)
@given(layer_cases(decoder=False), st.booleans())
def test_encoder_layer_matches_torch(case, train):
    spec, (length, _, n), flags = case
    if train and spec.dropout > 0:
        # torch draws its masks from its own generator: compared in distribution elsewhere
        spec = nn.TransformerEncoderLayer(**{**field_values(spec), "dropout": 0.0})
    module = torch_layer(spec).train(train)
    params, _ = twin(spec, flags["seed"], module=module)
    src = sequence(spec, length, n, flags["batched"], flags["seed"])
    kwargs = masks(flags, length, length, n, "src", flags["seed"] + 7)
    got = fm.apply(params, {"src": src, **kwargs}, train=train)
    torch.testing.assert_close(got, torch_run(module, src, **kwargs), **CLOSE)
    if not kwargs:
        torch.testing.assert_close(fm.apply(params, src, train=train), got, atol=0, rtol=0)
    # torch's fused eval kernel computes other things for some settings: the exact GELU
    # for any nn.GELU module (GELU('tanh') too), and float masks read as bool ones (any
    # nonzero value masks). Compared where it computes what its regular path does.
    floats = any(m.is_floating_point() for m in kwargs.values() if torch.is_tensor(m))
    if not train and spec.activation in ("relu", "gelu") and not floats:
        fast = torch_run(module, src, fast=True, **kwargs)
        torch.testing.assert_close(got, fast, **FAST)


@settings(max_examples=50, deadline=None)
@given(layer_cases(decoder=True), st.booleans())
def test_decoder_layer_matches_torch(case, train):
    spec, (lt, s, n), flags = case
    if train and spec.dropout > 0:
        spec = nn.TransformerDecoderLayer(**{**field_values(spec), "dropout": 0.0})
    module = torch_layer(spec).train(train)
    params, _ = twin(spec, flags["seed"], module=module)
    tgt = sequence(spec, lt, n, flags["batched"], flags["seed"])
    memory = sequence(spec, s, n, flags["batched"], flags["seed"] + 1)
    kwargs = masks(flags, lt, lt, n, "tgt", flags["seed"] + 2)
    cross = masks({**flags, "mask": "float" if flags["hint"] else None}, lt, s, n, "x", 9)
    kwargs |= {k.replace("x_", "memory_"): v for k, v in cross.items()}
    got = fm.apply(params, {"tgt": tgt, "memory": memory, **kwargs}, train=train)
    torch.testing.assert_close(got, torch_run(module, tgt, memory, **kwargs), **CLOSE)


def test_layers_in_train_mode_draw_dropout_from_the_key():
    spec = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    params, _ = randomised(spec)
    x = randn(2, 5, 8)
    rng = torch.get_rng_state()
    a = fm.apply(params, x, key=fm.key(1), train=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, fm.apply(params, x, key=fm.key(1), train=True))
    assert not torch.equal(a, fm.apply(params, x, key=fm.key(2), train=True))
    assert not torch.allclose(a, fm.apply(params, x))
    with pytest.raises(ValueError, match="needs a PRNG key in train mode"):
        fm.apply(params, x, train=True)


def test_encoder_layer_in_train_mode_matches_torch_in_distribution():
    # Every dropout (attention weights, feed-forward, residual branches) at p = 0.3: the
    # mean and spread of each output element over 400 draws, ours from keys and torch's
    # from its generator, agree within their sampling error.
    spec = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3, batch_first=True)
    module = torch_layer(spec).train()
    params, _ = twin(spec, module=module)
    x, draws = randn(2, 5, 8), 400
    ours = vmap(lambda k: fm.apply(params, x, key=k, train=True))(fm.split(fm.key(3), draws))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        theirs = torch.stack([module(x) for _ in range(draws)])
    error = (ours.var(0) / draws + theirs.var(0) / draws).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 5 * error).all()
    ratio = ours.std(0) / theirs.std(0)
    assert ratio.min() > 0.75 and ratio.max() < 1.33, (ratio.min(), ratio.max())
    assert not torch.allclose(ours.mean(0), fm.apply(params, x), atol=1e-2)


def test_layers_accept_zero_size_batches():
    for spec, shape in (
        (nn.MultiheadAttention(8, 2, batch_first=True), (0, 5, 8)),
        (nn.TransformerEncoderLayer(8, 2, 16), (5, 0, 8)),
    ):
        params, _ = randomised(spec)
        assert fm.apply(params, torch.zeros(shape)).shape == shape


@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_layer_and_transformer_accept_zero_size_batches(batch_first):
    def seq(length):
        return torch.zeros((0, length, 8) if batch_first else (length, 0, 8))

    layer = nn.TransformerDecoderLayer(8, 2, 16, batch_first=batch_first)
    transformer = nn.Transformer(8, 2, 1, 2, 16, batch_first=batch_first)
    for spec, module in (
        (layer, torch_layer(layer).eval()),
        (transformer, torch.nn.Transformer(8, 2, 1, 2, 16, batch_first=batch_first).eval()),
    ):
        params, _ = twin(spec, module=module)
        tgt, other = seq(4), seq(6)
        first = "src" if isinstance(spec, nn.Transformer) else "memory"
        args = {first: other, "tgt": tgt, "tgt_mask": causal(4)}
        torch_args = (other, tgt) if first == "src" else (tgt, other)
        want = torch_run(module, *torch_args, tgt_mask=causal(4))
        got = fm.apply(params, args)
        assert got.shape == want.shape == tgt.shape
        assert fm.apply(params, args, key=fm.key(0), train=True).shape == tgt.shape


def encoder_and_module(batch_first=True, norm_first=False, layers=2):
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=batch_first, norm_first=norm_first)
    spec = nn.TransformerEncoder(layer, layers, nn.LayerNorm(8))
    module = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=batch_first, norm_first=norm_first),
        layers,
        torch.nn.LayerNorm(8),
    ).eval()
    return spec, module


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_matches_torch_and_its_nested_tensor_path(batch_first, norm_first):
    spec, module = encoder_and_module(batch_first, norm_first)
    params, _ = twin(spec, module=module)
    x = randn(3, 6, 8) if batch_first else randn(6, 3, 8)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 2:] = True
    for kwargs in ({}, {"src_key_padding_mask": pad}, {"mask": causal(6)}):
        got = fm.apply(params, {"src": x, **kwargs})
        torch.testing.assert_close(got, torch_run(module, x, **kwargs), **CLOSE)
        fast = torch_run(module, x, fast=True, **kwargs)
        if "src_key_padding_mask" in kwargs and batch_first and not norm_first:
            # torch's nested-tensor path zeroes the padded positions (before the final
            # norm); the rest agree.
            zeros = fm.apply(params["norm"], torch.zeros_like(fast[pad]))
            torch.testing.assert_close(fast[pad], zeros, **FAST)
            torch.testing.assert_close(got[~pad], fast[~pad], **FAST)
        else:
            torch.testing.assert_close(got, fast, **FAST)
    one, want = (x[0], got[0]) if batch_first else (x[:, 0], got[:, 0])  # unbatched
    torch.testing.assert_close(fm.apply(params, {"src": one, "mask": causal(6)}), want, **CLOSE)


def test_decoder_and_transformer_match_torch():
    spec = nn.Transformer(8, 2, 2, 3, 16, dropout=0.0, activation="gelu", batch_first=False)
    module = torch.nn.Transformer(8, 2, 2, 3, 16, dropout=0.0, activation="gelu")
    params, _ = twin(spec, module=module)
    src, tgt = randn(7, 2, 8), randn(5, 2, 8, seed=1)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    kwargs = {"tgt_mask": causal(5), "src_key_padding_mask": pad, "memory_key_padding_mask": pad}
    for train in (False, True):
        module.train(train)
        got = fm.apply(params, {"src": src, "tgt": tgt, **kwargs}, train=train)
        torch.testing.assert_close(got, torch_run(module, src, tgt, **kwargs), **CLOSE)
    # unbatched, and the decoder alone on the encoder's memory
    module.eval()
    got = fm.apply(params, {"src": src[:, 1], "tgt": tgt[:, 1], "tgt_mask": causal(5)})
    want = torch_run(module, src[:, 1], tgt[:, 1], tgt_mask=causal(5))
    torch.testing.assert_close(got, want, **CLOSE)
    memory = fm.apply(params["encoder"], src)
    dec = fm.apply(params["decoder"], {"tgt": tgt, "memory": memory, "tgt_is_causal": None})
    torch.testing.assert_close(dec, torch_run(module.decoder, tgt, memory), **CLOSE)


def test_transformer_init_is_torch_xavier():
    spec = nn.Transformer(32, 4, 1, 1, 64)
    ours = fm.to_state_dict(fm.init(fm.key(2), spec))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = torch.nn.Transformer(32, 4, 1, 1, 64).state_dict()
    assert list(ours) == list(theirs)
    for name, t in ours.items():
        if t.dim() < 2:
            continue
        fan_out, fan_in = t.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert t.abs().max() <= bound, name
        a, b = t.flatten().double().numpy(), theirs[name].flatten().double().numpy()
        assert scipy.stats.ks_2samp(a, b).pvalue > 1e-3, name
    # A layer of its own keeps torch's per-layer default, U(+-1/sqrt(fan_in)), narrower
    # than the transformer's xavier bound (0.25 here) on linear1; 2048 draws reach past it.
    plain = fm.init(fm.key(2), nn.TransformerEncoderLayer(32, 4, 64))
    assert plain["linear1.weight"].abs().max() <= 1 / math.sqrt(32)
    assert ours["encoder.layers.0.linear1.weight"].abs().max() > 1 / math.sqrt(32)


def test_per_sample_gradients_through_a_transformer_classifier():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
    spec = nn.Sequential(
        nn.Embedding(11, 8, padding_idx=0),
        nn.TransformerEncoder(layer, 2),
        nn.Reduce("... l d -> ... d", "mean"),
        nn.Linear(8, 3),
    )
    params, _ = randomised(spec)
    x = torch.randint(0, 11, (5, 6), generator=gen(0))
    assert_per_sample_grads_match(params, x, randn(5, 3))


def test_decoder_per_sample_gradients_match_a_loop():
    spec = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True, norm_first=True)
    params, _ = randomised(spec)
    tgt, memory = randn(3, 4, 8), randn(3, 6, 8, seed=1)

    def loss(p, t, m):
        return fm.apply(p, {"tgt": t, "memory": m, "tgt_mask": causal(4)}).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, tgt, memory)
    for i in range(3):
        want = grad(loss)(params, tgt[i], memory[i])
        for name in fm.to_state_dict(params):
            torch.testing.assert_close(got[name][i], want[name], atol=1e-5, rtol=1e-4)


def test_decoder_stack_per_sample_gradients_match_a_loop_and_torch():
    layer = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
    spec = nn.TransformerDecoder(layer, 2, nn.LayerNorm(8))
    module = torch.nn.TransformerDecoder(torch_layer(layer), 2, torch.nn.LayerNorm(8)).eval()
    params, _ = twin(spec, module=module)
    tgt, memory = randn(3, 4, 8), randn(3, 6, 8, seed=1)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, 0] = True

    def loss(p, t, m, mp):
        args = {"tgt": t, "memory": m, "tgt_mask": causal(4), "memory_key_padding_mask": mp}
        return fm.apply(p, args).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, tgt, memory, pad)
    for i in range(3):
        want = grad(loss)(params, tgt[i], memory[i], pad[i])
        for name in fm.to_state_dict(params):
            torch.testing.assert_close(got[name][i], want[name], atol=1e-5, rtol=1e-4)
        # torch's autograd on the same weights, the example as a batch of one
        out = module(
            tgt[i : i + 1], memory[i : i + 1], causal(4), memory_key_padding_mask=pad[i : i + 1]
        )
        names, tensors = zip(*module.named_parameters(), strict=True)
        theirs = torch.autograd.grad(out.square().sum(), tensors)
        for name, g in zip(names, theirs, strict=True):
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("train", [False, True])
def test_transformer_per_sample_gradients_match_a_loop(train):
    # in train mode each example draws its dropout masks from its own key
    spec = nn.Transformer(8, 2, 2, 1, 16, dropout=0.2, activation="gelu", batch_first=True)
    module = torch.nn.Transformer(8, 2, 2, 1, 16, dropout=0.2, activation="gelu", batch_first=True)
    params, _ = twin(spec, module=module)
    src, tgt = randn(3, 6, 8), randn(3, 4, 8, seed=1)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, 4:] = True
    keys = fm.split(fm.key(3), 3)

    def loss(p, s, t, mp, k, train=train):
        args = {"src": s, "tgt": t, "tgt_mask": causal(4), "src_key_padding_mask": mp}
        args["memory_key_padding_mask"] = mp
        return fm.apply(p, args, key=k, train=train).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0))(params, src, tgt, pad, keys)
    for i in range(3):
        want = grad(loss)(params, src[i], tgt[i], pad[i], keys[i])
        for name in fm.to_state_dict(params):
            torch.testing.assert_close(got[name][i], want[name], atol=1e-5, rtol=1e-4)
        if train:
            continue
        # torch's autograd on the same weights, the example as a batch of one
        one = {"src_key_padding_mask": pad[i : i + 1], "memory_key_padding_mask": pad[i : i + 1]}
        out = module.eval()(src[i : i + 1], tgt[i : i + 1], tgt_mask=causal(4), **one)
        names, tensors = zip(*module.named_parameters(), strict=True)
        theirs = torch.autograd.grad(out.square().sum(), tensors)
        for name, g in zip(names, theirs, strict=True):
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)
    if train:  # dropout did drop: these are not the eval gradients
        evals = vmap(grad(lambda p, *a: loss(p, *a, None, train=False)), in_dims=(None, 0, 0, 0))
        name = "decoder.layers.0.linear1.weight"
        assert not torch.allclose(got[name], evals(params, src, tgt, pad)[name], atol=1e-3)


def test_from_a_torch_transformer_with_its_own_init():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Transformer(8, 2, 1, 1, 16, batch_first=True).eval()
    params, _ = transforms.from_module(module)
    assert params.spec == nn.Transformer(8, 2, 1, 1, 16, batch_first=True)
    src, tgt = randn(2, 5, 8), randn(2, 3, 8, seed=1)
    got = fm.apply(params, {"src": src, "tgt": tgt})
    torch.testing.assert_close(got, torch_run(module, src, tgt), **CLOSE)


def test_torch_decoder_stacks_compute_relu_whatever_activation_module_they_got():
    # torch copies the layers of a decoder stack, and the copies' __setstate__ shadows an
    # activation module with F.relu: from_module reads what the copies compute, and
    # to_module builds stacks whose copies use the module of the spec.
    layer = torch.nn.TransformerDecoderLayer(8, 2, 16, activation=torch.nn.SiLU())
    module = torch.nn.TransformerDecoder(layer, 2).eval()
    params, _ = transforms.from_module(module)
    assert params.spec.decoder_layer.activation == "relu"
    tgt, memory = randn(4, 2, 8), randn(6, 2, 8, seed=1)
    args = {"tgt": tgt, "memory": memory}
    torch.testing.assert_close(fm.apply(params, args), torch_run(module, tgt, memory), **CLOSE)
    silu = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, activation=nn.SiLU()), 2)
    params, _ = randomised(silu)
    built = transforms.to_module(params)
    assert all(isinstance(m.activation, torch.nn.SiLU) for m in built.layers)
    torch.testing.assert_close(torch_run(built, tgt, memory), fm.apply(params, args), **CLOSE)


def test_modules_the_specs_cannot_express_are_refused():
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16)
    layer.dropout1 = torch.nn.Dropout(0.3)
    with pytest.raises(ValueError, match=r"TransformerEncoderLayer\): child 'dropout1'"):
        transforms.from_module(layer)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, activation=lambda t: t.tanh())
    with pytest.raises(ValueError, match="activation .* is neither 'relu', 'gelu'"):
        transforms.from_module(layer)
    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 2)
    encoder.layers[1].linear1 = torch.nn.Linear(8, 16, bias=False)
    # bias is read from linear1, so the attention block is the one that disagrees
    with pytest.raises(ValueError, match=r"'layers.1' \(TransformerEncoderLayer\): child"):
        transforms.from_module(encoder)
    encoder.layers[1] = torch.nn.TransformerEncoderLayer(8, 2, 12)
    with pytest.raises(ValueError, match="layer 1 is .*unlike layer 0"):
        transforms.from_module(encoder)


def test_summary_rows_follow_torch_modules():
    decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 4, 12), 1)
    spec = nn.Transformer(8, 2, 2, 1, 16, custom_decoder=decoder)
    module = transforms.to_module(fm.init(fm.key(0), spec))
    # MultiheadAttention keeps out_proj as its own tensors (torch initialises them
    # differently from a Linear), so it has no row of its own.
    modules = {n: m for n, m in module.named_modules() if not n.endswith("out_proj")}
    rows = fm.summary(spec).rows
    assert [r.path for r in rows] == list(modules)
    for r in rows:
        assert r.params == sum(p.numel() for p in modules[r.path].parameters()), r.path


def test_shapes_are_inferred_through_the_layers():
    spec = nn.Sequential(
        nn.Embedding(20, 8),
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2),
        nn.MultiheadAttention(8, 4, batch_first=True),
    )
    shapes = fm.shapes(spec, (5,))
    assert shapes[""] == (5, 8)
    assert shapes["1.layers.1.linear1"] == (5, 16)
    assert shapes["1.layers.0.self_attn"] == (5, 8)
    params = fm.init(fm.key(0), spec)
    assert fm.apply(params, torch.randint(0, 20, (3, 5))).shape == (3, 5, 8)
    with pytest.raises(ValueError, match=r"layer '1' \(TransformerEncoderLayer\).*d_model=8"):
        fm.shapes(nn.Sequential(nn.Embedding(5, 6), nn.TransformerEncoderLayer(8, 2)), (4,))
    # the shape of one example is the query's: the output has it whatever the keys are
    assert fm.shapes(nn.MultiheadAttention(8, 2, kdim=3), (4, 8)) == {"": (4, 8)}


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (lambda: nn.TransformerEncoderLayer(8, 3), ValueError, "nhead=3 must divide d_model=8"),
        (lambda: nn.TransformerEncoderLayer(8, 2, activation="tanh"), ValueError, "'relu', 'gelu'"),
        (lambda: nn.TransformerDecoderLayer(8, 2, activation=F.relu), TypeError, "layer spec"),
        (lambda: nn.TransformerEncoder(nn.Linear(3, 3), 2), TypeError, "encoder_layer must be"),
        (
            lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2), 0),
            ValueError,
            "num_layers must be positive",
        ),
        (lambda: nn.Transformer(custom_encoder="x"), TypeError, "custom_encoder must be None"),
    ],
)
def test_construction_checks(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_forward_checks_name_the_layer():
    x = randn(2, 5, 8)
    dec = fm.init(fm.key(0), nn.TransformerDecoderLayer(8, 2, 16))
    with pytest.raises(TypeError, match=r"\(TransformerDecoderLayer\): expected a mapping"):
        fm.apply(dec, x)
    tr = fm.init(fm.key(0), nn.Transformer(8, 2, 1, 1, 16))
    with pytest.raises(ValueError, match=r"\(Transformer\): expected src and tgt with the same"):
        fm.apply(tr, {"src": randn(5, 2, 8), "tgt": randn(4, 3, 8)})
