"""transforms.dp.private_step: one DP-SGD step equals the recipe assembled by hand from
clipped_grad, add_noise, the division by the expected batch size and the optimiser's
update (bitwise: the same ops in the same order); its noise has the stated mean and std
and is a pure function of the key; an empty Poisson batch is a step of noise alone."""

from __future__ import annotations

import math

import pytest
import torch

import funcmodels as fm
from tests.transforms.dp.reference import classify, labels, normal
from transforms import dp

nn = fm.nn
SPEC = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def by_hand(key, params, opt, opt_state, x, y, *, max_norm, noise_multiplier, expected):
    """The DP-SGD step written out, as the private_step docstring states it."""
    grads, norms = dp.clipped_grad(classify, max_norm)(params, x, y)
    noisy = dp.add_noise(grads, key, noise_multiplier=noise_multiplier, max_norm=max_norm)
    mean = fm.tree.map(lambda g: g / expected, noisy)
    updates, opt_state = opt.update(mean, opt_state, params)
    return fm.optim.apply_updates(params, updates), opt_state, norms


def assert_same(got: fm.Params, want: fm.Params) -> None:
    assert got.spec == want.spec
    for name, w in want.flat().items():
        assert torch.equal(got[name], w), name


@pytest.mark.parametrize("max_norm", [0.5, {"0": 0.3, "2": 0.4}], ids=["one", "per-layer"])
def test_steps_equal_the_recipe_by_hand_bitwise(max_norm):
    params = fm.init(fm.key(0), SPEC, dtype=torch.float64)
    opt = fm.optim.adamw(1e-2, weight_decay=1e-3)
    settings = dict(max_norm=max_norm, noise_multiplier=1.1, expected_batch_size=5.0)
    step = dp.private_step(classify, opt, **settings)
    ours, ours_state = params, opt.init(params)
    theirs, theirs_state = params, opt.init(params)
    for i, b in enumerate([5, 3, 7, 0, 4]):  # Poisson batch sizes vary; one is empty
        key = fm.fold_in(fm.key(9), i)
        x, y = normal(i, (b, 4)), labels(i, b, 3)
        ours, ours_state, info = step(key, ours, ours_state, x, y)
        theirs, theirs_state, norms = by_hand(
            key, theirs, opt, theirs_state, x, y,
            max_norm=max_norm, noise_multiplier=1.1, expected=5.0,
        )  # fmt: skip
        assert_same(ours, theirs)
        assert info.batch_size == b and info.norms.shape == (b,)
        assert torch.equal(info.norms, norms)
    ours_leaves, theirs_leaves = fm.tree.leaves(ours_state), fm.tree.leaves(theirs_state)
    assert len(ours_leaves) == len(theirs_leaves)
    for a, b in zip(ours_leaves, theirs_leaves, strict=True):
        assert torch.equal(a, b)


def test_the_noise_has_the_stated_mean_and_std():
    """An empty batch and SGD at rate 1: the params move by the noise divided by the
    expected batch size, std ``noise_multiplier * total bound / expected`` per coordinate.
    400 keys x 51 coordinates: the sample std's relative standard error is 0.5%, the bound
    allows 5% (10 standard errors); the mean's bound is 6 standard errors of the mean."""
    params = fm.init(fm.key(0), SPEC)
    bounds = {"0": 0.3, "2": 0.4}  # total bound 0.5
    sgd = fm.optim.sgd(1.0)
    step = dp.private_step(
        classify, sgd, max_norm=bounds, noise_multiplier=2.0, expected_batch_size=4.0
    )
    x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    moves = []
    for i in range(400):
        new, _, info = step(fm.fold_in(fm.key(1), i), params, sgd.init(params), x, y)
        moves.append(torch.cat([(new[n] - p).reshape(-1) for n, p in params.flat().items()]))
    moves = torch.stack(moves).double()
    want = 2.0 * math.hypot(0.3, 0.4) / 4.0  # 0.25
    assert moves.numel() == 400 * 51
    assert abs(moves.std().item() / want - 1) < 0.05
    assert abs(moves.mean().item()) < 6 * want / math.sqrt(moves.numel())
    # every coordinate its own draw: neighbours uncorrelated, as are the two layers' noise
    first = moves[:, :24].reshape(-1)
    assert abs(torch.corrcoef(torch.stack([first[:-1], first[1:]]))[0, 1].item()) < 0.05


