"""``fm.optim.clip_by_global_norm_per_member(max_norm)``: each member of an ensemble
(Stack params, a ``vmap(fm.init)`` ensemble) clipped by its own global norm, equal to a
``vmap`` over the members of the plain transformation (bitwise on this machine; asserted
to 1e-6 relative), where the plain one clips all members as one model."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

import funcmodels as fm

optim = fm.optim
nn = fm.nn
TOL = dict(atol=0.0, rtol=1e-6)
MEMBER = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def spread_grads(tree):
    """Gradients whose members' norms spread from well below 1 to well above."""
    scales = torch.tensor([0.01, 0.3, 1.0, 4.0, 50.0])
    return fm.tree.map(lambda t: t * scales.reshape(-1, *[1] * (t.dim() - 1)), tree)


def member_norms(tree) -> torch.Tensor:
    return vmap(optim.global_norm)(tree)


def test_per_member_equals_vmap_over_members():
    params = fm.init(fm.key(0), nn.Stack(MEMBER, 5))
    grads = spread_grads(params)
    clip = optim.clip_by_global_norm_per_member(1.0)
    got, state = clip.update(grads, clip.init(params))
    one = optim.clip_by_global_norm(1.0)
    want = vmap(lambda g: one.update(g, optim.EmptyState())[0])(grads)
    assert type(got) is fm.Params and got.spec == params.spec and state == optim.EmptyState()
    for name, w in want.flat().items():
        torch.testing.assert_close(got[name], w, **TOL, msg=name)
    before, after = member_norms(grads), member_norms(got)
    torch.testing.assert_close(after, before.clamp(max=1.0), atol=1e-6, rtol=1e-6)
    below = before < 1.0
    assert below.any() and (~below).any()
    for name, g in grads.flat().items():  # members below the bound pass unchanged
        assert torch.equal(got[name][below], g[below]), name
    joint, _ = optim.clip_by_global_norm(1.0).update(grads, optim.EmptyState())
    assert not torch.allclose(member_norms(joint), after)  # one model: all members scaled


def test_an_ensemble_from_vmap_init_and_a_chain():
    ensemble = vmap(fm.init, in_dims=(0, None))(fm.split(fm.key(0), 5), MEMBER)
    grads = spread_grads(ensemble)
    opt = optim.chain(optim.clip_by_global_norm_per_member(0.5), optim.scale(-0.1))
    got, _ = opt.update(grads, opt.init(ensemble))
    single = optim.chain(optim.clip_by_global_norm(0.5), optim.scale(-0.1))
    want = vmap(lambda g: single.update(g, single.init(g))[0])(grads)
    for name, w in want.flat().items():
        torch.testing.assert_close(got[name], w, **TOL, msg=name)


def test_leaves_without_a_common_member_axis_are_refused():
    clip = optim.clip_by_global_norm_per_member(1.0)
    with pytest.raises(
        ValueError, match=r"leaf 1 \(shape \(4, 2\)\) has 4 members on dim 0, the first leaf 3"
    ):
        clip.update([torch.ones(3, 2), torch.ones(4, 2)], optim.EmptyState())
    with pytest.raises(ValueError, match=r"leaf 0 \(shape \(\)\) has no dim 0"):
        clip.update([torch.ones(()), torch.ones(3)], optim.EmptyState())
    with pytest.raises(ValueError, match="clip_by_global_norm_per_member: max_norm"):
        optim.clip_by_global_norm_per_member(-1.0)
    assert clip.update([], optim.EmptyState())[0] == []
