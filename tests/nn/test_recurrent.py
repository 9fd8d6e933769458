"""RNN, LSTM, GRU and their cells: fidelity to torch.nn, packed sequences as lengths,
per-sample gradients, dropout between layers, shapes, configs, files and the torch bridge."""

import contextlib
import json
import math

import pytest
import scipy.stats
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import funcmodels as fm
import transforms
from funcmodels import _registry
from funcmodels.nn import _recurrent
from tests.helpers import (
    assert_per_sample_grads_match,
    example_input,
    randomised,
    torch_twin,
    torch_twin_of,
)

nn = fm.nn

# torch's own notice when its LSTM with projections leaves the oneDNN kernel
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

# float64 runs torch's own (non-oneDNN) kernels, which compute what our scan computes up to
# the order of a few additions: outputs agree to a few ulps. float32 runs oneDNN's fused
# LSTM/GRU/RNN, whose products round differently: agreement to about 1e-7, checked at 1e-5.
F64 = {"atol": 1e-12, "rtol": 1e-10}
F32 = {"atol": 1e-5, "rtol": 1e-5}

SEQUENCE_KINDS = {
    "rnn_tanh": (nn.RNN, {}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, {"proj_size": 2}),
    "gru": (nn.GRU, {}),
}
CELL_KINDS = {
    "rnn_tanh": (nn.RNNCell, {}),
    "rnn_relu": (nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTMCell, {}),
    "gru": (nn.GRUCell, {}),
}


def loaded_twin(spec: fm.Spec, params: fm.Params) -> torch.nn.Module:
    """The torch module of the spec, in the params' dtype, holding them."""
    return torch_twin(torch_twin_of(spec).to(next(iter(params.flat().values())).dtype), params)


def assert_trees_close(got, want, **tol):
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    assert got_spec == want_spec
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def random_hx(spec: fm.Spec, batch: int | None, seed: int, dtype=torch.float32):
    """A random initial state for the spec: ``h_0``, or ``(h_0, c_0)`` for an LSTM."""
    if isinstance(spec, (nn.LSTMCell, nn.RNNCell, nn.GRUCell)):
        lead, sizes = (), [spec.hidden_size]
    else:
        lead = ((2 if spec.bidirectional else 1) * spec.num_layers,)
        out = getattr(spec, "proj_size", 0) or spec.hidden_size
        sizes = [out]
    if isinstance(spec, (nn.LSTM, nn.LSTMCell)):
        sizes.append(spec.hidden_size)
    mid = () if batch is None else (batch,)
    parts = [
        example_input((*lead, *mid, size), seed=seed + i, dtype=dtype)
        for i, size in enumerate(sizes)
    ]
    return tuple(parts) if len(parts) == 2 else parts[0]


@contextlib.contextmanager
def kernel(fused: bool):
    """Run the layers on torch's fused kernel (where allowed) or always on the scan."""
    saved = _recurrent._FUSED
    _recurrent._FUSED = fused
    try:
        yield
    finally:
        _recurrent._FUSED = saved


def sequence(spec, length: int, batch: int | None, seed: int = 1, dtype=torch.float32):
    """An input of ``length`` steps for the spec: unbatched when ``batch`` is None."""
    if batch is None:
        return example_input((length, spec.input_size), seed=seed, dtype=dtype)
    shape = (batch, length) if spec.batch_first else (length, batch)
    return example_input((*shape, spec.input_size), seed=seed, dtype=dtype)


