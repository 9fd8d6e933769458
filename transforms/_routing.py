"""Top-k token routing for a mixture of experts: :func:`route`.

One home for the gate's side of :class:`~transforms.MoE`, shared by the single-process
layer and :class:`~transforms.distributed.ExpertParallelMoE`, which route alike and differ
only in where the experts run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import funcmodels as fm
from funcmodels.extend import name_hash


class Routing(NamedTuple):
    """Where each token of one call goes (see :func:`route`)."""

    tokens: torch.Tensor
    """``(T, D)``: the call's input with every leading position as one token"""
    experts: torch.Tensor
    """``(T, k)`` int64: each token's ``top_k`` experts, best first"""
    weights: torch.Tensor
    """``(T, k)``: the mixing weight of each of them, in the input's dtype"""


def route(moe: fm.Spec, ctx: fm.Context, x: torch.Tensor) -> Routing:
    """Route the tokens of ``x`` to their experts with the gate of an MoE layer.

    The gate (the child ``gate`` of the layer ``ctx`` belongs to) gives ``E`` logits per
    token, in at least float32; each token takes its ``top_k`` largest. The mixing weights
    are the softmax over those ``k`` logits (``moe.normalize``) or the softmax over all
    ``E``, unscaled. In train mode with ``moe.jitter``, the gate's input is multiplied by
    uniform noise in ``[1 - jitter, 1 + jitter)`` from the layer's key. Sows
    ``load_balance_loss``, ``z_loss`` and ``expert_counts`` (see :mod:`transforms.moe`).

    Arguments:
        moe: the layer's spec: a :class:`~transforms.MoE` (its ``dim``, ``num_experts``,
            ``top_k``, ``normalize`` and ``jitter`` are read).
        ctx: the layer's context; it must have a ``gate`` child.
        x: the input ``(..., D)``.

    Returns:
        a :class:`Routing`: tokens ``(T, D)``, experts ``(T, k)``, weights ``(T, k)``, with
        ``T`` the number of leading positions of ``x``.

    Raises:
        ValueError: ``x`` is not a tensor of width ``D``, or the gate's logits are not
            ``(T, E)``.
    """
    d, e, k = moe.dim, moe.num_experts, moe.top_k
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != d:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected tokens (..., {d}), got {shape}")
    tokens = x.reshape(-1, d)
    t = tokens.shape[0]
    gate_in = tokens
    if ctx.train and moe.jitter:
        noise_key = fm.fold_in(ctx.key(), name_hash("jitter"))
        noise = fm.random.uniform(
            noise_key,
            tokens.shape,
            tokens.dtype,
            tokens.device,
            minval=1 - moe.jitter,
            maxval=1 + moe.jitter,
        )
        gate_in = tokens * noise
    # Routing in at least float32 (under bf16 autocast too), float64 for float64.
    logits = ctx.apply("gate", gate_in)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logits.shape != (t, e):
        raise ValueError(
            f"the gate gave logits of shape {tuple(logits.shape)}, expected ({t}, {e})"
        )
    probs = torch.softmax(logits, dim=-1)
    top_logits, top_idx = torch.topk(logits, k, dim=-1)
    weights = torch.softmax(top_logits, dim=-1) if moe.normalize else probs.gather(-1, top_idx)
    weights = weights.to(x.dtype)
    counts = (top_idx[..., None] == torch.arange(e, device=x.device)).sum((0, 1))
    share = counts.to(probs.dtype) / max(t * k, 1)
    ctx.sow("load_balance_loss", e * (share * probs.mean(0)).sum())
    ctx.sow("z_loss", (torch.logsumexp(logits, dim=-1) ** 2).mean())
    ctx.sow("expert_counts", counts)
    return Routing(tokens, top_idx, weights)
