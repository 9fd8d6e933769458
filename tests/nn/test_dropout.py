"""Dropout: keyed masks, torch's scaling, purity and per-sample behaviour under vmap."""

import math

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels._spec import name_hash
from funcmodels.random._samplers import keep_mask


def dropout(p, x, key, train=True):
    return fm.apply(fm.init(fm.key(0), fm.nn.Dropout(p)), x, key=key, train=train)


def test_eval_is_identity_and_train_needs_a_key():
    x = fm.random.normal(fm.key(1), (3, 4))
    assert torch.equal(dropout(0.5, x, None, train=False), x)
    with pytest.raises(ValueError, match=r"layer '<root>' \(Dropout\): needs a PRNG key"):
        dropout(0.5, x, None)


def test_kept_units_are_scaled_and_the_rest_zero():
    x = fm.random.normal(fm.key(1), (50, 40)) + 3.0  # no exact zeros
    y = dropout(0.3, x, fm.key(2))
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.7, atol=0, rtol=1e-6)


def test_same_key_same_mask_different_key_different_mask():
    x = torch.ones(1000)
    a, b, c = (dropout(0.5, x, k) for k in (fm.key(3), fm.key(3), fm.key(4)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_and_mean_within_binomial_bounds(p):
    n = 200_000
    y = dropout(p, torch.ones(n), fm.key(5))
    kept = (y != 0).sum().item()
    # Kept count ~ Binomial(n, 1 - p); 6 standard deviations fail once in ~5e8 runs.
    sd = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 6 * sd
    # E[y] = 1: the mean is kept / (n (1 - p)), within the same bound scaled.
    assert abs(y.mean().item() - 1.0) < 6 * sd / (n * (1 - p))


def test_p_zero_and_one_and_bad_p():
    x = fm.random.normal(fm.key(1), (3, 4))
    assert torch.equal(dropout(0.0, x, None), x)
    assert torch.equal(dropout(1.0, x, None), torch.zeros_like(x))
    assert torch.isnan(dropout(1.0, torch.tensor([math.nan]), None)).all()  # as torch
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0.0, 1.0\], got 1.5"):
        fm.nn.Dropout(1.5)
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        fm.nn.Dropout(-0.1)
    with pytest.raises(TypeError, match="Dropout: p must be a number"):
        fm.nn.Dropout("0.5")


def test_global_rng_and_input_untouched():
    x = fm.random.normal(fm.key(1), (8, 8))
    x_before = x.clone()
    rng = torch.get_rng_state()
    dropout(0.5, x, fm.key(2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before)


def test_each_layer_draws_from_its_own_folded_key():
    spec = fm.nn.Sequential(fm.nn.Dropout(0.5), fm.nn.Dropout(0.5))
    x = fm.random.normal(fm.key(1), (4, 100))
    y = fm.apply(fm.init(fm.key(0), spec), x, key=fm.key(2), train=True)
    m0, m1 = (
        keep_mask(fm.fold_in(fm.key(2), name_hash(name)), 0.5, x.shape) for name in ("0", "1")
    )
    assert not torch.equal(m0, m1)
    torch.testing.assert_close(y, x * m0 * 2 * m1 * 2, atol=0, rtol=1e-6)


def test_vmap_over_keys_gives_each_sample_its_own_mask():
    spec = fm.nn.Dropout(0.5)
    params = fm.init(fm.key(0), spec)
    keys = fm.split(fm.key(7), 4)
    x = fm.random.normal(fm.key(1), (4, 64))
    out = vmap(lambda xi, k: fm.apply(params, xi, key=k, train=True))(x, keys)
    masks = out != 0
    for i in range(4):
        assert torch.equal(out[i], fm.apply(params, x[i], key=keys[i], train=True))
        for j in range(i):
            assert not torch.equal(masks[i], masks[j])
    # One shared key: every sample gets the same mask, exactly as a loop with that key.
    shared = vmap(lambda xi: fm.apply(params, xi, key=keys[0], train=True))(x)
    assert torch.equal(shared != 0, (out[0] != 0).expand(4, -1))


def _per_sample_loss(spec):
    def loss(p, xi, yi, k):
        return ((fm.apply(p, xi, key=k, train=True) - yi) ** 2).sum()

    return loss


@pytest.mark.parametrize("per_sample_keys", [False, True])
def test_per_sample_grads_with_dropout_equal_the_loop(per_sample_keys):
    spec = fm.nn.Sequential(fm.nn.Linear(4, 16), fm.nn.Dropout(0.5), fm.nn.Linear(16, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 4))
    y = fm.random.normal(fm.key(2), (5, 2))
    keys = fm.split(fm.key(3), 5) if per_sample_keys else fm.key(3).expand(5, 2)
    loss = _per_sample_loss(spec)
    got = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, y, keys)
    for i in range(5):
        want = grad(loss)(params, x[i], y[i], keys[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-6, rtol=1e-5, msg=name)
    if per_sample_keys:
        # Different masks give different first-layer gradients for identical samples.
        same = vmap(grad(loss), in_dims=(None, None, None, 0))(params, x[0], y[0], keys)
        assert not torch.equal(same["0.weight"][0], same["0.weight"][1])


# -- known answers -----------------------------------------------------------------------
# Masks drawn with the current key streams, pasted in as numbers: a change of how a layer's
# path is folded into its key must be a deliberate change of these lists.


def _mask(spec, n: int = 16, seed: int = 1) -> list[int]:
    """Which of ``n`` ones the spec's dropout keeps in train mode, under ``fm.key(seed)``."""
    y = fm.apply(fm.init(fm.key(0), spec), torch.ones(1, n), key=fm.key(seed), train=True)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    return (y[0] != 0).int().tolist()


def _at_path(path: str, p: float = 0.5) -> fm.Spec:
    """A Dropout at ``path`` (dot-separated names; digits are positions in a Sequential)."""
    spec = fm.nn.Dropout(p)
    for name in reversed(path.split(".")):
        if name.isdigit():
            spec = fm.nn.Sequential(*[fm.nn.Identity()] * int(name), spec)
        else:
            spec = fm.nn.Sequential({name: spec})
    return spec


def test_known_mask_at_depth_one():
    spec = fm.nn.Sequential(fm.nn.Identity(), fm.nn.Dropout(0.5))
    assert spec == _at_path("1")
    assert _mask(spec) == [1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1]


def test_known_mask_at_depth_three():
    spec = fm.nn.Sequential(
        {"a": fm.nn.Sequential({"b": fm.nn.Sequential({"c": fm.nn.Dropout(0.5)})})}
    )
    assert spec == _at_path("a.b.c")
    assert _mask(spec) == [0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0]


def test_nested_dropouts_at_different_paths_draw_different_masks():
    # The same leaf name under different parents ('0.2' and '1.2', 'a.c' and 'b.c'), the
    # same parent with different leaves, one name at different depths: every path has a
    # stream of its own. 256 units make an accidental match impossible (2**-256).
    paths = ["2", "0.2", "1.2", "a.c", "b.c", "a.d", "c", "a.b.c", "b.a.c", "a.0.2"]
    masks = {path: tuple(_mask(_at_path(path), n=256)) for path in paths}
    for i, a in enumerate(paths):
        for b in paths[:i]:
            assert masks[a] != masks[b], (a, b)


def test_two_nested_dropouts_in_one_model_multiply_their_own_masks():
    # Sequential(Sequential(Id, Id, Dropout), Sequential(Id, Id, Dropout)): the dropouts at
    # '0.2' and '1.2' share their leaf name and position, yet each applies its own mask,
    # the one it draws when it is alone at that path.
    leaf = fm.nn.Sequential(fm.nn.Identity(), fm.nn.Identity(), fm.nn.Dropout(0.5))
    spec = fm.nn.Sequential(leaf, leaf)
    y = fm.apply(fm.init(fm.key(0), spec), torch.ones(1, 256), key=fm.key(1), train=True)
    m0, m1 = (torch.tensor(_mask(_at_path(p), n=256)) for p in ("0.2", "1.2"))
    assert not torch.equal(m0, m1)
    assert torch.equal(y[0], (m0 * m1).float() * 4.0)
