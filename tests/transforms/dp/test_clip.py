"""transforms.dp.clipped_grad: the clipped, summed gradient equals materialising every
example's gradient with ``vmap(grad)``, clipping and summing, for the layers without a
closed form and shared weights too; per-layer clipping, the plan, and refusals.

Tolerance: float64 throughout, ``rtol=1e-9`` (see ``reference.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import funcmodels as fm
import transforms
from tests.transforms.dp.reference import TOL, check, classify, labels, normal, reference
from transforms import dp

nn = fm.nn


# -- layers without a closed form, and weight sharing ----------------------------------------


def test_layers_without_a_closed_form_fall_back_to_their_own_per_example_gradients():
    transformer = nn.Sequential(
        nn.Linear(4, 8),
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        nn.Flatten(),
        nn.Linear(8 * 5, 3),
    )
    check(transformer, normal(0, (4, 5, 4)), labels(0, 4, 3))

    def last_state(p, x, y):
        out, _ = fm.apply(p, x)
        return F.cross_entropy(out[:, -1, :3], y, reduction="none")

    check(
        nn.Sequential(nn.LSTM(4, 6, batch_first=True)),
        normal(1, (3, 5, 4)),
        labels(1, 3, 3),
        loss=last_state,
    )

    def mean_member(p, x, y):
        return F.cross_entropy(fm.apply(p, x).mean(0), y, reduction="none")

    check(nn.Stack(nn.Linear(4, 3), 2), normal(2, (5, 4)), labels(2, 5, 3), loss=mean_member)
    check(
        nn.Sequential(nn.Linear(4, 6), nn.PReLU(), nn.Linear(6, 3)),
        normal(3, (5, 4)),
        labels(3, 5, 3),
    )


def test_a_layer_used_twice_is_exact():
    shared = nn.Linear(4, 4)

    def tied(p, x, y):
        inner = fm.Params(shared, {"weight": p["0.weight"], "bias": p["0.bias"]})
        h = fm.apply(inner, torch.tanh(fm.apply(inner, x)))
        return F.cross_entropy(fm.apply(p, h)[:, :3], y, reduction="none")

    spec = nn.Sequential(shared)
    check(spec, normal(3, (5, 4)), labels(3, 5, 3), loss=tied)


def per_layer_reference(loss, params, x, y, bounds, group_of):
    """Materialise, clip each group of params to its bound, sum."""

    def one(p, xi, yi):
        return loss(p, xi.unsqueeze(0), yi.unsqueeze(0))[0]

    flat = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y).flat()
    b = x.shape[0]
    factors = {}
    for g, bound in bounds.items():
        members = [v.reshape(b, -1) for n, v in flat.items() if group_of(n) == g]
        factors[g] = (bound / (torch.cat(members, 1).norm(dim=1) + 1e-6)).clamp(max=1.0)
    return {
        n: (v * factors[group_of(n)].reshape(-1, *[1] * (v.dim() - 1))).sum(0)
        for n, v in flat.items()
    }


@pytest.mark.parametrize(
    "bounds, group_of",
    [
        # one bound per layer; the PReLU in the middle has no closed form
        ({"0": 0.05, "1": 0.01, "2": 0.1}, lambda n: n.split(".")[0]),
        # a catch-all: the first and last layers clipped together
        ({"": 0.2, "1": 0.01}, lambda n: "1" if n.startswith("1.") else ""),
        # a group that splits a layer: its closed form gives way to per-example gradients
        ({"0.weight": 0.05, "": 0.1}, lambda n: "0.weight" if n == "0.weight" else ""),
    ],
    ids=["per-layer", "catch-all", "split-layer"],
)
def test_per_layer_clipping_equals_clipping_each_group(bounds, group_of):
    spec = nn.Sequential(nn.Linear(4, 6), nn.PReLU(), nn.Linear(6, 3))
    params = fm.init(fm.key(1), spec, dtype=torch.float64)
    x, y = 5 * normal(4, (7, 4)), labels(4, 7, 3)
    got, norms = dp.clipped_grad(classify, bounds)(params, x, y)
    want = per_layer_reference(classify, params, x, y, bounds, group_of)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, **TOL, msg=name)
    torch.testing.assert_close(norms, reference(classify, params, x, y)[1], **TOL)
    # every group was clipped for some example (the bounds are small): not the global rule
    glob, _ = dp.clipped_grad(classify, dp.total_norm(bounds))(params, x, y)
    assert not torch.allclose(glob["2.weight"], got["2.weight"])


def test_per_layer_bounds_set_the_noise_and_are_checked():
    bounds = {"0": 3.0, "1": 4.0}
    assert dp.total_norm(bounds) == 5.0 and dp.total_norm(2.5) == 2.5
    zero = fm.tree.map(torch.zeros_like, fm.init(fm.key(0), nn.Linear(400, 300)))
    noise = dp.add_noise(zero, fm.key(1), noise_multiplier=0.5, max_norm=bounds)["weight"]
    assert abs(noise.std().item() - 2.5) < 0.02
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    x, y = torch.randn(4, 3), labels(0, 4, 2)
    with pytest.raises(ValueError, match=r"the param '1.weight' is in no clipping group"):
        dp.clipped_grad(classify, {"0": 1.0})(params, x, y)
    with pytest.raises(ValueError, match=r"max_norm names \['2'\], which hold no params"):
        dp.clipped_grad(classify, {"": 1.0, "2": 1.0})(params, x, y)
    with pytest.raises(ValueError, match=r"max_norm\['0'\]: max_norm must be a positive"):
        dp.clipped_grad(classify, {"0": -1.0})
    with pytest.raises(ValueError, match="empty mapping"):
        dp.clipped_grad(classify, {})
    with pytest.raises(TypeError, match="keys must be layer paths"):
        dp.clipped_grad(classify, {0: 1.0})
    with pytest.raises(TypeError, match="noise_multiplier must be a number"):
        dp.add_noise(zero, fm.key(1), noise_multiplier="1", max_norm=1.0)


# -- what the transform returns and refuses --------------------------------------------------


def test_every_example_is_clipped_to_the_bound():
    spec = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    params = fm.init(fm.key(0), spec, dtype=torch.float64)
    x, y = 50 * normal(0, (6, 5)), labels(0, 6, 3)
    clipped = dp.clipped_grad(classify, max_norm=0.1)
    grads, norms = clipped(params, x, y)
    assert bool((norms > 0.1).all())  # every example clipped: its contribution has norm 0.1
    for i in range(6):
        g_i, _ = clipped(params, x[i : i + 1], y[i : i + 1])
        total = torch.cat([v.reshape(-1) for v in g_i.flat().values()]).norm()
        # the bound up to the 1e-6 the clip factor adds to the norm (as Opacus)
        torch.testing.assert_close(total, torch.tensor(0.1, dtype=torch.float64), rtol=1e-5, atol=0)


def test_inputs_are_not_modified_and_the_plan_follows_the_state():
    spec = nn.Sequential(transforms.SparseLinear(6, 4, sparsity=0.5), nn.ReLU(), nn.Linear(4, 3))
    params, state = fm.init_with_state(fm.key(0), spec, dtype=torch.float64)
    x, y = normal(0, (5, 6)), labels(0, 5, 3)
    before = {k: v.clone() for k, v in params.flat().items()}
    clipped = dp.clipped_grad(classify)
    first, _ = clipped(params, x, y, state=state)
    _, state2 = transforms.sparsify(params, state, 0.8, include=["0"])
    second, _ = clipped(params, x, y, state=state2)  # the new mask is used
    assert bool((second["0.weight"][~state2["0.mask"]] == 0).all())
    assert not torch.equal(first["0.weight"], second["0.weight"])
    assert all(torch.equal(params[k], v) for k, v in before.items())


def test_batchnorm_in_train_mode_is_refused_with_the_fix():
    spec = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 9, 3))
    params, state = fm.init_with_state(fm.key(0), spec)

    def train_loss(p, x, y, state):
        out = fm.run(p, x, state=state, train=True).out
        return F.cross_entropy(out, y, reduction="none")

    x, y = torch.randn(4, 1, 5, 5), labels(0, 4, 3)
    with pytest.raises(
        ValueError,
        match=r"layer '1' \(BatchNorm2d\): computes statistics over the batch.*GroupNorm",
    ):
        dp.clipped_grad(train_loss)(params, x, y, state=state)
    # eval mode: each example's own affine map, a layer without a closed form
    check(spec, x.double(), y)


def test_bad_arguments():
    params = fm.init(fm.key(0), nn.Linear(3, 2))
    x, y = torch.randn(4, 3), labels(0, 4, 2)
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_norm must be a positive finite number"):
            dp.clipped_grad(classify, bad)
    with pytest.raises(ValueError, match=r"max_norm\['0'\]: max_norm must be a positive finite"):
        dp.clipped_grad(classify, {"0": float("nan")})
    with pytest.raises(ValueError, match=r"one loss per example, shape \(B,\)"):
        dp.clipped_grad(lambda p, x, y: classify(p, x, y).mean())(params, x, y)
    with pytest.raises(ValueError, match="same number of examples"):
        dp.clipped_grad(classify)(params, x, y[:3])
    with pytest.raises(TypeError, match="expected Params"):
        dp.clipped_grad(classify)(params.flat(), x, y)