# -- fidelity ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(SEQUENCE_KINDS)),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    bias=st.booleans(),
    batch_first=st.booleans(),
    sizes=st.tuples(st.integers(1, 5), st.integers(3, 6)),
    length=st.integers(1, 5),
    batch=st.sampled_from([None, 0, 1, 3]),
    with_hx=st.booleans(),
    train=st.booleans(),
    fused=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sequence_layers_match_torch(
    kind,
    num_layers,
    bidirectional,
    bias,
    batch_first,
    sizes,
    length,
    batch,
    with_hx,
    train,
    fused,
    seed,
):
    """Both paths, torch's fused kernel and the scan (which runs under transforms)."""
    cls, extra = SEQUENCE_KINDS[kind]
    spec = cls(
        *sizes,
        num_layers=num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        **extra,
    )
    params, _ = randomised(spec, seed, dtype=torch.float64)
    module = loaded_twin(spec, params).train(train)
    assert list(fm.to_state_dict(params)) == list(module.state_dict())
    x = sequence(spec, length, batch, seed, torch.float64)
    x_before = x.clone()
    args = (x, random_hx(spec, batch, seed + 7, torch.float64)) if with_hx else (x,)
    with kernel(fused):
        got = fm.apply(params, args if with_hx else x, train=train)
    want = module(*args)
    assert_trees_close(got, want, **F64)
    # The scan stacks its steps where the output has them; torch's kernel returns a
    # transposed view for batch_first, and so does the fused path.
    assert got[0].is_contiguous() or (fused and got[0].is_contiguous() == want[0].is_contiguous())
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("kind", sorted(SEQUENCE_KINDS))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_float32_matches_torch_fused_kernels(kind, batch_first, fused):
    cls, extra = SEQUENCE_KINDS[kind]
    spec = cls(4, 6, 2, batch_first=batch_first, bidirectional=True, **extra)
    params, _ = randomised(spec, 3)
    module = loaded_twin(spec, params).eval()
    x = sequence(spec, 9, 5)
    hx = random_hx(spec, 5, 11)
    with torch.no_grad(), kernel(fused):
        assert_trees_close(fm.apply(params, x), module(x), **F32)
        assert_trees_close(fm.apply(params, (x, hx)), module(x, hx), **F32)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(SEQUENCE_KINDS)),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    pad=st.integers(0, 2),
    with_hx=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lengths_give_torch_packed_results(
    kind, num_layers, bidirectional, batch_first, lengths, pad, with_hx, seed
):
    cls, extra = SEQUENCE_KINDS[kind]
    spec = cls(3, 4, num_layers, batch_first=batch_first, bidirectional=bidirectional, **extra)
    params, _ = randomised(spec, seed, dtype=torch.float64)
    module = loaded_twin(spec, params).eval()
    total = max(lengths) + pad
    x = sequence(spec, total, len(lengths), seed, torch.float64)
    hx = random_hx(spec, len(lengths), seed + 3, torch.float64) if with_hx else None
    lengths_t = torch.tensor(lengths)
    packed = pack_padded_sequence(x, lengths_t, batch_first=batch_first, enforce_sorted=False)
    out, state = module(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=total)
    assert_trees_close(fm.apply(params, (x, hx, lengths_t)), (out, state), **F64)
    # A list of ints is the same lengths; all full lengths are no lengths at all.
    assert_trees_close(fm.apply(params, (x, hx, lengths)), (out, state), **F64)
    full = torch.full((len(lengths),), total)
    assert_trees_close(fm.apply(params, (x, hx, full)), fm.apply(params, (x, hx)), **F64)
    # One sequence on its own, unbatched, with a 0-d length (the form vmap passes).
    i = len(lengths) - 1
    xi = x[i] if batch_first else x[:, i]
    hxi = None if hx is None else pytree.tree_map(lambda t: t[:, i], hx)
    single = fm.apply(params, (xi, hxi, lengths_t[i]))
    whole = fm.apply(params, (x, hx, lengths_t))
    assert_trees_close(single[0], whole[0][i] if batch_first else whole[0][:, i], **F64)
    assert_trees_close(single[1], pytree.tree_map(lambda t: t[:, i], whole[1]), **F64)


