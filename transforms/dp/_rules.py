"""Per-example gradients of single layers in closed form, for :mod:`transforms.dp`.

Each rule sees, for every example of a batch, the layer's input ``x`` and the gradient
``g`` of that example's loss at the layer's output, both with a leading batch dim ``B``
(and, after it, whatever the layer saw for one example: a batch of one, tokens,
channels). From them it gives, per example, the squared norm of the gradient of each of
the layer's params, the per-example gradients themselves, and their weighted sum
``sum_i c_i * grad_i`` without forming them where it can:

* ``Linear``: ``grad W_i = G_i^T X_i`` over the example's tokens ``t``; its squared norm
  is ``|G_i|^2 |X_i|^2`` for one token and otherwise the cheaper of the Gram form
  ``sum_{t,t'} (X_i X_i^T)_{tt'} (G_i G_i^T)_{tt'}`` (``2 T^2`` products per pair of
  features) and the product itself (``in * out``); the weighted sum is one matrix
  product ``(c * G)^T X``.
* ``Conv1d``/``Conv2d``: the same on the unfolded input (im2col: ``T`` = output
  positions, features = ``in/groups * kernel``), per group.
* ``Embedding``: ``|grad E_i|^2 = sum_{t,t'} [id_t = id_t'] g_t . g_t'`` (padding rows
  excluded); the weighted sum is an ``index_add`` of ``c_i g_t``.
* ``LayerNorm``, ``RMSNorm``, ``GroupNorm``: the per-example gradients of the affine
  params (``sum g * x_hat`` and ``sum g``) are small and are formed directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import vmap

import funcmodels as fm
from funcmodels.extend import conv_padding

from ..sparse import SparseLinear

Tensors = dict[str, torch.Tensor]


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Per-example squared norm of ``(B, ...)``."""
    return t.reshape(t.shape[0], -1).square().sum(1)


