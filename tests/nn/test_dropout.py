"""Dropout, Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout: keyed masks, torch's
scaling and formulas, purity and per-sample behaviour under vmap.

Masks come from keys here and from torch's global generator there, so train mode is
compared in distribution: the kept fraction within binomial bounds (6 standard
deviations), whole channels kept or dropped together, and, where both sides keep (or
both drop) an entry, the value exactly torch's. Eval mode and ``p`` in {0, 1} are exact.
Per-sample gradients ``atol=1e-6, rtol=1e-5`` against a loop with the same keys. Known
answers pin the masks of given keys. Configs, files, the torch.nn round trip and compile:
tests/test_contract.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from funcmodels._spec import name_hash
from funcmodels.random._samplers import keep_mask
from tests.helpers import randomised, torch_twin_of
from tests.layer_examples import DROPOUTS


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


nn = fm.nn


EXACT = {"atol": 0.0, "rtol": 0.0}


# (spec type, torch type, batched input shape, mask shape of that input)
LAYERS = [
    (nn.Dropout1d, torch.nn.Dropout1d, (40, 30, 3), (40, 30, 1)),
    (nn.Dropout2d, torch.nn.Dropout2d, (40, 30, 2, 2), (40, 30, 1, 1)),
    (nn.Dropout3d, torch.nn.Dropout3d, (30, 20, 1, 2, 2), (30, 20, 1, 1, 1)),
    (nn.AlphaDropout, torch.nn.AlphaDropout, (60, 50), (60, 50)),
    (nn.FeatureAlphaDropout, torch.nn.FeatureAlphaDropout, (50, 40, 3), (50, 40, 1)),
]


IDS = [ours.__name__ for ours, *_ in LAYERS]


def train(spec, x, key):
    return fm.apply(fm.init(fm.key(0), spec), x, key=key, train=True)


def torch_train(module, x, seed=0):
    """torch's train-mode output with a seeded global generator, restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return module.train()(x)


