"""Multi-head attention, matching :class:`torch.nn.MultiheadAttention`; the conventions
here (inputs, semantics, randomness, kernels, masks) hold for the transformer layers of
:mod:`._transformer` too.

**Inputs.** A layer's ``forward`` takes one input, so the extra arguments of torch's
``forward`` (masks, the decoder's memory, ``need_weights``) arrive in a mapping under
torch's argument names::

    fm.apply(params, x)                                      # self-attention / src only
    fm.apply(params, {"query": q, "key": k, "value": v, "key_padding_mask": pad})
    fm.apply(params, {"src": x, "src_key_padding_mask": pad})
    fm.apply(params, {"tgt": y, "memory": m, "tgt_mask": causal})

A tensor stands for the first argument alone (``query`` for attention, ``src`` for the
encoders); the decoders and ``Transformer`` need a mapping. A mapping may leave out any
argument that has a default; masks may be ``None``. Masks are torch's: a bool mask is
``True`` where attention is *not* allowed, a float mask is added to the scores.

**Semantics** are torch's regular (non-fast) path on the same weights, in both modes.
torch's fast paths (eval mode without autograd: native attention, the fused encoder
layer, nested tensors) give the same results within float rounding, except where they
compute something else than torch's regular path: ``nn.TransformerEncoder``'s
nested-tensor path (with a ``src_key_padding_mask``) zeroes the padded positions before
the final norm, where the regular path (and these layers) give values computed from the
unpadded keys; the fused encoder layer reads a float mask as a bool one (any nonzero
value masks) and runs the exact GELU for any ``nn.GELU`` module, ``GELU('tanh')`` too.

**Randomness.** Dropout, including the attention-weight dropout of
``MultiheadAttention``, draws from the layer's key (``fm.apply(..., key=k, train=True)``),
never from torch's global generator, so train-mode outputs equal torch's in distribution.

**Kernels.** Attention runs :func:`torch.nn.functional.scaled_dot_product_attention`, as
torch does, except where an explicit softmax is needed: when the weights are asked for
(torch's own explicit path), with ``dropout > 0`` in train mode (torch passes its dropout
to the kernel there), and under :func:`torch.func.vmap` (the kernel has no batching rule
on the CPU, so vmap would loop over the examples).

**is_causal** is torch's hint that ``attn_mask`` *is* the causal mask: it needs the mask
(as in torch) and lets the kernel skip it. When the hint is left out (``None``), torch's
``TransformerEncoder`` and ``TransformerDecoder`` compare the mask with the causal mask
to set it; these do not (a test on the mask's values, which neither vmap nor compile can
branch on) and apply the mask as given, which computes the same values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import random as _random
from .._shapes import Shape, rank_known, show
from .._spec import Context, Spec, name_hash
from ._attention_kernel import (
    _linear,
    canonical_masks,
    explicit_attention,
    fused_attention,
    merge_padding,
    pad_masks,
)
from ._check import boolean, fan_in_bound, number, positive_int, under_vmap, uniform_param

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


# -- arguments -----------------------------------------------------------------------------


def _arguments(
    x: Any,
    first: str,
    names: dict[str, str],
    *,
    tensor_ok: bool = True,
) -> dict[str, Any]:
    """torch's forward arguments from a layer's one input: a tensor (``first`` alone, where
    ``tensor_ok``) or a mapping of argument names; ``names`` maps each name to its kind
    (``'tensor'`` required, ``'optional'`` a tensor or ``None``, ``'flag'`` a bool,
    ``'hint'`` a bool or ``None``)."""
    required = [n for n, kind in names.items() if kind == "tensor"]
    if isinstance(x, torch.Tensor):
        if tensor_ok:
            return {first: x}
        raise TypeError(
            f"expected a mapping of the forward arguments {list(names)} (it needs "
            f"{' and '.join(map(repr, required))}), got a tensor"
        )
    if not isinstance(x, Mapping):
        what = f"a tensor ({first}) or " if tensor_ok else ""
        raise TypeError(
            f"expected {what}a mapping of the forward arguments {list(names)}, got "
            f"{type(x).__name__}"
        )
    unknown = [k for k in x if k not in names]
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown}; the arguments are {list(names)}")
    missing = [n for n in required if x.get(n) is None]
    if missing:
        raise ValueError(f"missing argument(s) {missing} (a tensor each); got {list(x)}")
    for n, v in x.items():
        kind = names[n]
        if kind in ("tensor", "optional") and not (v is None or isinstance(v, torch.Tensor)):
            raise TypeError(f"argument {n!r} must be a tensor or None, got {type(v).__name__}")
        if kind in ("flag", "hint") and not (isinstance(v, bool) or (kind == "hint" and v is None)):
            allowed = "a bool or None" if kind == "hint" else "a bool"
            raise TypeError(f"argument {n!r} must be {allowed}, got {type(v).__name__} {v!r}")
    return dict(x)


def _xavier_uniform(key, name: str, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    """torch's ``xavier_uniform_`` of a 2-d tensor, from the key with the name folded in."""
    fan_out, fan_in = shape
    return uniform_param(key, name, shape, math.sqrt(6.0 / (fan_in + fan_out)), dtype, device)


