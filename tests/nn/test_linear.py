"""Linear and Bilinear (``_linear.py``) against torch.nn: outputs, init, gradients,
per-sample gradients, checks.

References: the torch.nn module with the same weights (exact in eager mode: the same
torch.nn.functional kernels run on the same tensors), torch's autograd for gradients
(``atol=1e-5, rtol=1e-5``), a loop of single-sample gradients for vmap(grad) (``atol=1e-5,
rtol=1e-4``: under vmap Bilinear computes the same sum with einsum). Configs, files, the
torch.nn round trip and compile: tests/test_contract.py.
"""

from __future__ import annotations

import math
import warnings

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin
from transforms.bridge import BilinearModule

nn = fm.nn

# torch warns that even kernels with padding='same' copy the input; torch.nn does the same
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


# Our layers call the same torch.nn.functional kernels as torch.nn on the same tensors,
# so outputs agree exactly on CPU; gradients use the helper's default tolerances.
EXACT = {"atol": 0.0, "rtol": 0.0}


LINEAR_CASES = [
    ({"in_features": 5, "out_features": 3}, (4, 5)),
    ({"in_features": 5, "out_features": 3, "bias": False}, (4, 5)),
    ({"in_features": 3, "out_features": 6}, (2, 4, 3)),
    ({"in_features": 1, "out_features": 1}, (3, 1)),
]


@pytest.mark.parametrize("kwargs, shape", LINEAR_CASES)
def test_linear_matches_torch(kwargs, shape):
    params = fm.init(fm.key(0), nn.Linear(**kwargs))
    module = torch_twin(torch.nn.Linear(**kwargs), params)
    x = fm.random.normal(fm.key(1), shape)
    before = x.clone()
    torch.testing.assert_close(fm.apply(params, x), module(x), **EXACT)
    torch.testing.assert_close(fm.apply(params, x[0]), module(x[0]), **EXACT)
    torch.testing.assert_close(x, before, **EXACT)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_per_sample_grads(bias):
    spec = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.Tanh(), nn.Linear(6, 2, bias=bias))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 2)))


@pytest.mark.parametrize(
    "spec, make_module, fan_in",
    [
        (nn.Linear(64, 200), lambda: torch.nn.Linear(64, 200), 64),
    ],
)
def test_init_is_torch_default_uniform(spec, make_module, fan_in):
    """kaiming_uniform(a=sqrt(5)) weights and fan-in biases: both U(-1/sqrt(fan_in), ...)."""
    bound = 1 / math.sqrt(fan_in)
    ours = fm.to_state_dict(fm.init(fm.key(7), spec))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = make_module().state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        assert t.shape == theirs[name].shape
        assert t.dtype == torch.float32
        assert t.abs().max() <= bound
        sample = t.flatten().double().numpy()
        # fixed keys make these deterministic; p > 1e-3 rejects any visible deviation
        uniform = scipy.stats.kstest(sample, "uniform", args=(-bound, 2 * bound))
        assert uniform.pvalue > 1e-3, name
        same_law = scipy.stats.ks_2samp(sample, theirs[name].flatten().double().numpy())
        assert same_law.pvalue > 1e-3, name


def test_weight_and_bias_come_from_different_streams_of_the_layer_key():
    lin = fm.to_state_dict(fm.init(fm.key(0), nn.Linear(1, 8)))
    assert not torch.equal(lin["weight"].flatten(), lin["bias"])