@pytest.mark.parametrize("kind", sorted(CELL_KINDS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [None, 0, 4])
def test_cells_match_torch(kind, bias, batch):
    cls, extra = CELL_KINDS[kind]
    spec = cls(3, 5, bias=bias, **extra)
    params, _ = randomised(spec, 2, dtype=torch.float64)
    module = loaded_twin(spec, params)
    assert list(fm.to_state_dict(params)) == list(module.state_dict())
    shape = (3,) if batch is None else (batch, 3)
    x = example_input(shape, dtype=torch.float64)
    hx = random_hx(spec, batch, 5, torch.float64)
    assert_trees_close(fm.apply(params, x), module(x), **F64)
    assert_trees_close(fm.apply(params, (x, hx)), module(x, hx), **F64)
    assert_trees_close(fm.apply(params, (x, None)), module(x), **F64)


def test_float32_cells_and_a_cell_loop_match_the_layer():
    # A loop of cells is the one-layer network, step by step.
    spec, cell = nn.LSTM(3, 5), nn.LSTMCell(3, 5)
    params = fm.init(fm.key(0), spec)
    cell_params = fm.Params(cell, {k[: -len("_l0")]: v for k, v in params.flat().items()})
    x = example_input((6, 2, 3))
    state = None
    outs = []
    for t in range(6):
        state = fm.apply(cell_params, (x[t], state))
        outs.append(state[0])
    out, (h, c) = fm.apply(params, x)
    # The layer projects all steps' inputs in one product: the same values, rounded apart.
    torch.testing.assert_close(torch.stack(outs), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close((h[0], c[0]), state, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        fm.apply(cell_params, x[0]), loaded_twin(cell, cell_params)(x[0]), **F32
    )


def test_input_and_rng_are_untouched():
    spec = nn.GRU(3, 4, 2, dropout=0.5)
    params = fm.init(fm.key(0), spec)
    x = example_input((5, 2, 3))
    x_before, rng = x.clone(), torch.get_rng_state()
    fm.apply(params, x, key=fm.key(1), train=True)
    assert torch.equal(x, x_before)
    assert torch.equal(torch.get_rng_state(), rng)


# -- per-sample gradients ------------------------------------------------------------------


def _loss(out) -> torch.Tensor:
    """A loss of every output (output sequence and final states), batched or not."""
    return sum(((t - 0.3) ** 2).sum() for t in pytree.tree_leaves(out))


@pytest.mark.parametrize("kind", sorted(SEQUENCE_KINDS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_per_sample_grads_with_hx_and_lengths_match_a_loop(kind, batch_first):
    cls, extra = SEQUENCE_KINDS[kind]
    spec = cls(3, 4, 2, batch_first=batch_first, bidirectional=True, **extra)
    params, _ = randomised(spec, 4)
    batch = 3
    x = sequence(spec, 5, batch)
    hx = random_hx(spec, batch, 9)
    lengths = torch.tensor([5, 2, 4])
    bdim = 0 if batch_first else 1

    def loss(p, inputs):
        return _loss(fm.apply(p, inputs))

    got = vmap(grad(loss), in_dims=(None, ((bdim, 1, 0))))(params, (x, hx, lengths))
    for i in range(batch):
        one = (
            x.narrow(bdim, i, 1),
            pytree.tree_map(lambda t, i=i: t.narrow(1, i, 1), hx),
            lengths[i : i + 1],
        )
        want = grad(loss)(params, one)
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "gru"])
def test_cell_per_sample_grads_match_a_loop(kind):
    cls, extra = CELL_KINDS[kind]
    params, _ = randomised(nn.Sequential(cls(3, 4, **extra), nn.Linear(4, 2)), 1)
    x = example_input((5, 3))
    assert_per_sample_grads_match(params, x, example_input((5, 2), seed=2))


def test_lstm_cell_per_sample_grads_match_a_loop():
    params, _ = randomised(nn.LSTMCell(3, 4), 1)
    x, h, c = (example_input((5, n), seed=s) for s, n in ((1, 3), (2, 4), (3, 4)))

    def loss(p, inputs):
        return _loss(fm.apply(p, inputs))

    got = vmap(grad(loss), in_dims=(None, 0))(params, (x, (h, c)))
    for i in range(5):
        want = grad(loss)(params, (x[i : i + 1], (h[i : i + 1], c[i : i + 1])))
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


# -- train mode: dropout between layers ------------------------------------------------------


def test_dropout_without_effect_needs_no_key_and_equals_eval():
    x = example_input((4, 2, 3))
    for spec in (nn.LSTM(3, 4, 2), nn.GRU(3, 4, 1, dropout=0.5), nn.RNN(3, 4, 2, dropout=0.0)):
        params = fm.init(fm.key(0), spec)
        assert_trees_close(fm.apply(params, x, train=True), fm.apply(params, x), atol=0, rtol=0)
    params = fm.init(fm.key(0), nn.LSTM(3, 4, 2, dropout=0.5))
    with pytest.raises(ValueError, match=r"layer '<root>' \(LSTM\): needs a PRNG key"):
        fm.apply(params, x, train=True)
    # Eval mode ignores dropout.
    eval_out = fm.apply(params, x, key=fm.key(1))
    assert_trees_close(eval_out, fm.apply(params, x), atol=0, rtol=0)


def test_dropout_masks_come_from_the_key():
    spec = nn.LSTM(3, 8, 3, dropout=0.5, bidirectional=True)
    params = fm.init(fm.key(0), spec)
    x = example_input((6, 4, 3))
    a, b, c = (fm.apply(params, x, key=fm.key(k), train=True) for k in (1, 1, 2))
    assert_trees_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], fm.apply(params, x)[0])
    # The first layer's final state sees no dropout: equal to eval mode's (bit for bit on
    # the same kernel: train mode with dropout runs the scan).
    with kernel(False):
        eval_out = fm.apply(params, x)
    torch.testing.assert_close(a[1][0][:2], eval_out[1][0][:2], atol=0, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_between_layers_in_distribution(bidirectional):
    """A second layer that passes its input through (``relu(x I)``) shows the dropped
    first-layer output: zeros with probability p, the rest scaled by ``1 / (1 - p)``."""
    p = 0.3
    spec = nn.RNN(4, 16, 2, "relu", False, False, p, bidirectional)
    d = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(0)
    entries = {}
    for name, shape in spec.param_shapes().items():
        if name.startswith("weight_ih_l1"):
            # Each direction of layer 1 passes its half of layer 0's output through.
            half = 0 if name.endswith("l1") else 1
            w = torch.zeros(shape, dtype=torch.float64)
            w[:, 16 * half : 16 * (half + 1)] = torch.eye(16, dtype=torch.float64)
            entries[name] = w
        elif name.startswith("weight_hh_l1"):
            entries[name] = torch.zeros(shape, dtype=torch.float64)
        else:
            entries[name] = 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)
    params, _ = fm.from_state_dict(spec, entries)
    x = torch.rand(40, 25, 4, generator=g, dtype=torch.float64)
    layer0 = fm.apply(params, x)[0]  # eval: layer 1 passes layer 0 through exactly
    assert layer0.min() > 0
    out = fm.apply(params, x, key=fm.key(3), train=True)[0]
    kept = out != 0
    torch.testing.assert_close(out[kept], layer0[kept] / (1 - p), **F64)
    n = out.numel()
    assert out.shape == (40, 25, 16 * d)
    assert abs((~kept).sum().item() - p * n) < 6 * math.sqrt(n * p * (1 - p))