def test_the_noise_is_a_pure_function_of_the_key():
    params = fm.init(fm.key(0), SPEC)
    sgd = fm.optim.sgd(0.1)
    step = dp.private_step(
        classify, sgd, max_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0
    )
    x, y = normal(0, (4, 4)).float(), labels(0, 4, 3)
    torch.manual_seed(0)
    first, _, _ = step(fm.key(5), params, sgd.init(params), x, y)
    torch.manual_seed(1)  # the global generator plays no part
    torch.randn(100)
    again, _, _ = step(fm.key(5), params, sgd.init(params), x, y)
    assert_same(first, again)
    other, _, _ = step(fm.key(6), params, sgd.init(params), x, y)
    assert not torch.equal(other["0.weight"], first["0.weight"])
    without, _, _ = dp.private_step(
        classify, sgd, max_norm=1.0, noise_multiplier=0.0, expected_batch_size=4.0
    )(fm.key(5), params, sgd.init(params), x, y)
    assert not torch.equal(without["0.weight"], first["0.weight"])


def test_an_empty_batch_is_a_step_of_noise_alone():
    params = fm.init(fm.key(0), SPEC)
    x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    grads, norms = dp.clipped_grad(classify, 1.0)(params, x, y)
    assert type(grads) is fm.Params and grads.spec == params.spec and norms.shape == (0,)
    assert all(torch.equal(g, torch.zeros_like(params[n])) for n, g in grads.flat().items())
    sgd = fm.optim.sgd(1.0)
    quiet = dp.private_step(
        classify, sgd, max_norm=1.0, noise_multiplier=0.0, expected_batch_size=8.0
    )
    same, state, info = quiet(fm.key(1), params, sgd.init(params), x, y)
    assert_same(same, params)
    assert info.batch_size == 0 and info.norms.shape == (0,) and len(state) == len(sgd.init(params))


def tempered(p, x, y, *, temperature):
    return classify(p, x / temperature, y)


def test_keyword_arguments_reach_the_loss_shared_by_all_examples():
    params = fm.init(fm.key(0), SPEC, dtype=torch.float64)
    sgd = fm.optim.sgd(0.5)
    kw = dict(max_norm=1.0, noise_multiplier=0.7, expected_batch_size=6.0)
    x, y = normal(3, (6, 4)), labels(3, 6, 3)
    step = dp.private_step(tempered, sgd, **kw)
    got, _, info = step(fm.key(2), params, sgd.init(params), x, y, temperature=2.0)
    grads, norms = dp.clipped_grad(tempered, 1.0)(params, x, y, temperature=2.0)
    noisy = dp.add_noise(grads, fm.key(2), noise_multiplier=0.7, max_norm=1.0)
    updates, _ = sgd.update(fm.tree.map(lambda g: g / 6.0, noisy), sgd.init(params), params)
    assert_same(got, fm.optim.apply_updates(params, updates))
    assert torch.equal(info.norms, norms)
    other, _, _ = step(fm.key(2), params, sgd.init(params), x, y, temperature=0.5)
    assert not torch.equal(other["0.weight"], got["0.weight"])


def test_bad_arguments_are_refused_by_name():
    sgd = fm.optim.sgd(0.1)
    kw = dict(max_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0)
    with pytest.raises(TypeError, match="private_step: loss_fn must be callable"):
        dp.private_step(None, sgd, **kw)
    with pytest.raises(TypeError, match="private_step: optimizer must be an fm.optim"):
        dp.private_step(classify, torch.optim.SGD, **kw)
    with pytest.raises(ValueError, match="expected_batch_size must be a finite number > 0"):
        dp.private_step(classify, sgd, **{**kw, "expected_batch_size": 0})
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
        dp.private_step(classify, sgd, **{**kw, "noise_multiplier": -1.0})
    with pytest.raises(TypeError, match="noise_multiplier must be a number, got str"):
        dp.private_step(classify, sgd, **{**kw, "noise_multiplier": "1"})
    with pytest.raises(ValueError, match="max_norm"):
        dp.private_step(classify, sgd, **{**kw, "max_norm": -1.0})
    step = dp.private_step(classify, sgd, **kw)
    params = fm.init(fm.key(0), SPEC)
    with pytest.raises((TypeError, ValueError), match="private_step: key"):
        step(torch.zeros(3), params, (), normal(0, (2, 4)).float(), labels(0, 2, 3))