def _scaled(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t (B, ...)`` with example ``b`` scaled by ``c[b]``."""
    return t * c.reshape(-1, *([1] * (t.dim() - 1))).to(t.dtype)


Finish = Callable[[torch.Tensor], Tensors]


class _Product:
    """Per-example matrix products ``P_b = G_b X_b^T`` (the weight gradient of a linear
    map), from ``X (B, G, k, T)`` (features by tokens) and ``G (B, G, o, T)`` (output
    gradients by tokens), over ``G`` groups: their squared norms, the products themselves
    and the weighted sum ``sum_b c_b P_b``, each by the cheaper route."""

    def __init__(self, x: torch.Tensor, g: torch.Tensor):
        self.x, self.g = x, g
        b, groups, k, t = x.shape
        o = g.shape[2]
        self.shape = (b, groups, o, k)
        self.p: torch.Tensor | None = None
        xf, gf = x.reshape(b * groups, k, t), g.reshape(b * groups, o, t)
        if t == 1:
            sq = _sq(xf) * _sq(gf)
        elif 2 * t * t <= o * k:  # the Gram form: T x T instead of o x k per example
            sq = ((xf.transpose(1, 2) @ xf) * (gf.transpose(1, 2) @ gf)).sum((1, 2))
        else:
            self.p = (gf @ xf.transpose(1, 2)).reshape(self.shape)
            sq = _sq(self.p.reshape(b * groups, -1))
        self.sq = sq.reshape(b, groups).sum(1)

    def grads(self) -> torch.Tensor:
        """``(B, G, o, k)``."""
        if self.p is None:
            b, groups, o, k = self.shape
            self.p = (self.g @ self.x.transpose(2, 3)).reshape(self.shape)
        return self.p

    def weighted(self, c: torch.Tensor) -> torch.Tensor:
        """``(G, o, k)``."""
        if self.p is not None:
            return _scaled(c, self.p).sum(0)
        return torch.einsum("bgot,bgkt->gok", _scaled(c, self.g), self.x)


class Rule:
    """How to treat one layer type. ``compute(spec, x, g)`` gives the per-example squared
    norms of the layer's params and a function of the clip factors ``c (B,)`` that gives
    ``sum_b c_b grad_b``; ``grads(spec, x, g)`` the per-example gradients themselves."""

    def compute(self, spec, x, g) -> tuple[Tensors, Finish]:
        grads = self.grads(spec, x, g)
        sq = {n: _sq(v) for n, v in grads.items()}
        return sq, lambda c: {n: _scaled(c, v).sum(0) for n, v in grads.items()}

    def grads(self, spec, x, g) -> Tensors:
        raise NotImplementedError


class LinearRule(Rule):
    """``x (B, ..., in)``, ``g (B, ..., out)``: every leading dim of an example is a token."""

    def _parts(self, spec, x, g):
        b = x.shape[0]
        xt = x.reshape(b, -1, x.shape[-1])  # (B, T, in)
        gt = g.reshape(b, -1, g.shape[-1])  # (B, T, out)
        return _Product(xt.transpose(1, 2)[:, None], gt.transpose(1, 2)[:, None]), gt

    def _weight(self, spec, w: torch.Tensor) -> torch.Tensor:
        return w

    def compute(self, spec, x, g):
        prod, gt = self._parts(spec, x, g)
        sq = {"weight": prod.sq}
        if spec.bias:
            sq["bias"] = _sq(gt.sum(1))

        def finish(c):
            out = {"weight": self._weight(spec, prod.weighted(c)[0])}
            if spec.bias:
                out["bias"] = _scaled(c, gt.sum(1)).sum(0)
            return out

        return sq, finish

    def grads(self, spec, x, g):
        prod, gt = self._parts(spec, x, g)
        out = {"weight": self._weight(spec, prod.grads()[:, 0])}
        if spec.bias:
            out["bias"] = gt.sum(1)
        return out


class SparseLinearRule(LinearRule):
    """A masked weight: the per-example gradients are formed and masked (the Gram form
    would not see the mask)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def _weight(self, spec, w):
        return torch.where(self.mask, w, 0.0)

    def compute(self, spec, x, g):
        return Rule.compute(self, spec, x, g)


#: per-example convolution weight gradients up to this many values are kept from the
#: norms to the clipped sum (64 MiB in float32); larger ones are recomputed as one sum.
_KEEP = 1 << 24


class ConvRule(Rule):
    """``Conv1d``/``Conv2d``/``Conv3d``. Norms: where an example's output positions are few
    (``2 T**2 <= o k``, late layers of a CNN), by the Gram form on the unfolded input
    (no per-example gradient); else from each example's weight gradient by torch's own
    convolution backward, vmapped over the examples (measured faster on the CPU than
    im2col and a batched product where T is large). The clipped sum weights those
    gradients where they are small (``_KEEP``); else, and on the Gram route, it is one
    convolution backward over the batch with the output gradients scaled by the clip
    factors, so large layers' per-example gradients are never kept."""

    def _examples(self, spec, x, g):
        n = len(spec.kernel_size)
        b = x.shape[0]
        xe = x.reshape(b, -1, *x.shape[-(n + 1) :])  # (B, N, C, *S): an example's rows
        ge = g.reshape(b, -1, *g.shape[-(n + 1) :])
        pads = conv_padding(spec)
        if any(pads):  # the layer's own padding, so the backward pads nothing
            mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
            padded = F.pad(xe.flatten(0, 1), pads, mode=mode)
            xe = padded.reshape(b, -1, *padded.shape[1:])
        return xe, ge

    def _backward(self, spec, xi, gi):
        """The weight gradient of a batch ``(M, C, *S)`` (summed over it)."""
        n = len(spec.kernel_size)
        weight = torch.empty(spec.param_shapes()["weight"], dtype=xi.dtype, device=xi.device)
        zeros = [0] * n
        return torch.ops.aten.convolution_backward(
            gi,
            xi,
            weight,
            None,
            list(spec.stride),
            zeros,
            list(spec.dilation),
            False,
            zeros,
            spec.groups,
            [False, True, False],
        )[1]

    def _gram(self, spec, xe, ge) -> _Product | None:
        """The Gram-form product, where it is the cheaper route (1-d and 2-d only)."""
        n = len(spec.kernel_size)
        b, rows = xe.shape[:2]
        t = rows * math.prod(ge.shape[3:])  # an example's output positions
        o = spec.out_channels // spec.groups
        k = spec.in_channels // spec.groups * math.prod(spec.kernel_size)
        if n > 2 or 2 * t * t > o * k:
            return None
        xs = xe.flatten(0, 1)
        kernel, stride, dilation = spec.kernel_size, spec.stride, spec.dilation
        if n == 1:  # a 1-d input is a 2-d one of height 1
            xs = xs.unsqueeze(2)
            kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        cols = F.unfold(xs, kernel, dilation=dilation, stride=stride)  # (B N, C k, T')
        groups = spec.groups
        cols = cols.reshape(b, rows, groups, k, -1).permute(0, 2, 3, 1, 4).reshape(b, groups, k, t)
        gs = ge.reshape(b, rows, groups, o, -1).permute(0, 2, 3, 1, 4).reshape(b, groups, o, t)
        return _Product(cols, gs)

    def compute(self, spec, x, g):
        xe, ge = self._examples(spec, x, g)
        prod = self._gram(spec, xe, ge)
        kept = None
        if prod is not None:
            sq = {"weight": prod.sq}
        else:
            grads = vmap(lambda xi, gi: self._backward(spec, xi, gi))(xe, ge)
            sq = {"weight": _sq(grads)}
            # Small enough to keep for the sum (cheaper than a second backward); a large
            # layer's are dropped now, so they never all live at once.
            if grads.numel() <= _KEEP:
                kept = grads
        if spec.bias:
            per_bias = ge.sum((1, *range(3, ge.dim())))
            sq["bias"] = _sq(per_bias)

        def finish(c):
            if kept is not None:
                weight = _scaled(c, kept).sum(0)
            else:  # one backward over the batch, output gradients scaled per example
                weight = self._backward(spec, xe.flatten(0, 1), _scaled(c, ge).flatten(0, 1))
            out = {"weight": weight}
            if spec.bias:
                out["bias"] = _scaled(c, per_bias).sum(0)
            return out

        return sq, finish


class EmbeddingRule(Rule):
    def _parts(self, spec, ids, g):
        ids = ids.reshape(ids.shape[0], -1)
        g = g.reshape(ids.shape[0], ids.shape[1], -1)
        if spec.padding_idx is not None:
            pad = spec.padding_idx % spec.num_embeddings
            g = g * (ids != pad).to(g.dtype)[..., None]
        return ids, g

    def compute(self, spec, ids, g):
        ids, g = self._parts(spec, ids, g)
        same = (ids[:, :, None] == ids[:, None, :]).to(g.dtype)
        sq = {"weight": (same * (g @ g.transpose(1, 2))).sum((1, 2))}

        def finish(c):
            out = g.new_zeros(spec.num_embeddings, spec.embedding_dim)
            return {"weight": out.index_add(0, ids.reshape(-1), _scaled(c, g).flatten(0, 1))}

        return sq, finish

    def grads(self, spec, ids, g):
        ids, g = self._parts(spec, ids, g)
        out = g.new_zeros(ids.shape[0], spec.num_embeddings, spec.embedding_dim)
        return {"weight": out.scatter_add(1, ids[..., None].expand_as(g), g)}


class NormRule(Rule):
    """``LayerNorm``, ``RMSNorm``, ``GroupNorm``: ``x_hat`` from the layer's own
    normalisation without the affine params, then ``sum g * x_hat`` and ``sum g`` over
    every dim but the batch and the params' own."""

    def __init__(self, normalise: Callable, param_dims: Callable):
        self.normalise = normalise
        self.param_dims = param_dims

    def grads(self, spec, x, g):
        x_hat = self.normalise(spec, x)
        keep = self.param_dims(spec, g)
        dims = tuple(d for d in range(1, g.dim()) if d not in keep)
        names = spec.param_shapes()
        out = {}
        if "weight" in names:
            out["weight"] = (g * x_hat).sum(dims).reshape(g.shape[0], *names["weight"])
        if "bias" in names:
            out["bias"] = g.sum(dims).reshape(g.shape[0], *names["bias"])
        return out


def _trailing(spec, g) -> tuple[int, ...]:
    k = len(spec.normalized_shape)
    return tuple(range(g.dim() - k, g.dim()))


def _layer_norm(spec, x):
    return F.layer_norm(x, spec.normalized_shape, None, None, spec.eps)


def _rms_norm(spec, x):
    return F.rms_norm(x, spec.normalized_shape, None, spec.eps)


def _group_norm(spec, x):
    # x: (B, N, C, *S), one example's (N, C, *S) per row
    y = F.group_norm(x.reshape(-1, *x.shape[2:]), spec.num_groups, None, None, spec.eps)
    return y.reshape(x.shape)


def _channels(spec, g) -> tuple[int, ...]:
    return (2,)


def rule_for(spec: fm.Spec, state: dict[str, torch.Tensor], shape: tuple[int, ...]) -> Rule | None:
    """The closed-form rule of a layer whose input, for one example, has ``shape``; ``None``
    where there is none (the caller then forms the layer's per-example gradients by vmap)."""
    kind = type(spec)
    nn = fm.nn
    if kind is nn.Linear:
        return LinearRule()
    if kind is SparseLinear:
        return SparseLinearRule(state["mask"])
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return ConvRule()
    if kind is nn.Embedding and spec.max_norm is None and not spec.scale_grad_by_freq:
        return EmbeddingRule()
    if kind is nn.LayerNorm and spec.elementwise_affine:
        return NormRule(_layer_norm, _trailing)
    if kind is nn.RMSNorm and spec.elementwise_affine:
        return NormRule(_rms_norm, _trailing)
    if kind is nn.GroupNorm and spec.affine and len(shape) >= 2 and shape[1] == spec.num_channels:
        return NormRule(_group_norm, _channels)
    return None