def test_dropout_one_feeds_zeros_to_the_next_layer():
    spec = nn.GRU(3, 4, 2, dropout=1.0)
    params, _ = randomised(spec, 0)
    x = example_input((5, 2, 3))
    second = nn.GRU(4, 4)
    second_params = fm.Params(
        second, {k.replace("_l1", "_l0"): v for k, v in params.flat().items() if "_l1" in k}
    )
    out, h = fm.apply(params, x, key=fm.key(0), train=True)
    want_out, want_h = fm.apply(second_params, torch.zeros(5, 2, 4))
    torch.testing.assert_close(out, want_out, atol=0, rtol=0)
    torch.testing.assert_close(h[1], want_h[0], atol=0, rtol=0)


# -- init ----------------------------------------------------------------------------------


def test_init_is_torch_default_uniform():
    spec = nn.LSTM(20, 64, 2, bidirectional=True, proj_size=16)
    bound = 1 / math.sqrt(64)
    ours = fm.to_state_dict(fm.init(fm.key(7), spec))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = torch_twin_of(spec).state_dict()
    assert list(ours) == list(theirs)
    for name, t in ours.items():
        assert t.shape == theirs[name].shape and t.dtype == torch.float32
        assert t.abs().max() <= bound
        sample = t.flatten().double().numpy()
        # fixed keys make these deterministic; p > 1e-3 rejects any visible deviation
        uniform = scipy.stats.kstest(sample, "uniform", args=(-bound, 2 * bound))
        assert uniform.pvalue > 1e-3, name
        same_law = scipy.stats.ks_2samp(sample, theirs[name].flatten().double().numpy())
        assert same_law.pvalue > 1e-3, name
    # Every tensor from its own stream: no two equal, and the directions differ.
    values = list(ours.values())
    assert not torch.equal(ours["weight_hh_l0"], ours["weight_hh_l0_reverse"])
    assert not torch.equal(ours["bias_ih_l0"], ours["bias_hh_l0"])
    assert len({t.flatten()[:4].numpy().tobytes() for t in values}) == len(values)
    cell = fm.to_state_dict(fm.init(fm.key(7), nn.GRUCell(5, 9)))
    assert all(t.abs().max() <= 1 / 3 for t in cell.values())


