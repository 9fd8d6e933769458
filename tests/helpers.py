"""Shared checks for layer tests: fidelity to torch.nn and per-sample gradients."""

from __future__ import annotations

import torch
from torch.func import grad, vmap

import funcmodels as fm


def torch_twin(module: torch.nn.Module, params: fm.Params, state: fm.State | None = None):
    """Load funcmodels tensors into a torch module (strict: every key must match)."""
    module.load_state_dict(fm.to_state_dict(params, state), strict=True)
    return module


def per_sample_grads(params, x, y, *, state=None, loss=None):
    """``vmap(grad(loss))`` over the batch; ``loss(out, target)`` defaults to squared error."""
    loss = loss or (lambda out, t: ((out - t) ** 2).sum())

    def f(p, xi, yi):
        return loss(fm.apply(p, xi, state=state), yi)

    return vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)


def loop_grads(params, x, y, *, state=None, loss=None):
    """Reference: one ``torch.autograd.grad`` call per sample, stacked."""
    loss = loss or (lambda out, t: ((out - t) ** 2).sum())
    flat = fm.to_state_dict(params)
    names = list(flat)
    per: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        leaves = {n: t.detach().requires_grad_(True) for n, t in flat.items()}
        p = fm.Params(params.spec, leaves)
        out = fm.apply(p, x[i : i + 1], state=state)[0]
        gs = torch.autograd.grad(loss(out, y[i]), [leaves[n] for n in names], allow_unused=True)
        for n, g in zip(names, gs, strict=True):
            per[n].append(torch.zeros_like(flat[n]) if g is None else g)
    return {n: torch.stack(v) for n, v in per.items()}


def assert_per_sample_grads_match(params, x, y, *, state=None, loss=None, atol=1e-5, rtol=1e-4):
    """vmap(grad) per-sample gradients equal a loop of single-sample gradients."""
    got = fm.to_state_dict(per_sample_grads(params, x, y, state=state, loss=loss))
    want = loop_grads(params, x, y, state=state, loss=loss)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=atol, rtol=rtol, msg=f"grad of {n}")
