"""transforms.dp's closed forms: for every layer with one (Linear, convolutions, Embedding,
the norms, SparseLinear) the clipped, summed gradient equals materialising every example's
gradient with ``vmap(grad)``, clipping and summing; and the closed form is what runs.

Tolerance: float64 throughout, ``rtol=1e-9`` (see ``reference.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import funcmodels as fm
import transforms
from tests.transforms.dp.reference import check, classify, labels, normal
from transforms.dp import _clip

nn = fm.nn


# -- every closed form, against the materialised reference ----------------------------------


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 6),
    tokens=st.sampled_from([None, 1, 3, 12]),
    width=st.integers(1, 9),
    bias=st.booleans(),
    max_norm=st.sampled_from([1e-3, 0.5, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_linear_layers(batch, tokens, width, bias, max_norm, seed):
    """One token, and sequences on both sides of the Gram-or-product choice."""
    lead = () if tokens is None else (tokens,)
    spec = nn.Sequential(
        nn.Linear(5, width, bias=bias),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(width * (tokens or 1), 3, bias=bias),
    )
    check(
        spec, normal(seed, (batch, *lead, 5)), labels(seed, batch, 3), max_norm=max_norm, seed=seed
    )


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    conv=st.sampled_from(
        [
            dict(kernel_size=3),
            dict(kernel_size=2, stride=2, bias=False),
            dict(kernel_size=3, padding=1, groups=2),
            dict(kernel_size=3, padding="same", dilation=2),
            dict(kernel_size=(2, 3), padding=(1, 0), padding_mode="reflect"),
        ]
    ),
    dims=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_convolutions(batch, conv, dims, seed):
    if dims != 2 and isinstance(conv["kernel_size"], tuple):
        conv = {**conv, "kernel_size": 2, "padding": 1}
    layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](4, 6, **conv)
    spec = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(None, 3))
    x = normal(seed, (batch, 4, *[7] * dims))
    params = fm.init(fm.key(0), spec, input_shape=x.shape[1:])  # resolves Linear(None, 3)
    check(params.spec, x, labels(seed, batch, 3), seed=seed)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_convolutions_on_small_maps_take_the_gram_form(dims, groups, monkeypatch):
    """Many channels, few output positions: the norms come from the Gram form of the
    unfolded input (no per-example gradient), the sum from one backward over the batch."""
    from transforms.dp import _rules

    seen = []
    real = _rules.ConvRule._gram
    monkeypatch.setattr(
        _rules.ConvRule, "_gram", lambda self, *a: seen.append(real(self, *a)) or seen[-1]
    )
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims](8, 16, 3, padding=1, stride=2, groups=groups)
    spec = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(None, 3))
    x = normal(5, (5, 8, *[4] * dims))
    params = fm.init(fm.key(0), spec, input_shape=x.shape[1:])
    check(params.spec, x, labels(5, 5, 3), max_norm=0.05)
    assert seen and all(p is not None for p in seen)  # the Gram route was taken


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embeddings_with_repeated_tokens(padding_idx):
    spec = nn.Sequential(
        nn.Embedding(6, 4, padding_idx=padding_idx), nn.Flatten(), nn.Linear(4 * 9, 3)
    )
    ids = torch.randint(0, 6, (5, 9), generator=torch.Generator().manual_seed(1))
    ids[0] = 2  # one example repeats one token throughout
    check(spec, ids, labels(2, 5, 3))


def test_norm_layers_on_sequences_and_images():
    seq = nn.Sequential(
        nn.Linear(4, 8), nn.LayerNorm(8), nn.RMSNorm(8), nn.Flatten(), nn.Linear(8 * 5, 3)
    )
    check(seq, normal(0, (6, 5, 4)), labels(0, 6, 3))
    img = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3)
    )
    check(img, normal(1, (4, 2, 6, 6)), labels(1, 4, 3))


def test_sparse_linear_layers_clip_masked_gradients():
    spec = nn.Sequential(transforms.SparseLinear(6, 8, sparsity=0.5), nn.ReLU(), nn.Linear(8, 3))
    check(spec, normal(0, (5, 6)), labels(0, 5, 3))


def test_closed_forms_are_used_where_a_layer_has_one():
    """No per-example weight gradient is formed for the layers with a closed form (a silent
    fall back to per-example gradients would still be exact, and slower)."""
    spec = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 3),
    )
    params = fm.init(fm.key(0), spec)
    x, y = torch.randn(3, 1, 8, 8), labels(0, 3, 3)
    calls = _clip._find_calls(classify, params, (x, y), {})
    assert [type(c.spec).__name__ for c in calls] == [
        "Conv2d", "GroupNorm", "Linear", "LayerNorm", "Linear"
    ]  # fmt: skip
    assert all(c.rule is not None for c in calls)
    embed = fm.init(fm.key(0), nn.Sequential(nn.Embedding(10, 4), nn.RMSNorm(4), nn.Linear(4, 3)))
    tokens = torch.randint(0, 10, (3, 5))

    def per_token(p, t, yy):
        out = fm.apply(p, t)
        each = F.cross_entropy(out.reshape(-1, 3), yy.reshape(-1), reduction="none")
        return each.reshape(t.shape[0], -1).mean(1)

    seq = _clip._find_calls(
        per_token,
        embed,
        (tokens, labels(0, 3 * 5, 3).reshape(3, 5)),
        {},
    )
    assert [type(c.spec).__name__ for c in seq] == ["Embedding", "RMSNorm", "Linear"]
    assert all(c.rule is not None for c in seq)