# -- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, out",
    [
        (nn.RNN(3, 4), ((7, 4), (1, 4))),
        (nn.GRU(3, 4, 2, bidirectional=True, batch_first=True), ((7, 8), (4, 4))),
        (nn.LSTM(3, 4, 3), ((7, 4), ((3, 4), (3, 4)))),
        (nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2), ((7, 4), ((4, 2), (4, 4)))),
    ],
    ids=repr,
)
def test_out_shape_is_that_of_torch(spec, out):
    assert fm.shapes(spec, (7, 3))[""] == out
    params = fm.init(fm.key(0), spec)
    got = fm.apply(params, example_input((7, 3)))
    assert pytree.tree_map(lambda t: tuple(t.shape), got) == out
    assert spec.out_shape((None, 3)) == pytree.tree_map(
        lambda d: None if d == 7 else d, out, is_leaf=lambda v: isinstance(v, int)
    )
    assert spec.out_shape((..., 3)) == spec.out_shape((None, 3))


@pytest.mark.parametrize(
    "spec, out",
    [(nn.RNNCell(3, 4), (4,)), (nn.GRUCell(3, 4), (4,)), (nn.LSTMCell(3, 4), ((4,), (4,)))],
    ids=repr,
)
def test_cell_out_shape(spec, out):
    assert fm.shapes(spec, (3,))[""] == out
    assert spec.example_ndim == 1


def test_input_size_is_inferred_from_the_input_shape():
    spec = nn.Sequential(nn.Linear(2, 6), nn.LSTM(hidden_size=4, num_layers=2))
    assert spec["1"].input_size is None
    params = fm.init(fm.key(0), spec, input_shape=(5, 2))
    assert params.spec["1"] == nn.LSTM(6, 4, 2)
    assert params["1"]["weight_ih_l0"].shape == (16, 6)
    cell = fm.init(fm.key(0), nn.GRUCell(hidden_size=3), input_shape=(7,))
    assert cell.spec == nn.GRUCell(7, 3)
    # An unknown size stays unknown; without an input shape init says what is missing.
    assert fm.shapes(nn.RNN(hidden_size=4), (None, None))[""] == ((None, 4), (1, 4))
    with pytest.raises(ValueError, match=r"'<root>' \(RNN\): input_size omitted"):
        fm.init(fm.key(0), nn.RNN(hidden_size=4))


