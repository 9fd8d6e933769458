"""Embedding: fidelity to torch.nn.Embedding (outputs, gradients, max_norm), init, checks."""

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad

import funcmodels as fm
import transforms
from tests.helpers import assert_per_sample_grads_match, randomised, torch_twin

nn = fm.nn

# The lookup is torch's own kernel, so outputs agree exactly; renormalised rows differ by
# the float32 rounding of torch's scale, computed in double there.
EXACT = {"atol": 0.0, "rtol": 0.0}
RENORM = {"atol": 1e-6, "rtol": 1e-6}


def indices(shape, n, seed=0):
    return torch.randint(0, n, shape, generator=torch.Generator().manual_seed(seed))


def module_of(spec) -> torch.nn.Embedding:
    return torch.nn.Embedding(
        spec.num_embeddings,
        spec.embedding_dim,
        padding_idx=spec.padding_idx,
        max_norm=spec.max_norm,
        norm_type=spec.norm_type,
        scale_grad_by_freq=spec.scale_grad_by_freq,
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    dim=st.integers(1, 5),
    padding=st.none() | st.integers(-9, 8),
    max_norm=st.none() | st.floats(0.5, 3.0),
    norm_type=st.sampled_from([1.0, 2.0, 3.5]),
    freq=st.booleans(),
    shape=st.sampled_from([(), (4,), (3, 5), (2, 3, 2), (0, 3)]),
    seed=st.integers(0, 100),
)
def test_matches_torch_outputs_and_gradients(
    n, dim, padding, max_norm, norm_type, freq, shape, seed
):
    if padding is not None and not -n <= padding < n:
        padding = None
    spec = nn.Embedding(n, dim, padding, max_norm, norm_type, freq)
    params, _ = randomised(spec, seed)
    module = torch_twin(module_of(spec), params)
    x = indices(shape, n, seed)
    out = fm.apply(params, x)
    want = module(x)  # renormalises module.weight in place when max_norm is set
    torch.testing.assert_close(out, want, **(EXACT if max_norm is None else RENORM))
    assert out.shape == (*shape, dim)
    # Gradients: torch's flow to its weight as if the renormalised rows were stored.
    (want**3).sum().backward()
    g = grad(lambda p: (fm.apply(p, x) ** 3).sum())(params)
    torch.testing.assert_close(g["weight"], module.weight.grad, atol=1e-5, rtol=1e-5)


def test_max_norm_renormalises_the_looked_up_rows_and_never_the_weight():
    spec = nn.Embedding(6, 4, max_norm=1.0)
    params, _ = randomised(spec)
    before = params["weight"].clone()
    module = torch_twin(module_of(spec), params)
    x = torch.tensor([[0, 1, 1], [5, 2, 0]])
    for _ in range(2):  # the second call: torch reads rows it has renormalised already
        out = fm.apply(params, x)
        torch.testing.assert_close(out, module(x), **RENORM)
        assert out.norm(dim=-1).max() <= 1.0
    assert torch.equal(params["weight"], before)
    # torch's weight changed where rows longer than max_norm were looked up: ours did not.
    long = before.norm(dim=1) > 1.0
    seen = torch.zeros(6, dtype=torch.bool)
    seen[x.flatten()] = True
    assert (long & seen).any()
    assert not torch.allclose(module.weight[long & seen], before[long & seen])
    torch.testing.assert_close(module.weight[~(long & seen)], before[~(long & seen)], **EXACT)


def test_padding_row_is_zero_at_init_and_gets_no_gradient():
    spec = nn.Embedding(7, 3, padding_idx=-2)
    assert spec.padding_idx == 5  # stored as torch stores it
    params = fm.init(fm.key(0), spec)
    assert torch.equal(params["weight"][5], torch.zeros(3))
    assert params["weight"][[0, 1, 2, 3, 4, 6]].ne(0).all()
    x = torch.tensor([5, 1, 5, 3])
    g = grad(lambda p: fm.apply(p, x).sum())(params)["weight"]
    assert torch.equal(g[5], torch.zeros(3)) and g[1].eq(1).all()


