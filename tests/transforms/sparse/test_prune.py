"""transforms.sparsify, polynomial_sparsity, compress and decompress on ``(params, state)``:
masks by magnitude per layer, globally and 2:4, re-pruning that never revives a weight, the
gradual schedule, and the inference form and back with the outputs kept.

Tolerances: outputs of the pruned and compressed models against the masked product within
torch's float32 defaults (``assert_close``) or ``atol=1e-6, rtol=1e-5``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import funcmodels as fm
import transforms

nn = fm.nn


def test_sparsify_layer_global_and_two_four():
    spec = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    params = fm.init(fm.key(0), spec)
    sp, ss = transforms.sparsify(params, sparsity=0.75)
    for name in ("0", "2", "4"):
        mask, w = ss[f"{name}.mask"], params[f"{name}.weight"].abs()
        assert int(mask.sum()) == mask.numel() - round(0.75 * mask.numel())
        assert w[mask].min() >= w[~mask].max()
        assert torch.equal(sp[f"{name}.weight"], params[f"{name}.weight"])
    assert isinstance(sp.spec["0"], transforms.SparseLinear)

    gp, gs = transforms.sparsify(params, sparsity=0.75, scope="global")
    masks = [gs[f"{n}.mask"].reshape(-1) for n in ("0", "2", "4")]
    weights = torch.cat([params[f"{n}.weight"].abs().reshape(-1) for n in ("0", "2", "4")])
    keep = torch.cat(masks)
    assert int(keep.sum()) == keep.numel() - round(0.75 * keep.numel())
    assert weights[keep].min() >= weights[~keep].max()

    tp, ts = transforms.sparsify(params, sparsity=0.9, pattern="2:4", include=["0", "2"])
    assert isinstance(tp.spec["4"], nn.Linear) and "4.mask" not in ts.flat()
    for name in ("0", "2"):
        groups = ts[f"{name}.mask"].reshape(-1, 4)
        w = params[f"{name}.weight"].abs().reshape(-1, 4)
        assert bool((groups.sum(-1) == 2).all())
        kept_min = torch.where(groups, w, torch.inf).min(-1).values
        pruned_max = torch.where(groups, -torch.inf, w).max(-1).values
        assert bool((kept_min >= pruned_max).all())
    # the outputs are those of the masked weights
    x = fm.random.normal(fm.key(1), (3, 16))
    manual = x
    for i, name in enumerate(("0", "2", "4")):
        manual = F.linear(
            manual, params[f"{name}.weight"] * ss[f"{name}.mask"], params[f"{name}.bias"]
        )
        manual = manual.relu() if i < 2 else manual
    torch.testing.assert_close(fm.apply(sp, x, state=ss), manual)


def test_repruning_never_revives_a_weight():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5)))
    p1, s1 = transforms.sparsify(params, sparsity=0.5)
    # make pruned weights large: magnitude alone would bring them back
    big = fm.Params(
        p1.spec, {**p1.flat(), "0.weight": torch.where(s1["0.mask"], p1["0.weight"], 9.0)}
    )
    for scope in ("layer", "global"):
        p2, s2 = transforms.sparsify(big, s1, 0.8, scope=scope)
        for name in ("0.mask", "2.mask"):
            assert bool((s2[name] <= s1[name]).all()), (scope, name)
        total = sum(s2[n].numel() for n in ("0.mask", "2.mask"))
        assert sum(int(s2[n].sum()) for n in ("0.mask", "2.mask")) == total - round(0.8 * total)
    _, s3 = transforms.sparsify(big, s1, 0.3)  # below the current sparsity: nothing comes back
    assert all(torch.equal(s3[n], s1[n]) for n in ("0.mask", "2.mask"))


def test_gradual_schedule_follows_zhu_and_gupta():
    s = transforms.polynomial_sparsity(0.9, 100, 1100, initial=0.1, frequency=100)
    assert s(0) == 0.1 and s(100) == 0.1 and s(1100) == 0.9 and s(5000) == 0.9
    # t = 500 lies in the step [500, 600): (1 - 400/1000)^3 = 0.216
    assert s(550) == pytest.approx(0.9 - 0.8 * 0.216)
    assert s(550) == s(500)
    values = [s(t) for t in range(0, 1200, 50)]
    assert values == sorted(values)


# -- the inference form --------------------------------------------------------------------


def test_compress_keeps_the_outputs_and_decompress_restores_the_model():
    spec = nn.Sequential(
        transforms.SparseLinear(64, 48, sparsity=0.95),
        nn.GELU(),
        transforms.SparseLinear(48, 8, sparsity=0.5),
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (9, 64))
    want = fm.apply(params, x, state=state)
    cp, cs = transforms.compress(params, state)
    assert isinstance(cp.spec["0"], transforms.CompressedLinear)
    assert type(cp.spec["2"]) is nn.Linear  # below the crossover: dense is faster
    assert cs["0.col_indices"].dtype == torch.int32 and cs["0.crow_indices"].dtype == torch.int32
    torch.testing.assert_close(fm.apply(cp, x, state=cs), want, atol=1e-6, rtol=1e-5)
    # under transforms the compressed layer scatters its values into a dense weight
    per_sample = vmap(lambda xi: fm.apply(cp, xi, state=cs))(x)
    torch.testing.assert_close(per_sample, want, atol=1e-6, rtol=1e-5)
    g = grad(lambda p: fm.apply(p, x, state=cs).sum())(cp)
    assert g["0.values"].shape == cp["0.values"].shape
    dp, ds = transforms.decompress(cp, cs)
    assert torch.equal(ds["0.mask"], state["0.mask"])
    torch.testing.assert_close(dp["0.weight"], params["0.weight"] * state["0.mask"])
    torch.testing.assert_close(fm.apply(dp, x, state=ds), want, atol=1e-6, rtol=1e-5)


# -- bad input -------------------------------------------------------------------------------


def test_bad_masks_and_settings_name_the_layer():
    spec = nn.Sequential({"fc": transforms.SparseLinear(8, 4, sparsity=0.5)})
    params, state = fm.init_with_state(fm.key(0), spec)
    x = torch.randn(2, 8)
    for bad in (state["fc.mask"].float(), state["fc.mask"][:, :4]):
        wrong = {"fc.mask": bad}
        with pytest.raises((TypeError, ValueError), match="fc"):
            fm.apply(params, x, state=fm.State(spec, wrong))
    model = fm.init(fm.key(0), nn.Sequential({"a": nn.Linear(6, 4), "b": nn.ReLU()}))
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        transforms.sparsify(model, sparsity=1.0)
    with pytest.raises(ValueError, match="layer 'a' has in_features=6, not divisible by 4"):
        transforms.sparsify(model, sparsity=0.5, pattern="2:4")
    with pytest.raises(ValueError, match="include names 'b', which is a ReLU"):
        transforms.sparsify(model, sparsity=0.5, include=["b"])
    with pytest.raises(ValueError, match="scope must be 'layer' or 'global'"):
        transforms.sparsify(model, sparsity=0.5, scope="row")
    with pytest.raises(ValueError, match="no SparseLinear layer"):
        transforms.compress(model, fm.State(model.spec, {}))


def test_gradual_pruning_keeps_the_spec_and_the_optimiser_state():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)))
    params, state = transforms.sparsify(params, sparsity=0.0)
    assert all(bool(m.all()) for m in state.flat().values())
    opt = fm.optim.adam(1e-2)
    opt_state = opt.init(params)
    x = fm.random.normal(fm.key(1), (5, 12))
    schedule = transforms.polynomial_sparsity(0.8, 0, 4)
    for step in range(1, 6):
        pruned, state = transforms.sparsify(params, state, schedule(step))
        assert pruned.spec is params.spec
        g = grad(lambda p, s=state: fm.apply(p, x, state=s).square().sum())(pruned)
        updates, opt_state = opt.update(g, opt_state, pruned)
        params = fm.optim.apply_updates(pruned, updates)
    mask = state["0.mask"]
    assert int(mask.sum()) == mask.numel() - round(0.8 * mask.numel())