def test_shape_errors_name_the_layer():
    with pytest.raises(
        ValueError,
        match=r"layer '1' \(LSTM\): expected 3 input features \(input_size=3\) in one "
        r"example of shape \(L, 3\), got \(5, 6\)",
    ):
        fm.shapes(nn.Sequential(nn.Linear(2, 6), nn.LSTM(3, 4)), (5, 2))
    with pytest.raises(
        ValueError, match=r"layer '<root>' \(GRU\): expected one example of shape \(L, H_in\)"
    ):
        fm.shapes(nn.GRU(3, 4), (3,))
    with pytest.raises(ValueError, match=r"\(RNNCell\): expected one example of shape \(H_in\)"):
        fm.shapes(nn.RNNCell(3, 4), (2, 3))
    with pytest.raises(ValueError, match=r"\(GRUCell\): expected 3 input features"):
        fm.shapes(nn.GRUCell(3, 4), (2,))


def test_summary_rows():
    spec = nn.LSTM(3, 4, 2, bidirectional=True)
    table = fm.summary(spec, (7, 3))
    (row,) = table.rows
    assert (row.path, row.type, row.out_shape) == ("", "LSTM", ((7, 8), ((4, 4), (4, 4))))
    assert row.params == table.trainable == sum(t.numel() for t in torch_twin_of(spec).parameters())
    chain = fm.summary(nn.Sequential(nn.Linear(2, 3), nn.GRUCell(hidden_size=5)), (2,))
    assert [(r.path, r.out_shape, r.params) for r in chain.rows] == [
        ("", (5,), 9 + 150),
        ("0", (3,), 9),
        ("1", (5,), 45 + 75 + 2 * 15),  # (15, 3), (15, 5), 2 x (15,)
    ]


# -- configs and files -----------------------------------------------------------------------

CONFIG_SPECS = [
    nn.RNN(3, 4),
    nn.RNN(3, 4, 2, "relu", False, True, 0.25, True),
    nn.LSTM(3, 4, 2, False, True, 0.5, True, 2),
    nn.LSTM(hidden_size=4),
    nn.GRU(3, 4, 3, dropout=0.1, bidirectional=True),
    nn.RNNCell(3, 4, False, "relu"),
    nn.LSTMCell(3, 4),
    nn.GRUCell(hidden_size=4, bias=False),
]


@pytest.mark.parametrize("spec", CONFIG_SPECS, ids=repr)
def test_config_round_trip(spec):
    config = spec.to_config()
    assert config["type"] == type(spec).__name__.lower()
    for doc in (config, spec.to_config(defaults=True)):
        assert fm.from_config(json.loads(json.dumps(doc))) == spec
    chain = nn.Sequential(spec, nn.Identity())
    assert fm.from_config(json.loads(json.dumps(chain.to_config()))) == chain


def test_positional_arguments_follow_torch():
    assert nn.RNN(3, 4, 2, "relu", False, True, 0.25, True) == nn.RNN(
        input_size=3,
        hidden_size=4,
        num_layers=2,
        nonlinearity="relu",
        bias=False,
        batch_first=True,
        dropout=0.25,
        bidirectional=True,
    )
    assert nn.LSTM(3, 4, 2, False, True, 0.5, True, 2) == nn.LSTM(
        3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.5, bidirectional=True,
        proj_size=2,
    )  # fmt: skip
    assert nn.GRU(3, 4, 2, False, True, 0.5, True).bidirectional is True
    assert nn.RNNCell(3, 4, False, "relu").nonlinearity == "relu"
    assert nn.LSTM(3, 4, dropout=1).dropout == 1.0 and isinstance(
        nn.GRU(3, 4, dropout=0).dropout, float
    )


