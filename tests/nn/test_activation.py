"""Parameter-free layers (activations, Identity, Flatten): fidelity, gradients, checks."""

import pytest
import torch

import funcmodels as fm
from tests.helpers import assert_per_sample_grads_match, torch_twin

nn = fm.nn

# Same torch functions on the same tensors: outputs agree exactly.
EXACT = {"atol": 0.0, "rtol": 0.0}

# (our spec, torch module factory, batched input shape)
CASES = [
    (nn.ReLU(), lambda: torch.nn.ReLU(), (3, 4, 5)),
    (nn.GELU(), lambda: torch.nn.GELU(), (3, 4, 5)),
    (nn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), (3, 4, 5)),
    (nn.SiLU(), lambda: torch.nn.SiLU(), (3, 4, 5)),
    (nn.Sigmoid(), lambda: torch.nn.Sigmoid(), (3, 4, 5)),
    (nn.Tanh(), lambda: torch.nn.Tanh(), (3, 4, 5)),
    (nn.Identity(), lambda: torch.nn.Identity(), (3, 4, 5)),
    (nn.Softmax(), lambda: torch.nn.Softmax(dim=-1), (3, 4, 5)),
    (nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (3, 4, 5)),
    (nn.Softmax(dim=0), lambda: torch.nn.Softmax(dim=0), (3, 4)),
    (nn.LogSoftmax(), lambda: torch.nn.LogSoftmax(dim=-1), (3, 4, 5)),
    (nn.LogSoftmax(dim=-2), lambda: torch.nn.LogSoftmax(dim=-2), (3, 4, 5)),
    (nn.Flatten(), lambda: torch.nn.Flatten(), (3, 2, 4, 5)),
    (nn.Flatten(2), lambda: torch.nn.Flatten(2), (3, 2, 4, 5)),
    (nn.Flatten(1, 2), lambda: torch.nn.Flatten(1, 2), (3, 2, 4, 5)),
    (nn.Flatten(0, -2), lambda: torch.nn.Flatten(0, -2), (3, 2, 4, 5)),
]
IDS = [repr(spec) for spec, _, _ in CASES]

ELEMENTWISE = [
    nn.ReLU(),
    nn.GELU(),
    nn.GELU("tanh"),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Identity(),
    nn.Softmax(),
    nn.LogSoftmax(),
]


@pytest.mark.parametrize("spec, make_module, shape", CASES, ids=IDS)
def test_matches_torch_batched_and_single(spec, make_module, shape):
    params = fm.init(fm.key(0), spec)
    module = torch_twin(make_module(), params)
    assert fm.to_state_dict(params) == {}
    # scaled so that GELU's tanh approximation differs visibly from the exact form
    x = 3 * fm.random.normal(fm.key(1), shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    # without a known example rank the layer sees the tensor as given, like torch.nn
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


def test_gelu_approximations_differ():
    x = torch.linspace(-3, 3, 13)
    exact = fm.apply(fm.init(fm.key(0), nn.GELU()), x)
    approx = fm.apply(fm.init(fm.key(0), nn.GELU("tanh")), x)
    assert (exact - approx).abs().max() > 1e-5


def test_elementwise_layers_pass_the_example_rank_through():
    """In front of a conv, a single example still counts as one example (as in torch)."""
    spec = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Conv2d(2, 3, 3))
    assert spec.example_ndim == 3
    params = fm.init(fm.key(0), spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.Conv2d(2, 3, 3)), params
    )
    x = fm.random.normal(fm.key(1), (2, 2, 5, 5))
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)


def test_flatten_after_conv_flattens_one_example_per_sample():
    """A single example is batched before Flatten, so its output is one flat vector.

    torch.nn.Flatten on an unbatched (C, H, W) would keep C; we give what torch gives for
    the one-example batch, which is what a per-sample function under vmap needs.
    """
    spec = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    params = fm.init(fm.key(0), spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2)),
        params,
    )
    x = fm.random.normal(fm.key(1), (4, 2, 4, 4))
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[2]), module(x[2:3])[0], **EXACT)


@pytest.mark.parametrize("act", ELEMENTWISE, ids=repr)
def test_per_sample_grads_through_activation(act):
    spec = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 3)))


# the conv maps (2, 4, 4) to (3, 2, 2); Flatten(2) keeps the channel dim
@pytest.mark.parametrize(
    "flatten, n_in, y_shape", [(nn.Flatten(), 12, (4, 2)), (nn.Flatten(2), 4, (4, 3, 2))]
)
def test_per_sample_grads_through_flatten(flatten, n_in, y_shape):
    spec = nn.Sequential(nn.Conv2d(2, 3, 3), flatten, nn.Linear(n_in, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 2, 4, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), y_shape))


def test_parameter_free_layers_leave_sibling_params_unchanged():
    """Inserting an activation keeps the init of the layers around it (same child names)."""
    bare = fm.init(fm.key(0), nn.Sequential({"a": nn.Linear(3, 4), "b": nn.Linear(4, 2)}))
    with_act = fm.init(
        fm.key(0),
        nn.Sequential({"a": nn.Linear(3, 4), "act": nn.GELU(), "b": nn.Linear(4, 2)}),
    )
    got, want = fm.to_state_dict(with_act), fm.to_state_dict(bare)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **EXACT)


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.GELU("fast"), ValueError, r"GELU: approximate must be 'none' or 'tanh', got "),
        (lambda: nn.GELU(approximate=None), ValueError, r"GELU: approximate .* got None"),
        (lambda: nn.Softmax(dim=1.0), TypeError, r"Softmax: dim must be an int, got float 1.0"),
        (lambda: nn.Softmax(dim=True), TypeError, r"Softmax: dim must be an int, got bool"),
        (lambda: nn.LogSoftmax(dim="x"), TypeError, r"LogSoftmax: dim must be an int, got str"),
        (lambda: nn.Flatten(1.5), TypeError, r"Flatten: start_dim must be an int, got 1.5"),
        (lambda: nn.Flatten(end_dim=None), TypeError, r"Flatten: end_dim must be an int"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


# torch itself would raise IndexError here without naming the layer.
@pytest.mark.parametrize("layer", [nn.Softmax(dim=2), nn.LogSoftmax(dim=-3)])
def test_softmax_dim_out_of_range_names_layer(layer):
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 3), layer))
    msg = rf"layer '1' \({layer.type_name}\): .*dim={layer.dim}.* shape \(2, 3\)"
    with pytest.raises(ValueError, match=msg):
        fm.apply(params, torch.zeros(2, 4))


def test_flatten_dims_out_of_range_names_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 3), nn.Flatten(2)))
    with pytest.raises(ValueError, match=r"layer '1' \(Flatten\): .*start_dim=2.* shape \(2, 3\)"):
        fm.apply(params, torch.zeros(2, 4))