def test_init_is_torch_standard_normal():
    spec = nn.Embedding(400, 16)
    ours = fm.init(fm.key(3), spec)["weight"].flatten().double().numpy()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = torch.nn.Embedding(400, 16).weight.detach().flatten().double().numpy()
    assert scipy.stats.kstest(ours, "norm").pvalue > 1e-3
    assert scipy.stats.ks_2samp(ours, theirs).pvalue > 1e-3
    a, b = (fm.init(fm.key(k), spec)["weight"] for k in (3, 4))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"padding_idx": 0}, {"scale_grad_by_freq": True}, {"max_norm": 1.5, "padding_idx": 2}],
)
def test_per_sample_gradients_match_a_loop(kwargs):
    spec = nn.Sequential(
        nn.Embedding(9, 4, **kwargs), nn.Rearrange("... l d -> ... (l d)"), nn.Linear(12, 2)
    )
    params, _ = randomised(spec)
    x = indices((5, 3), 9, seed=1)
    x[0] = 2  # repeated tokens, and the padding token where there is one
    assert_per_sample_grads_match(params, x, torch.randn(5, 2))


def test_sparse_is_accepted_with_dense_gradients_and_kept_for_torch():
    spec = nn.Embedding(5, 3, sparse=True)
    params, _ = randomised(spec)
    x = torch.tensor([[1, 4], [4, 0]])
    g = grad(lambda p: fm.apply(p, x).square().sum())(params)["weight"]
    assert g.layout == torch.strided
    module = transforms.to_module(params)
    assert isinstance(module, torch.nn.Embedding) and module.sparse
    module(x).square().sum().backward()
    assert module.weight.grad.is_sparse
    torch.testing.assert_close(g, module.weight.grad.to_dense(), atol=1e-6, rtol=1e-6)


# Configs, files and the torch.nn round trip: tests/test_contract.py.


def test_from_a_torch_module_with_its_own_init():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Embedding(8, 3, padding_idx=-1, max_norm=1)
    params, _ = transforms.from_module(module)
    assert params.spec == nn.Embedding(8, 3, padding_idx=7, max_norm=1.0)
    x = indices((4,), 8)
    torch.testing.assert_close(fm.apply(params, x), module(x), **RENORM)


def test_shapes_and_summary():
    spec = nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(out_features=2))
    assert fm.shapes(spec, (5,)) == {"": (2,), "0": (5, 6), "1": (30,), "2": (2,)}
    rows = fm.summary(spec, (5,)).rows
    assert [(r.path, r.type, r.params) for r in rows][:2] == [
        ("", "Sequential", 20 * 6 + 30 * 2 + 2),
        ("0", "Embedding", 120),
    ]
    assert fm.shapes(nn.Embedding(4, 3), (2, 3)) == {"": (2, 3, 3)}


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (lambda: nn.Embedding(0, 3), ValueError, "Embedding: num_embeddings must be positive"),
        (lambda: nn.Embedding(4, 3.0), TypeError, "Embedding: embedding_dim must be an int"),
        (lambda: nn.Embedding(4, 3, padding_idx=4), ValueError, r"padding_idx .*\[-4, 4\)"),
        (lambda: nn.Embedding(4, 3, padding_idx=True), TypeError, "padding_idx must be an int"),
        (lambda: nn.Embedding(4, 3, max_norm=-1.0), ValueError, "max_norm must be in"),
        (lambda: nn.Embedding(4, 3, max_norm=float("inf")), ValueError, "finite"),
        (lambda: nn.Embedding(4, 3, norm_type=0), ValueError, "norm_type must be in"),
        (lambda: nn.Embedding(4, 3, sparse=1), TypeError, "sparse must be a bool"),
    ],
)
def test_construction_checks(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_forward_checks_name_the_layer():
    params = fm.init(fm.key(0), nn.Sequential(nn.Embedding(5, 2)))
    with pytest.raises(TypeError, match=r"layer '0' \(Embedding\): expected integer indices"):
        fm.apply(params, torch.zeros(3))
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding\).*\[0, 5\).*\[-1, 5\]"):
        fm.apply(params, torch.tensor([-1, 5, 2]))
    with pytest.raises(TypeError, match="expected a tensor of indices"):
        fm.apply(params, [1, 2])