def test_linear_wrong_features_names_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(
        ValueError, match=r"layer '2' \(Linear\): expected input \(\*, 5\), got shape \(2, 4\)"
    ):
        fm.apply(params, torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match=r"layer '0' \(Linear\): expected input \(\*, 3\), got shape \(2, 7\)"
    ):
        fm.apply(params, torch.zeros(2, 7))
    alone = fm.init(fm.key(0), nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"layer '<root>' \(Linear\): .* got shape \(\)"):
        fm.apply(alone, torch.tensor(1.0))


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: nn.Linear(0, 3), ValueError, r"Linear: in_features must be positive, got 0"),
        (lambda: nn.Linear(3, -1), ValueError, r"Linear: out_features must be positive, got -1"),
        (lambda: nn.Linear(3.0, 2), TypeError, r"Linear: in_features must be an int, got float"),
        (lambda: nn.Linear(True, 2), TypeError, r"Linear: in_features must be an int, got bool"),
        (lambda: nn.Linear(3, 2, bias=1), TypeError, r"Linear: bias must be a bool, got int 1"),
    ],
)
def test_invalid_spec(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize("spec", [nn.Linear(2, 3)])
def test_non_tensor_input_names_layer(spec):
    params = fm.init(fm.key(0), nn.Sequential(spec))
    with pytest.raises(TypeError, match=r"layer '0' \(.*\): expected a tensor, got list"):
        fm.apply(params, [[1.0, 2.0]])


def bilinear_inputs(lead, spec, seed=1):
    return (
        fm.random.normal(fm.key(seed), (*lead, spec.in1_features)),
        fm.random.normal(fm.key(seed + 1), (*lead, spec.in2_features)),
    )


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    bias=st.booleans(),
    lead=st.lists(st.integers(0, 3), max_size=2),
)
def test_bilinear_matches_torch(sizes, bias, lead):
    spec = nn.Bilinear(*sizes, bias=bias)
    module = torch.nn.Bilinear(*sizes, bias=bias)
    params, _ = randomised(spec)
    torch_twin(module, params)
    assert list(fm.to_state_dict(params)) == list(module.state_dict())
    x1, x2 = bilinear_inputs(lead, spec)
    before = (x1.clone(), x2.clone())
    want = module(x1, x2)
    torch.testing.assert_close(fm.apply(params, (x1, x2)), want, **EXACT)
    torch.testing.assert_close(fm.apply(params, [x1, x2]), want, **EXACT)
    assert torch.equal(x1, before[0]) and torch.equal(x2, before[1])
    # the shape rule takes the pair of example shapes
    assert spec.out_shape((tuple(lead) + (sizes[0],), tuple(lead) + (sizes[1],))) == (
        *lead,
        sizes[2],
    )


def test_bilinear_unbatched_and_empty_inputs():
    spec = nn.Bilinear(3, 4, 2)
    params, _ = randomised(spec)
    module = torch_twin(torch.nn.Bilinear(3, 4, 2), params)
    x1, x2 = bilinear_inputs((5,), spec)
    torch.testing.assert_close(fm.apply(params, (x1[0], x2[0])), module(x1[0], x2[0]), **EXACT)
    torch.testing.assert_close(fm.apply(params, (x1[0], x2[0])), module(x1, x2)[0], **EXACT)
    empty = fm.apply(params, (x1[:0], x2[:0]))
    assert empty.shape == module(x1[:0], x2[:0]).shape == (0, 2)


def test_bilinear_init_is_torchs_distribution():
    spec = nn.Bilinear(16, 8, 32)
    params = fm.init(fm.key(0), spec)
    bound = 1 / math.sqrt(16)  # torch: 1 / sqrt(in1_features), for weight and bias
    w, b = params["weight"], params["bias"]
    assert w.shape == (32, 16, 8) and b.shape == (32,)
    assert w.abs().max() <= bound and b.abs().max() <= bound
    # U(-bound, bound): a Kolmogorov-Smirnov test on the 4096 weights (p < 1e-6 happens
    # once in a million draws when the distribution is right).
    ks = scipy.stats.kstest(w.flatten().numpy(), "uniform", args=(-bound, 2 * bound))
    assert ks.pvalue > 1e-6
    # each tensor from its own folded key: the same key gives the same, others differ
    again = fm.init(fm.key(0), spec)
    assert torch.equal(again["weight"], w)
    assert not torch.equal(fm.init(fm.key(1), spec)["weight"], w)
    assert not torch.equal(w.flatten()[:32], b)


