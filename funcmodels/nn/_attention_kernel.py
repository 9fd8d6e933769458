"""The attention arithmetic of :class:`~funcmodels.nn.MultiheadAttention`, as torch's
``multi_head_attention_forward`` computes it once the heads are split: the masks (torch's
canonical forms and the ``is_causal`` hint), the extra key positions, and the two ways of
attending, an explicit softmax and :func:`torch.nn.functional.scaled_dot_product_attention`
(which of them runs is decided by the layer; see :mod:`._attention`).

Shapes: ``L`` target (query) length, ``S`` source (key) length, ``N`` batch, ``H`` heads,
``d`` head size, ``E = H * d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..random._samplers import keep_mask

Mask = torch.Tensor | None


def _canonical_mask(mask: Mask, name: str, dtype: torch.dtype) -> Mask:
    """torch's ``_canonical_mask``: a bool mask becomes ``-inf`` where ``True`` (out of
    place), a float mask passes as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating tensor, got dtype {mask.dtype}")
    return mask


def _causal_mask(size_q: int, size_k: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The float mask ``scaled_dot_product_attention(is_causal=True)`` applies."""
    allowed = torch.ones(size_q, size_k, dtype=torch.bool, device=device).tril()
    return torch.zeros(size_q, size_k, dtype=dtype, device=device).masked_fill(
        allowed.logical_not(), float("-inf")
    )


def _dropout(key: torch.Tensor, x: torch.Tensor, p: float) -> torch.Tensor:
    """:class:`~funcmodels.nn.Dropout`'s mask rule and formula with an explicit key."""
    if p == 1.0:
        return x * 0.0
    keep = keep_mask(key, 1.0 - p, tuple(x.shape), device=x.device)
    return x * keep.to(x.dtype).div_(1.0 - p)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of ``(L, N, E)``, computed in the layout the caller's memory has: a
    batch-first input transposed to ``(L, N, E)`` is projected as the ``(N, L, E)`` it is
    (one matrix product; ``F.linear`` of the transposed view would be a batched product)
    and the result transposed back, the same values."""
    if x.dim() == 3 and not x.is_contiguous() and x.transpose(0, 1).is_contiguous():
        return F.linear(x.transpose(0, 1), weight, bias).transpose(0, 1)
    return F.linear(x, weight, bias)


def canonical_masks(
    attn_mask: Mask,
    key_padding_mask: Mask,
    is_causal: bool,
    need_weights: bool,
    dtype: torch.dtype,
) -> tuple[Mask, Mask, bool]:
    """torch's masks in float form, with the ``is_causal`` hint resolved as torch does.

    Arguments:
        attn_mask: ``(L, S)`` or ``(N * H, L, S)``, bool or float, or ``None``.
        key_padding_mask: ``(N, S)``, bool or float, or ``None``.
        is_causal: the hint that ``attn_mask`` is the causal mask.
        need_weights: whether the weights are asked for (the kernel's own causal mask
            cannot give them).
        dtype: the float dtype of the scores.

    Returns:
        ``(attn_mask, key_padding_mask, is_causal)``: ``attn_mask`` ``(1, L, S)`` or
        ``(N * H, L, S)``, or ``None`` where the kernel applies its own causal mask;
        ``key_padding_mask`` ``(N, S)``; ``is_causal`` false once a padding mask joins in.

    Raises:
        ValueError: ``is_causal`` without ``attn_mask``. TypeError: a mask of an integer
        dtype.
    """
    key_padding_mask = _canonical_mask(key_padding_mask, "key_padding_mask", dtype)
    if is_causal and attn_mask is None:
        raise ValueError(
            "is_causal=True is a hint that attn_mask is the causal mask and needs that "
            "mask, as in torch; pass attn_mask=torch.nn.Transformer."
            "generate_square_subsequent_mask(L) along with it"
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the kernel's own causal mask, as torch
    else:
        attn_mask = _canonical_mask(attn_mask, "attn_mask", dtype)
        if key_padding_mask is not None:
            is_causal = False
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask, key_padding_mask, is_causal


def pad_masks(attn_mask: Mask, key_padding_mask: Mask) -> tuple[Mask, Mask]:
    """Both masks with one more key position, allowed (for ``bias_k`` or the zero key)."""
    if attn_mask is not None:
        attn_mask = F.pad(attn_mask, (0, 1))
    if key_padding_mask is not None:
        key_padding_mask = F.pad(key_padding_mask, (0, 1))
    return attn_mask, key_padding_mask


def merge_padding(attn_mask: Mask, key_padding_mask: Mask, heads: int) -> Mask:
    """The padding mask ``(N, S)`` added to ``attn_mask``, per head: ``(N * H, 1 or L, S)``."""
    if key_padding_mask is None:
        return attn_mask
    bsz, src_len = key_padding_mask.shape
    key_padding_mask = (
        key_padding_mask.reshape(bsz, 1, 1, src_len)
        .expand(-1, heads, -1, -1)
        .reshape(bsz * heads, 1, src_len)
    )
    return key_padding_mask if attn_mask is None else attn_mask + key_padding_mask


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    attn_mask: Mask,
    is_causal: bool,
    dropout_p: float,
    key: Callable[[], torch.Tensor],
    as_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out, as torch's path that returns the weights.

    Arguments:
        q: ``(N * H, L, d)``; k, v: ``(N * H, S, d)``; heads: ``H``.
        attn_mask: float, broadcasting to ``(N * H, L, S)``, or ``None``.
        is_causal: apply the causal mask (when ``attn_mask`` is ``None``).
        dropout_p: dropout on the weights; ``key()`` gives the key when it is positive.
        as_kernel: this path stands in for :func:`fused_attention` (under ``vmap``): a
            float16 or bfloat16 input is computed in float32 and the output rounded
            once, as the kernel accumulates, so scores past float16's 65504 stay finite
            where the kernel's do.

    Returns:
        ``(out, weights)``: ``out`` ``(L * N, E)``, rows ordered ``(L, N)``; ``weights``
        ``(N * H, L, S)``, after dropout (float32 when ``as_kernel`` widened them).
    """
    dtype = q.dtype
    if as_kernel and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
        attn_mask = None if attn_mask is None else attn_mask.float()
    batch_heads, tgt_len, head_dim = q.shape
    if attn_mask is None and is_causal:
        attn_mask = _causal_mask(tgt_len, k.shape[1], q.dtype, q.device).unsqueeze(0)
    q_scaled = q * math.sqrt(1.0 / float(head_dim))
    if attn_mask is not None:
        scores = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
    else:
        scores = torch.bmm(q_scaled, k.transpose(-2, -1))
    weights = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = _dropout(key(), weights, dropout_p)
    out = torch.bmm(weights, v).to(dtype)
    out = out.transpose(0, 1).reshape(tgt_len * (batch_heads // heads), heads * head_dim)
    return out, weights


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    attn_mask: Mask,
    is_causal: bool,
    batch_major: bool,
) -> torch.Tensor:
    """:func:`~torch.nn.functional.scaled_dot_product_attention`, as torch's path that
    does not return the weights.

    Arguments:
        q: ``(N * H, L, d)``; k, v: ``(N * H, S, d)``; heads: ``H``.
        attn_mask: float, ``(1, L, S)`` or ``(N * H, 1 or L, S)``, or ``None``.
        is_causal: let the kernel apply the causal mask.
        batch_major: order the output rows ``(N, L)`` rather than ``(L, N)``.

    Returns:
        ``(L * N, E)`` (``(N * L, E)`` when ``batch_major``).
    """
    batch_heads, tgt_len, head_dim = q.shape
    bsz, src_len = batch_heads // heads, k.shape[1]
    if attn_mask is not None:
        if attn_mask.shape[0] == 1:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.reshape(bsz, heads, -1, src_len)
    q = q.reshape(bsz, heads, tgt_len, head_dim)
    k = k.reshape(bsz, heads, src_len, head_dim)
    v = v.reshape(bsz, heads, src_len, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal)
    # (N, H, L, d): straight to the caller's layout
    out = out.permute(*((0, 2) if batch_major else (2, 0)), 1, 3)
    return out.reshape(bsz * tgt_len, heads * head_dim)