# -- multi-head attention --------------------------------------------------------------------

_MHA_ARGS = {
    "query": "tensor",
    "key": "optional",
    "value": "optional",
    "key_padding_mask": "optional",
    "need_weights": "flag",
    "attn_mask": "optional",
    "average_attn_weights": "flag",
    "is_causal": "flag",
}


@dataclass(frozen=True)
class MultiheadAttention(Spec):
    """Multi-head attention, as :class:`torch.nn.MultiheadAttention`.

    Arguments:
        embed_dim: the model size ``E`` (of queries and of the output).
        num_heads: the number of heads; must divide ``embed_dim``.
        dropout: dropout probability on the attention weights (train mode).
        bias: learn the input and output projection biases.
        add_bias_kv: learn a bias row appended to the keys and to the values.
        add_zero_attn: append a row of zeros to the keys and values (after the heads are
            split).
        kdim: the size of the keys; ``None`` means ``embed_dim`` (stored as
            ``embed_dim``).
        vdim: the size of the values; ``None`` means ``embed_dim`` (stored as
            ``embed_dim``).
        batch_first: batched inputs are ``(N, L, E)`` rather than torch's default
            ``(L, N, E)``.

    Input: a tensor ``x`` (self-attention: query, key and value are ``x``), or a mapping
    with torch's forward arguments ``query``, ``key``, ``value``, ``key_padding_mask``,
    ``need_weights``, ``attn_mask``, ``average_attn_weights``, ``is_causal``. In a
    mapping ``key`` defaults to ``query`` and ``value`` to ``key``. One difference from
    torch: ``need_weights`` defaults to ``False``, so a layer returns a tensor unless the
    weights are asked for; with ``need_weights=True`` it returns torch's pair
    ``(output, weights)``, weights averaged over heads ``(N, L, S)`` or, with
    ``average_attn_weights=False``, per head ``(N, num_heads, L, S)`` (without ``N`` for
    an unbatched query). As in torch, the weights returned in train mode are those after
    dropout.

    Shapes: query ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``) or unbatched
    ``(L, E)``; key ``(S, N, kdim)``, value ``(S, N, vdim)`` likewise; output as the
    query. ``key_padding_mask`` ``(N, S)`` or ``(S,)``; ``attn_mask`` ``(L, S)`` or
    ``(N * num_heads, L, S)`` (``(num_heads, L, S)`` unbatched). Under
    :func:`torch.func.vmap` each example is an unbatched call. Shape inference
    (``fm.shapes``, ``fm.summary``) takes the shape of one example of the query.

    Params, torch's names: ``in_proj_weight (3E, E)`` when ``kdim == vdim == E``, else
    ``q_proj_weight (E, E)``, ``k_proj_weight (E, kdim)``, ``v_proj_weight (E, vdim)``
    (all ``xavier_uniform``); ``in_proj_bias (3E,)`` zeros; ``bias_k``, ``bias_v``
    ``(1, 1, E)`` (``xavier_normal``); ``out_proj.weight (E, E)``
    ``U(-1/sqrt(E), 1/sqrt(E))``; ``out_proj.bias (E,)`` zeros.
    """

    preserves_rank: ClassVar[bool] = True

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False

    def __post_init__(self):
        layer = "MultiheadAttention"
        positive_int(layer, "embed_dim", self.embed_dim)
        positive_int(layer, "num_heads", self.num_heads)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"{layer}: num_heads={self.num_heads} must divide embed_dim={self.embed_dim}"
            )
        object.__setattr__(self, "dropout", number(layer, "dropout", self.dropout, 0.0, 1.0))
        for field in ("bias", "add_bias_kv", "add_zero_attn", "batch_first"):
            boolean(layer, field, getattr(self, field))
        for field in ("kdim", "vdim"):
            value = getattr(self, field)
            if value is None:
                object.__setattr__(self, field, self.embed_dim)
            else:
                positive_int(layer, field, value)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def _packed(self) -> bool:
        return self.kdim == self.embed_dim and self.vdim == self.embed_dim

    def param_shapes(self):
        e = self.embed_dim
        shapes: dict[str, tuple[int, ...]] = {}
        if self._packed():
            shapes["in_proj_weight"] = (3 * e, e)
        else:
            shapes["q_proj_weight"] = (e, e)
            shapes["k_proj_weight"] = (e, self.kdim)
            shapes["v_proj_weight"] = (e, self.vdim)
        if self.bias:
            shapes["in_proj_bias"] = (3 * e,)
        if self.add_bias_kv:
            shapes["bias_k"] = (1, 1, e)
            shapes["bias_v"] = (1, 1, e)
        shapes["out_proj.weight"] = (e, e)
        if self.bias:
            shapes["out_proj.bias"] = (e,)
        return shapes

    def _out_proj_weight(self, key, dtype, device) -> torch.Tensor:
        e = self.embed_dim
        return uniform_param(key, "out_proj.weight", (e, e), fan_in_bound(e), dtype, device)

    def init_params(self, key, *, dtype, device):
        out = {}
        for name, shape in self.param_shapes().items():
            if name.endswith("proj_weight"):
                out[name] = _xavier_uniform(key, name, shape, dtype, device)
            elif name in ("bias_k", "bias_v"):
                # xavier_normal_ of (1, 1, E): fan_in = fan_out = E.
                k = _random.fold_in(key, name_hash(name))
                std = math.sqrt(1.0 / self.embed_dim)
                out[name] = _random.normal(k, shape, dtype, device) * std
            elif name == "out_proj.weight":
                out[name] = self._out_proj_weight(key, dtype, device)
            else:
                out[name] = torch.zeros(shape, dtype=dtype, device=device)
        return out

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        # The shape given is the query's (the output has it), whatever the keys are.
        return _sequence_shape(self, path, in_shape, self.embed_dim, "embed_dim")

    def forward(self, ctx: Context, x: Any) -> Any:
        a = _arguments(x, "query", _MHA_ARGS)
        query = a["query"]
        key = a.get("key")
        key = query if key is None else key
        value = a.get("value")
        value = key if value is None else value
        need_weights = a.get("need_weights", False)
        out, weights = self._attention(
            ctx,
            query,
            key,
            value,
            key_padding_mask=a.get("key_padding_mask"),
            need_weights=need_weights,
            attn_mask=a.get("attn_mask"),
            average_attn_weights=a.get("average_attn_weights", True),
            is_causal=a.get("is_causal", False),
        )
        return (out, weights) if need_weights else out

    def _check(self, query, key, value, key_padding_mask, attn_mask) -> bool:
        """torch's shape checks, as ``ValueError``; returns whether the input is batched."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() not in (2, 3):
                raise ValueError(
                    f"expected {name} of shape (L, E) unbatched or (L, N, E) / (N, L, E) "
                    f"batched, got shape {tuple(t.shape)}"
                )
        batched = query.dim() == 3
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"expected query, key and value of the same rank, got shapes "
                f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
            )
        for name, t, size, field in (
            ("query", query, self.embed_dim, "embed_dim"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if t.shape[-1] != size:
                raise ValueError(
                    f"expected {name} with {size} features in its last dim ({field}={size}), "
                    f"got shape {tuple(t.shape)}"
                )
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(
                f"expected key and value with the same sequence (and batch) dims, got shapes "
                f"{tuple(key.shape)} and {tuple(value.shape)}"
            )
        seq, batch = (1, 0) if self.batch_first else (0, 1)
        if batched and query.shape[batch] != key.shape[batch]:
            raise ValueError(
                f"expected query and key with the same batch size, got shapes "
                f"{tuple(query.shape)} and {tuple(key.shape)}"
            )
        if key_padding_mask is not None:
            want = (key.shape[batch], key.shape[seq]) if batched else (key.shape[0],)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(
                    f"expected key_padding_mask of shape {want} ((N, S) batched, (S,) "
                    f"unbatched), got shape {tuple(key_padding_mask.shape)}"
                )
        if attn_mask is not None:
            lq, lk = (query.shape[seq], key.shape[seq]) if batched else (len(query), len(key))
            n = query.shape[batch] if batched else 1
            if attn_mask.shape not in ((lq, lk), (n * self.num_heads, lq, lk)):
                raise ValueError(
                    f"expected attn_mask of shape {(lq, lk)} or "
                    f"{(n * self.num_heads, lq, lk)} (N * num_heads, L, S), got shape "
                    f"{tuple(attn_mask.shape)}"
                )
        return batched

    def _attention(
        self,
        ctx: Context,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """torch's ``MultiheadAttention.forward`` with this layer's params; returns
        ``(output, weights or None)``. ``ctx`` is this layer's context.

        The steps: checks, layout ``(L, N, E)``, masks, in-projection, extra keys and
        heads, attention (explicit or the kernel, see the module docstring), output
        projection and the caller's layout."""
        batched = self._check(query, key, value, key_padding_mask, attn_mask)
        query, key, value, key_padding_mask = self._sequence_first(
            query, key, value, key_padding_mask, batched
        )
        tgt_len, bsz, _ = query.shape
        attn_mask, key_padding_mask, is_causal = canonical_masks(
            attn_mask, key_padding_mask, is_causal, need_weights, query.dtype
        )
        q, k, v = self._in_projection(ctx, query, key, value)
        q, k, v, attn_mask = self._heads(ctx, q, k, v, attn_mask, key_padding_mask)
        dropout_p = self.dropout if ctx.train else 0.0
        # vmap has no batching rule for the CPU kernel of scaled_dot_product_attention
        # (it would loop over the batch, with a warning); the explicit path vmaps.
        vmapped = ctx.mode == "transform" and under_vmap(q)
        heads = self.num_heads
        if need_weights or dropout_p > 0.0 or vmapped:
            batch_major = False  # rows of ``out`` ordered (L, N)
            out, weights = explicit_attention(
                q, k, v, heads, attn_mask, is_causal, dropout_p, ctx.key, not need_weights
            )
        else:
            batch_major = bool(self.batch_first and batched)
            out = fused_attention(q, k, v, heads, attn_mask, is_causal, batch_major)
            weights = None
        out_bias = ctx.param("out_proj.bias") if self.bias else None
        out = F.linear(out, ctx.param("out_proj.weight"), out_bias)
        if batch_major:  # (L, N, E) as below, a view of the (N, L, E) the caller gets
            out = out.reshape(bsz, tgt_len, out.shape[1]).transpose(1, 0)
        else:
            out = out.reshape(tgt_len, bsz, out.shape[1])
        if weights is not None and need_weights:
            weights = weights.reshape(bsz, heads, tgt_len, k.shape[1])
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            weights = None
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def _sequence_first(self, query, key, value, key_padding_mask, batched: bool):
        """query, key, value ``(L, N, E)`` and the padding mask ``(N, S)``, as torch lays
        them out (an unbatched call is a batch of one)."""
        if self.batch_first and batched:
            # Transposed as torch does, keeping which of query, key, value are one tensor
            # (the in-projection takes its self-attention branch on that).
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (t.transpose(1, 0) for t in (query, key))
                    value = key
            else:
                query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        if not batched:
            # Separate tensors from here on, as in torch (its in-projection then takes the
            # three-projection branch even for self-attention).
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        return query, key, value, key_padding_mask

    def _heads(self, ctx: Context, q, k, v, attn_mask, key_padding_mask):
        """The projections ``(L or S, N, E)`` split into heads ``(N * H, L or S, d)``,
        with the extra keys (``bias_k``/``bias_v`` before the split, the zero key after)
        and the padding mask merged into ``attn_mask``."""
        bsz, heads, head_dim = q.shape[1], self.num_heads, self.head_dim
        if self.add_bias_kv:
            k = torch.cat([k, ctx.param("bias_k").repeat(1, bsz, 1)])
            v = torch.cat([v, ctx.param("bias_v").repeat(1, bsz, 1)])
            attn_mask, key_padding_mask = pad_masks(attn_mask, key_padding_mask)
        q = q.reshape(q.shape[0], bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros(bsz * heads, 1, head_dim, dtype=k.dtype, device=k.device)
            k = torch.cat([k, zeros], dim=1)
            v = torch.cat([v, zeros.to(v.dtype)], dim=1)
            attn_mask, key_padding_mask = pad_masks(attn_mask, key_padding_mask)
        return q, k, v, merge_padding(attn_mask, key_padding_mask, heads)

    def _in_projection(self, ctx: Context, query, key, value):
        """torch's ``_in_projection_packed`` / ``_in_projection``, the same branches."""
        e = self.embed_dim
        b = ctx.param("in_proj_bias") if self.bias else None
        if self._packed():
            w = ctx.param("in_proj_weight")
            if key is value and query is key:
                proj = _linear(query, w, b)
                proj = proj.unflatten(-1, (3, e)).unsqueeze(0).transpose(0, -2).squeeze(-2)
                proj = proj.contiguous()
                return proj[0], proj[1], proj[2]
            if key is value:
                w_q, w_kv = w.split([e, 2 * e])
                b_q, b_kv = (None, None) if b is None else b.split([e, 2 * e])
                kv = _linear(key, w_kv, b_kv)
                kv = kv.unflatten(-1, (2, e)).unsqueeze(0).transpose(0, -2).squeeze(-2)
                kv = kv.contiguous()
                return _linear(query, w_q, b_q), kv[0], kv[1]
            w_q, w_k, w_v = w.chunk(3)
        else:
            w_q, w_k, w_v = (ctx.param(f"{n}_proj_weight") for n in "qkv")
        b_q, b_k, b_v = (None, None, None) if b is None else b.chunk(3)
        return _linear(query, w_q, b_q), _linear(key, w_k, b_k), _linear(value, w_v, b_v)


def _sequence_shape(spec: Spec, path: str, in_shape: Shape, size: int, field: str) -> Shape:
    """One example ``(L, E)`` (or of unknown rank, ``(..., E)``), with ``E == size``."""
    if rank_known(in_shape) and len(in_shape) != 2:
        raise spec._error(
            path,
            f"expected one example of shape (L, {size}) (a sequence of {field}-sized "
            f"vectors), got {show(in_shape)}",
        )
    last = in_shape[-1] if in_shape else None
    if last is not None and last is not ... and last != size:
        raise spec._error(
            path,
            f"expected {size} features in the last dim ({field}={size}), got input shape "
            f"{show(in_shape)}",
        )
    if not rank_known(in_shape) and (len(in_shape) == 1 or in_shape[-1] is ...):
        return (..., size)
    return (*in_shape[:-1], size)