def test_config_names():
    for cls in (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell):
        name = cls.__name__.lower()
        assert _registry.lookup(name) is cls
        assert _registry.config_name_of(cls) == name
    spec = fm.from_config(
        [
            {"type": "linear", "params": {"out_features": 6}},
            {"type": "gru", "params": {"hidden_size": 4, "batch_first": True}},
        ],
        input_shape=(5, 2),
    )
    assert spec["layer_1"] == nn.GRU(6, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"config\[0\].*LSTM: proj_size must be smaller"):
        fm.from_config([{"type": "lstm", "params": {"hidden_size": 4, "proj_size": 4}}])


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.RNN(3, 0), ValueError, "RNN: hidden_size must be positive"),
        (lambda: nn.RNN(3.0, 4), TypeError, "RNN: input_size must be an int"),
        (lambda: nn.LSTM(3, 4, 0), ValueError, "LSTM: num_layers must be positive"),
        (lambda: nn.RNN(3, 4, nonlinearity="sigmoid"), ValueError, "RNN: nonlinearity must"),
        (lambda: nn.GRU(3, 4, bias=1), TypeError, "GRU: bias must be a bool"),
        (lambda: nn.GRU(3, 4, batch_first=None), TypeError, "GRU: batch_first must be a bool"),
        (lambda: nn.LSTM(3, 4, bidirectional=0), TypeError, "LSTM: bidirectional must be"),
        (lambda: nn.GRU(3, 4, dropout=1.5), ValueError, r"GRU: dropout must be in \[0.0, 1.0\]"),
        (lambda: nn.RNN(3, 4, dropout=float("nan")), ValueError, "RNN: dropout must be a finite"),
        (lambda: nn.LSTM(3, 4, proj_size=4), ValueError, "LSTM: proj_size must be smaller"),
        (lambda: nn.LSTM(3, 4, proj_size=-1), ValueError, "LSTM: proj_size must be non-neg"),
        (lambda: nn.RNNCell(3, 4, nonlinearity="gelu"), ValueError, "RNNCell: nonlinearity"),
        (lambda: nn.LSTMCell(3, True), TypeError, "LSTMCell: hidden_size must be an int"),
        (lambda: nn.GRUCell(0, 4), ValueError, "GRUCell: input_size must be positive"),
        (lambda: nn.GRU(3), TypeError, r"GRU: missing required argument\(s\) \['hidden_size'\]"),
        (lambda: nn.RNN(3, 4, proj_size=2), TypeError, "RNN: unexpected argument 'proj_size'"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def _inputs():
    x = torch.zeros(5, 2, 3)
    return [
        ("not a tensor", [1.0], TypeError, r"expected input, \(input, hx\) or .* tensor input"),
        ("too many items", (x, None, None, None), TypeError, "got a tuple of 4 items"),
        ("rank", torch.zeros(2, 5, 2, 3), ValueError, r"expected input \(L, N, 3\) or \(L, 3\)"),
        ("features", torch.zeros(5, 2, 4), ValueError, r"got shape \(5, 2, 4\)"),
        ("empty", torch.zeros(0, 2, 3), ValueError, "expected a sequence length larger than 0"),
        ("hx pair", (x, torch.zeros(2, 2, 4)), TypeError, r"hx to be a pair \(h_0, c_0\)"),
        (
            "hx shape",
            (x, (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))),
            ValueError,
            r"expected h_0 of shape \(2, 2, 4\) for an input of shape \(5, 2, 3\), got shape "
            r"\(2, 3, 4\)",
        ),
        (
            "c unbatched",
            (x[:, 0], (torch.zeros(2, 4), torch.zeros(2, 1, 4))),
            ValueError,
            r"expected c_0 of shape \(2, 4\)",
        ),
        ("lengths range", (x, None, torch.tensor([6, 1])), ValueError, r"lengths in \[1, 5\]"),
        ("lengths zero", (x, None, [0, 2]), ValueError, r"got \[0, 2\]"),
        ("lengths shape", (x, None, torch.tensor([3])), ValueError, r"lengths of shape \(2,\)"),
        ("lengths float", (x, None, torch.ones(2)), TypeError, "integer tensor, got dtype"),
        ("lengths type", (x, None, "ab"), TypeError, "integer tensor .* got str"),
        (
            "packed",
            torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3])),
            TypeError,
            r"got torch's PackedSequence: pass the padded batch and its lengths instead, "
            r"\(input, hx, lengths\)",
        ),
    ]