def dropped(spec, y):
    """Where ``y`` holds a dropped entry: 0, or the alpha dropouts' one dropped value."""
    if isinstance(spec, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return y == y.min()  # kept entries of a positive input are above it
    return y == 0


@pytest.mark.parametrize("ours, theirs, shape, mask_shape", LAYERS, ids=IDS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_train_mode_matches_torch_in_distribution_and_values(ours, theirs, shape, mask_shape, p):
    spec, module = ours(p), theirs(p)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros
    before = x.clone()
    rng = torch.get_rng_state()
    y = train(spec, x, fm.key(2))
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(x, before)
    z = torch_train(module, x)
    ours_drop, theirs_drop = dropped(spec, y), dropped(spec, z)
    # whole channels (one mask entry per element of mask_shape)
    reduce = tuple(i for i, n in enumerate(mask_shape) if n == 1)
    mask = ours_drop.all(dim=reduce, keepdim=True) if reduce else ours_drop
    assert torch.equal(ours_drop, mask.expand(shape))
    # the dropped fraction of the mask's entries: Binomial(n, p), within 6 sd
    n = math.prod(mask_shape)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(mask.sum().item() - n * p) < 6 * sd
    # values: exactly torch's wherever both keep, and wherever both drop
    both_keep, both_drop = ~ours_drop & ~theirs_drop, ours_drop & theirs_drop
    assert both_keep.any() and both_drop.any()
    assert torch.equal(y[both_keep], z[both_keep])
    assert torch.equal(y[both_drop], z[both_drop])


@pytest.mark.parametrize("ours, theirs, shape, mask_shape", LAYERS, ids=IDS)
def test_eval_p0_p1_and_empty_batches_are_exact(ours, theirs, shape, mask_shape):
    x = fm.random.normal(fm.key(1), shape)
    params = fm.init(fm.key(0), ours(0.5))
    assert torch.equal(fm.apply(params, x), x)  # eval: identity, no key
    with pytest.raises(ValueError, match=rf"layer '<root>' \({ours.__name__}\): needs a PRNG"):
        fm.apply(params, x, train=True)
    for p in (0.0, 1.0):  # deterministic: no key
        got = fm.apply(fm.init(fm.key(0), ours(p)), x, train=True)
        torch.testing.assert_close(got, theirs(p).train()(x), **EXACT)
    nan = torch.full(shape, math.nan)
    assert torch.isnan(fm.apply(fm.init(fm.key(0), ours(1.0)), nan, train=True)).all()  # as torch
    empty = x[:0]
    assert train(ours(0.5), empty, fm.key(1)).shape == torch_train(theirs(0.5), empty).shape


def test_alpha_dropout_keeps_zero_mean_and_unit_variance():
    # The affine correction: for inputs of mean 0 and variance 1 the output has both too.
    # n = 400k samples: the mean within 6 / sqrt(n) ~ 0.01, the variance within 0.03
    # (the output's fourth moment is below 5 for these p).
    x = fm.random.normal(fm.key(1), (400_000,))
    for p in (0.1, 0.5):
        y = train(nn.AlphaDropout(p), x, fm.key(3))
        assert abs(y.mean().item()) < 0.01
        assert abs(y.var().item() - 1.0) < 0.03


def test_unbatched_inputs_follow_torchs_rules():
    key = fm.key(5)
    # Dropout1d (C, L) and Dropout3d (C, D, H, W): one example, channels dropped whole
    for spec, shape in [(nn.Dropout1d(0.5), (64, 4)), (nn.Dropout3d(0.5), (64, 2, 1, 2))]:
        x = torch.ones(shape)
        y = train(spec, x, key)
        assert torch.equal(y, train(spec, x[None], key)[0])
        flat = y.reshape(shape[0], -1)
        assert torch.equal(flat, flat[:, :1].expand_as(flat))  # constant per channel
        assert 0 < (flat[:, 0] == 0).sum() < shape[0]
        with torch.random.fork_rng():  # torch drops whole channels of (C, *) too
            z = torch_twin_of(spec).train()(x).reshape(shape[0], -1)
        assert torch.equal(z, z[:, :1].expand_as(z))
    # Dropout2d on a 3-d input: torch reads it as (N, C, L) and so do we, one mask entry
    # per element of the first two dims
    x = torch.ones(8, 16, 5)
    y = train(nn.Dropout2d(0.5), x, key)
    with torch.random.fork_rng(), pytest.warns(UserWarning, match="interpreted as shape"):
        z = torch.nn.Dropout2d(0.5).train()(x)
    for out in (y, z):
        assert torch.equal(out, out[..., :1].expand_as(out))
        assert not torch.equal(out[:, :, 0], out[:, :1, 0].expand(8, 16))  # not per row
    # FeatureAlphaDropout: the first two dims of whatever it sees, as torch
    y = train(nn.FeatureAlphaDropout(0.5), torch.ones(8, 16, 5), key)
    assert torch.equal(y, y[..., :1].expand_as(y))


def test_same_key_same_mask_and_each_sample_its_own_under_vmap():
    spec = nn.Dropout2d(0.5)
    x = fm.random.normal(fm.key(1), (4, 32, 3, 3))
    a, b, c = (train(spec, x, k) for k in (fm.key(3), fm.key(3), fm.key(4)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Sequential(Conv2d, Dropout2d) batches one example, so under vmap each (C, H, W)
    # example drops whole channels with its own key
    model = nn.Sequential(nn.Conv2d(32, 32, 1), spec)
    mp = fm.init(fm.key(0), model)
    keys = fm.split(fm.key(7), 4)
    out = vmap(lambda xi, k: fm.apply(mp, xi, key=k, train=True))(x, keys)
    for i in range(4):
        single = fm.apply(mp, x[i], key=keys[i], train=True)
        assert torch.equal(out[i] == 0, single == 0)
        torch.testing.assert_close(out[i], single, atol=1e-6, rtol=1e-5)
        gone = (out[i] == 0).all(dim=(1, 2))
        assert torch.equal(out[i] == 0, gone[:, None, None].expand(32, 3, 3))
    assert not torch.equal(out[0] == 0, out[1] == 0)


# (the layers before the dropout, the dropout, one batch's shape)
PER_SAMPLE = [
    ([nn.Conv1d(2, 8, 3)], nn.Dropout1d(0.5), (5, 2, 5)),
    ([nn.Conv2d(2, 8, 3)], nn.Dropout2d(0.5), (5, 2, 4, 4)),
    ([], nn.Dropout3d(0.5), (5, 3, 2, 2, 2)),
    ([nn.Conv2d(2, 3, 1), nn.SELU()], nn.AlphaDropout(0.3), (5, 2, 4, 4)),
    ([nn.Conv2d(2, 8, 3)], nn.FeatureAlphaDropout(0.3), (5, 2, 4, 4)),
]


@pytest.mark.parametrize("before, drop, shape", PER_SAMPLE, ids=IDS)
def test_per_sample_grads_with_per_sample_keys_equal_the_loop(before, drop, shape):
    spec = nn.Sequential(*before, drop, nn.Flatten(), nn.Linear(None, 2))
    params, _ = randomised(spec.resolve(shape[1:]))
    x = fm.random.normal(fm.key(1), shape)
    y = fm.random.normal(fm.key(2), (shape[0], 2))
    keys = fm.split(fm.key(3), shape[0])

    def loss(p, xi, yi, k):
        return ((fm.apply(p, xi, key=k, train=True) - yi) ** 2).sum()

    got = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, y, keys)
    for i in range(shape[0]):
        want = grad(loss)(params, x[i], y[i], keys[i])
        for name, g in want.flat().items():
            torch.testing.assert_close(got[name][i], g, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "spec, shape, msg",
    [
        (nn.Dropout1d(), (2, 3, 4, 5), r"\(Dropout1d\): expected an input of rank 2 .* or 3"),
        (nn.Dropout3d(), (2, 3, 4), r"\(Dropout3d\): expected an input of rank 4 .* or 5"),
        (nn.Dropout2d(), (5,), r"\(Dropout2d\): expected input \(N, C, \*\) with 2\+ dims"),
        (nn.FeatureAlphaDropout(), (5,), r"\(FeatureAlphaDropout\): expected input \(N, C, \*\)"),
    ],
)
def test_wrong_ranks_name_the_layer(spec, shape, msg):
    with pytest.raises(ValueError, match=r"layer '<root>' " + msg):
        fm.apply(fm.init(fm.key(0), spec), torch.ones(shape), key=fm.key(0), train=True)
    inner = fm.init(fm.key(0), nn.Sequential(nn.Linear(shape[-1], shape[-1]), spec))
    if isinstance(spec, (nn.Dropout1d, nn.Dropout3d)):  # the layer's own check
        with pytest.raises(ValueError, match=rf"layer '1' \({type(spec).__name__}\): expected"):
            fm.apply(inner, torch.ones(shape), key=fm.key(0), train=True)


def test_invalid_p_and_shapes():
    for cls in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        name = cls.__name__
        with pytest.raises(ValueError, match=rf"{name}: p must be in \[0.0, 1.0\], got 1.5"):
            cls(1.5)
        with pytest.raises(TypeError, match=rf"{name}: p must be a number"):
            cls("0.5")
        assert cls(1).p == 1.0 and isinstance(cls(1).p, float)
    assert fm.shapes(nn.Dropout1d(), (3, 4)) == {"": (3, 4)}
    with pytest.raises(ValueError, match=r"\(Dropout3d\): expected one example of shape"):
        fm.shapes(nn.Dropout3d(), (3, 4))
    with pytest.raises(ValueError, match=r"\(Dropout2d\): expected one example with 1\+ dims"):
        fm.shapes(nn.Dropout2d(), ())


MODEL = DROPOUTS


def test_torchs_inplace_flags_and_the_summary():
    # configs, files and the torch.nn round trip of MODEL: tests/test_contract.py
    # torch's inplace flag: accepted by configs, read from modules, meaning nothing here
    types = [ours for ours, *_ in LAYERS]
    config = [{"type": t.__name__.lower(), "params": {"p": 0.25, "inplace": True}} for t in types]
    specs = [fm.from_config(entry) for entry in config]
    assert specs == [t(0.25) for t in types]
    for spec, (_, theirs, *_) in zip(specs, LAYERS, strict=True):
        assert transforms.from_module(theirs(0.25, inplace=True))[0].spec == spec
    assert fm.summary(MODEL, (2, 5, 5)).rows[0].out_shape == (2,)


MODEL3D = nn.Sequential(nn.Conv3d(2, 4, 2), nn.Dropout3d(0.3), nn.Flatten(), nn.Linear(32, 2))


@pytest.mark.parametrize("spec", [nn.Dropout3d(0.4), MODEL3D], ids=["alone", "in_a_sequential"])
def test_dropout3d_to_module_is_torchs_layer_and_back(spec):
    params, _ = randomised(spec)
    module = transforms.to_module(params)
    layer = module if isinstance(spec, nn.Dropout3d) else module[1]
    assert type(layer) is torch.nn.Dropout3d and not module.training
    assert layer.p == (0.4 if layer is module else 0.3)
    assert list(module.state_dict()) == list(fm.to_state_dict(params))
    for name, t in fm.to_state_dict(params).items():
        assert torch.equal(module.state_dict()[name], t), name
    x = fm.random.normal(fm.key(1), (3, 2, 3, 3, 3))
    with torch.no_grad():
        assert torch.equal(layer(x), x)  # eval: identity, as ours
        torch.testing.assert_close(module(x), fm.apply(params, x), **EXACT)
        # train mode: torch's own layer, dropping whole channels from its generator
        with torch.random.fork_rng():
            torch.manual_seed(0)
            y = layer.train()(torch.ones(8, 16, 2, 2, 2))
        flat = y.reshape(8, 16, -1)
        assert torch.equal(flat, flat[..., :1].expand_as(flat))
        assert (flat == 0).any() and (flat != 0).any()
    back, _ = transforms.from_module(module)
    assert back.spec == spec
    for name, t in fm.to_state_dict(params).items():
        assert torch.equal(back.flat()[name], t), name