def test_bilinear_gradients_match_torch_autograd():
    spec = nn.Bilinear(3, 4, 5)
    params, _ = randomised(spec)
    module = torch_twin(torch.nn.Bilinear(3, 4, 5), params)
    x1, x2 = bilinear_inputs((6,), spec)
    x1.requires_grad_(True)
    g = grad(lambda p, a: (fm.apply(p, (a, x2)) ** 3).sum(), argnums=(0, 1))(params, x1)
    (module(x1, x2) ** 3).sum().backward()
    for name in ("weight", "bias"):
        torch.testing.assert_close(g[0][name], getattr(module, name).grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g[1], x1.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_per_sample_grads_equal_the_loop_without_a_fallback(bias):
    spec = nn.Sequential(nn.Bilinear(3, 4, 6, bias=bias), nn.Tanh(), nn.Linear(6, 2))
    params, _ = randomised(spec)
    x1, x2 = bilinear_inputs((5,), spec["0"])
    y = fm.random.normal(fm.key(3), (5, 2))

    def loss(p, a, b, t):
        return ((fm.apply(p, (a, b)) - t) ** 2).sum()

    with warnings.catch_warnings():
        # no slow per-sample fallback (torch warns when an op has no batching rule)
        warnings.simplefilter("error")
        got = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x1, x2, y)
    for i in range(5):
        want = grad(loss)(params, x1[i : i + 1], x2[i : i + 1], y[i : i + 1])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


def test_bilinear_errors_name_the_layer():
    params = fm.init(fm.key(0), nn.Bilinear(3, 4, 2))
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(TypeError, match=r"layer '<root>' \(Bilinear\): expected a pair"):
        fm.apply(params, a)
    with pytest.raises(TypeError, match=r"\(Bilinear\): expected a pair of tensors"):
        fm.apply(params, (a, 1.0))
    with pytest.raises(ValueError, match=r"\(Bilinear\): expected inputs \(\*, 3\) and \(\*, 4\)"):
        fm.apply(params, (b, a))
    with pytest.raises(ValueError, match=r"same leading dims, got shapes \(2, 3\) and \(1, 4\)"):
        fm.apply(params, (a, b[:1]))
    with pytest.raises(ValueError, match=r"\(Bilinear\): expected a pair of example shapes"):
        fm.shapes(nn.Bilinear(3, 4, 2), (3,))
    spec = nn.Bilinear(3, 4, 2)
    with pytest.raises(ValueError, match=r"\(Bilinear\): expected a pair of example shapes"):
        spec.out_shape(((3,), (5,)))
    with pytest.raises(ValueError, match=r"\(Bilinear\): expected the same leading dims"):
        spec.out_shape(((2, 3), (4,)))
    assert spec.out_shape(((..., 3), (7, 4))) == (7, 2)
    assert spec.out_shape(((None, 3), (7, 4))) == (7, 2)
    with pytest.raises(ValueError, match="Bilinear: in2_features must be positive"):
        nn.Bilinear(3, 0, 2)
    with pytest.raises(TypeError, match="Bilinear: bias must be a bool"):
        nn.Bilinear(3, 4, 2, bias=1)
    with pytest.raises(TypeError):
        nn.Bilinear(3, 4)  # out_features is required, as in torch


@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_module_takes_the_pair_and_reads_back_from_torchs_layer(bias):
    # configs, files and the to_module round trip: tests/test_contract.py
    spec = nn.Sequential(nn.Bilinear(3, 4, 5, bias=bias), nn.ReLU(), nn.Linear(5, 2))
    params, _ = randomised(spec)
    x = bilinear_inputs((4,), spec["0"])
    want = fm.apply(params, x)
    module = transforms.to_module(params)
    assert type(module[0]) is BilinearModule and isinstance(module[0], torch.nn.Bilinear)
    assert (module[0].bias is not None) == bias
    with torch.no_grad():
        torch.testing.assert_close(module[0](*x), fm.apply(params["0"], x), **EXACT)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(x), want, **EXACT)
    # torch's own layer reads back to the same spec
    plain = torch.nn.Sequential(torch.nn.Bilinear(3, 4, 5, bias=bias), *list(module)[1:])
    plain.load_state_dict(module.state_dict())
    assert transforms.from_module(plain)[0].spec == spec
    summary = fm.summary(spec)
    assert summary.trainable == sum(p.numel() for p in module.parameters())
    assert fm.from_config({"type": "bilinear", "params": {"in1_features": 3, "in2_features": 4,
                           "out_features": 5, "bias": bias}}) == spec["0"]  # fmt: skip