@pytest.mark.parametrize("what, x, exc, msg", _inputs(), ids=[c[0] for c in _inputs()])
def test_bad_inputs_name_the_layer(what, x, exc, msg):
    params = fm.init(fm.key(0), nn.Sequential(nn.Identity(), nn.LSTM(3, 4, 2)))
    with pytest.raises(exc, match=r"layer '1' \(LSTM\): .*" + msg):
        fm.apply(params, x)


def test_bad_cell_inputs_name_the_layer():
    params = fm.init(fm.key(0), nn.GRUCell(3, 4))
    with pytest.raises(ValueError, match=r"\(GRUCell\): expected input \(N, 3\) or \(3,\)"):
        fm.apply(params, (torch.zeros(2, 2, 3), None))
    with pytest.raises(ValueError, match=r"\(GRUCell\): expected an input of rank 1"):
        fm.apply(params, torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"\(GRUCell\): expected hx of shape \(2, 4\)"):
        fm.apply(params, (torch.zeros(2, 3), torch.zeros(3, 4)))
    with pytest.raises(TypeError, match=r"\(GRUCell\): expected input or \(input, hx\)"):
        fm.apply(params, (torch.zeros(2, 3), None, None))
    lstm = fm.init(fm.key(0), nn.LSTMCell(3, 4))
    with pytest.raises(ValueError, match=r"\(LSTMCell\): expected c_0 of shape \(4,\)"):
        fm.apply(lstm, (torch.zeros(3), (torch.zeros(4), torch.zeros(1, 4))))
    with pytest.raises(TypeError, match=r"\(LSTMCell\): .*same dtype"):
        fm.apply(lstm, torch.zeros(2, 3, dtype=torch.float64))


# -- torch.nn bridge -------------------------------------------------------------------------

# Configs, files and the torch.nn round trips: tests/test_contract.py.


def test_from_module_reads_torch_built_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.LSTM(3, 5, 2, batch_first=True, proj_size=2)
    ).eval()
    params, _ = transforms.from_module(model)
    assert params.spec == nn.Sequential(
        nn.Linear(2, 3), nn.LSTM(3, 5, 2, batch_first=True, proj_size=2)
    )
    x = torch.randn(4, 6, 2)
    with torch.no_grad():
        assert_trees_close(fm.apply(params, x), model(x), **F32)
    # A module whose tensors the spec cannot hold is refused, naming it.
    odd = torch.nn.GRU(3, 4)
    odd.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match=r"module '<root>' \(GRU\): its parameters"):
        transforms.from_module(odd)


# -- compile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SEQUENCE_KINDS))
def test_fused_kernel_under_autograd(kind):
    """Eager autograd runs torch's kernel and its backward: the torch module's gradients."""
    cls, extra = SEQUENCE_KINDS[kind]
    spec = cls(3, 5, 2, batch_first=True, **extra)
    params, _ = randomised(spec, 4)
    module = loaded_twin(spec, params)
    x = sequence(spec, 6, 2)
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    got = torch.autograd.grad(fm.apply(leaves, x)[0].square().sum(), fm.tree.leaves(leaves))
    want = torch.autograd.grad(module(x)[0].square().sum(), list(module.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **F32)


@pytest.mark.slow
def test_fused_kernel_compiles_under_no_grad():
    """``torch.compile`` under ``no_grad`` takes torch's kernel: one graph, torch's output."""
    spec = nn.LSTM(3, 5, 2, batch_first=True, bidirectional=True, proj_size=2)
    params, _ = randomised(spec, 4)
    module = loaded_twin(spec, params)
    x = sequence(spec, 6, 2)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            compiled = torch.compile(fm.apply, fullgraph=True)
            assert_trees_close(compiled(params, x), module(x), **F32)
    finally:
        torch._dynamo.reset()
