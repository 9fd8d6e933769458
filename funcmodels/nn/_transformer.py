"""Transformer layers, matching :class:`torch.nn.TransformerEncoderLayer` and
:class:`torch.nn.TransformerDecoderLayer`, built on :class:`~funcmodels.nn.MultiheadAttention`
(inputs, semantics, randomness and masks as described in :mod:`._attention`; the stacks:
:mod:`._transformer_stack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._shapes import Shape, child_shape
from .._spec import Context, Spec
from ._attention import (
    _ACTIVATIONS,
    MultiheadAttention,
    _arguments,
    _sequence_shape,
)
from ._check import boolean, number, positive_int
from ._dropout import Dropout
from ._linear import Linear
from ._norm import LayerNorm

# -- transformer layers ----------------------------------------------------------------------


def _check_activation(layer: str, activation: object) -> None:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"{layer}: activation must be 'relu', 'gelu' or a layer spec such as "
                f"fm.nn.GELU('tanh'), got {activation!r}"
            )
    elif not isinstance(activation, Spec):
        raise TypeError(
            f"{layer}: activation must be 'relu', 'gelu' or a layer spec such as "
            f"fm.nn.GELU('tanh'), got {type(activation).__name__}"
        )


def _check_layer_fields(spec: Any) -> None:
    """Checks shared by the encoder and decoder layers."""
    layer = spec.type_name
    positive_int(layer, "d_model", spec.d_model)
    positive_int(layer, "nhead", spec.nhead)
    if spec.d_model % spec.nhead:
        raise ValueError(f"{layer}: nhead={spec.nhead} must divide d_model={spec.d_model}")
    positive_int(layer, "dim_feedforward", spec.dim_feedforward)
    object.__setattr__(spec, "dropout", number(layer, "dropout", spec.dropout, 0.0, 1.0))
    _check_activation(layer, spec.activation)
    object.__setattr__(
        spec, "layer_norm_eps", number(layer, "layer_norm_eps", spec.layer_norm_eps, 0.0)
    )
    for field in ("batch_first", "norm_first", "bias"):
        boolean(layer, field, getattr(spec, field))


def _check_sequence(x: torch.Tensor, name: str, d_model: int) -> None:
    if x.dim() not in (2, 3) or x.shape[-1] != d_model:
        raise ValueError(
            f"expected {name} of shape (L, {d_model}) unbatched or (L, N, {d_model}) / "
            f"(N, L, {d_model}) batched, got shape {tuple(x.shape)}"
        )


class _TransformerLayer(Spec):
    """What the encoder and decoder layers share: children, feed-forward block, shapes."""

    preserves_rank: ClassVar[bool] = True
    #: the attention children, in torch's order
    _attentions: ClassVar[tuple[str, ...]]
    #: the norms and the dropouts after each block, in torch's order
    _norms: ClassVar[tuple[str, ...]]
    _dropouts: ClassVar[tuple[str, ...]]
    #: the child types; nn.Transformer's layers re-initialise their matrices
    _linear_type: ClassVar[type] = Linear
    _attention_type: ClassVar[type] = MultiheadAttention

    def _build(self) -> tuple[tuple[str, Spec], ...]:
        d, bias = self.d_model, self.bias
        attention = self._attention_type(
            d, self.nhead, dropout=self.dropout, bias=bias, batch_first=self.batch_first
        )
        children: list[tuple[str, Spec]] = [(name, attention) for name in self._attentions]
        children += [
            ("linear1", self._linear_type(d, self.dim_feedforward, bias=bias)),
            ("dropout", Dropout(self.dropout)),
            ("linear2", self._linear_type(self.dim_feedforward, d, bias=bias)),
        ]
        norm = LayerNorm(d, eps=self.layer_norm_eps, bias=bias)
        children += [(name, norm) for name in self._norms]
        children += [(name, Dropout(self.dropout)) for name in self._dropouts]
        if isinstance(self.activation, Spec):
            children.append(("activation", self.activation))
        return tuple(children)

    def children(self):
        return self._children

    def _feed_forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        h = ctx.apply("linear1", x)
        if isinstance(self.activation, str):
            h = _ACTIVATIONS[self.activation](h)
        else:
            h = ctx.apply("activation", h)
        h = ctx.apply("linear2", ctx.apply("dropout", h))
        return ctx.apply(self._dropouts[-1], h)

    def _attend(
        self, ctx: Context, name: str, dropout: str, x, memory, mask, padding, is_causal
    ) -> torch.Tensor:
        h = ctx.apply(
            name,
            {
                "query": x,
                "key": memory,
                "attn_mask": mask,
                "key_padding_mask": padding,
                "is_causal": is_causal,
            },
        )
        return ctx.apply(dropout, h)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        d = self.d_model
        shape = _sequence_shape(self, path, in_shape, d, "d_model")
        hidden = (*shape[:-1], self.dim_feedforward)
        for name in self._attentions:
            child_shape(self.child(name), shape, f"{path}{name}.", record)
        child_shape(self.child("linear1"), shape, f"{path}linear1.", record)
        child_shape(self.child("dropout"), hidden, f"{path}dropout.", record)
        child_shape(self.child("linear2"), hidden, f"{path}linear2.", record)
        for name in (*self._norms, *self._dropouts):
            child_shape(self.child(name), shape, f"{path}{name}.", record)
        if isinstance(self.activation, Spec):
            child_shape(self.activation, hidden, f"{path}activation.", record)
        return shape


_ENCODER_LAYER_ARGS = {
    "src": "tensor",
    "src_mask": "optional",
    "src_key_padding_mask": "optional",
    "is_causal": "flag",
}


@dataclass(frozen=True)
class TransformerEncoderLayer(_TransformerLayer):
    """Self-attention and a feed-forward block, as :class:`torch.nn.TransformerEncoderLayer`.

    Arguments:
        d_model: the embedding size ``E`` of the input and output.
        nhead: the number of attention heads; must divide ``d_model``.
        dim_feedforward: the hidden size of the feed-forward block.
        dropout: the dropout probability (after attention, in and after the
            feed-forward block).
        activation: the feed-forward block's activation: ``'relu'``, ``'gelu'`` or a layer
            spec such as ``fm.nn.GELU('tanh')``.
        layer_norm_eps: the ``eps`` of the layer norms.
        batch_first: inputs and outputs are ``(N, L, E)`` rather than ``(L, N, E)``.
        norm_first: pre-norm (norm before attention and feed-forward) rather than
            post-norm.
        bias: whether the linear layers and the norms have biases.

    Input: a tensor ``src``, or a mapping with torch's forward arguments ``src``,
    ``src_mask``, ``src_key_padding_mask``, ``is_causal`` (see the module docstring).

    Shapes: ``src`` ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``) or unbatched
    ``(L, E)``; output the same. Masks as :class:`MultiheadAttention`'s ``attn_mask`` and
    ``key_padding_mask``.

    Children, torch's names and order: ``self_attn`` (:class:`MultiheadAttention`),
    ``linear1``, ``dropout``, ``linear2``, ``norm1``, ``norm2``, ``dropout1``,
    ``dropout2``, and ``activation`` when it is a spec (torch registers an activation
    module last; ``'relu'`` and ``'gelu'`` are functions, not children). Params: the
    children's, under those names (``self_attn.in_proj_weight``, ``linear1.weight``, ...),
    each initialised as its torch module is.
    """

    _attentions: ClassVar[tuple[str, ...]] = ("self_attn",)
    _norms: ClassVar[tuple[str, ...]] = ("norm1", "norm2")
    _dropouts: ClassVar[tuple[str, ...]] = ("dropout1", "dropout2")

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str | Spec = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def __post_init__(self):
        _check_layer_fields(self)
        object.__setattr__(self, "_children", self._build())

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        a = _arguments(x, "src", _ENCODER_LAYER_ARGS)
        src = a["src"]
        _check_sequence(src, "src", self.d_model)
        mask, padding = a.get("src_mask"), a.get("src_key_padding_mask")
        is_causal = a.get("is_causal", False)
        if self.norm_first:
            h = ctx.apply("norm1", src)
            x = src + self._attend(ctx, "self_attn", "dropout1", h, None, mask, padding, is_causal)
            return x + self._feed_forward(ctx, ctx.apply("norm2", x))
        h = self._attend(ctx, "self_attn", "dropout1", src, None, mask, padding, is_causal)
        x = ctx.apply("norm1", src + h)
        return ctx.apply("norm2", x + self._feed_forward(ctx, x))


_DECODER_LAYER_ARGS = {
    "tgt": "tensor",
    "memory": "tensor",
    "tgt_mask": "optional",
    "memory_mask": "optional",
    "tgt_key_padding_mask": "optional",
    "memory_key_padding_mask": "optional",
    "tgt_is_causal": "flag",
    "memory_is_causal": "flag",
}


@dataclass(frozen=True)
class TransformerDecoderLayer(_TransformerLayer):
    """Self-attention, attention over the encoder's memory and a feed-forward block, as
    :class:`torch.nn.TransformerDecoderLayer`.

    Arguments:
        d_model: the embedding size ``E`` of ``tgt``, ``memory`` and the output.
        nhead: the number of attention heads; must divide ``d_model``.
        dim_feedforward: the hidden size of the feed-forward block.
        dropout: the dropout probability.
        activation: ``'relu'``, ``'gelu'`` or a layer spec.
        layer_norm_eps: the ``eps`` of the layer norms.
        batch_first: inputs and outputs are batch first, ``(N, T, E)``.
        norm_first: pre-norm rather than post-norm.
        bias: whether the linear layers and the norms have biases.

    Input: a mapping with torch's forward arguments ``tgt``, ``memory`` (both required),
    ``tgt_mask``, ``memory_mask``, ``tgt_key_padding_mask``, ``memory_key_padding_mask``,
    ``tgt_is_causal``, ``memory_is_causal``.

    Shapes: ``tgt`` ``(T, N, E)`` (``(N, T, E)`` with ``batch_first``) or unbatched
    ``(T, E)``; ``memory`` ``(S, N, E)`` likewise; output as ``tgt``. Shape inference
    (``fm.shapes``, ``fm.summary``) takes the shape of one example of ``tgt``.

    Children, torch's names and order: ``self_attn``, ``multihead_attn``, ``linear1``,
    ``dropout``, ``linear2``, ``norm1``, ``norm2``, ``norm3``, ``dropout1``, ``dropout2``,
    ``dropout3``, and ``activation`` when it is a spec.
    """

    _attentions: ClassVar[tuple[str, ...]] = ("self_attn", "multihead_attn")
    _norms: ClassVar[tuple[str, ...]] = ("norm1", "norm2", "norm3")
    _dropouts: ClassVar[tuple[str, ...]] = ("dropout1", "dropout2", "dropout3")

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str | Spec = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def __post_init__(self):
        _check_layer_fields(self)
        object.__setattr__(self, "_children", self._build())

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        a = _arguments(x, "tgt", _DECODER_LAYER_ARGS, tensor_ok=False)
        tgt, memory = a["tgt"], a["memory"]
        _check_sequence(tgt, "tgt", self.d_model)
        _check_sequence(memory, "memory", self.d_model)
        self_args = (
            a.get("tgt_mask"),
            a.get("tgt_key_padding_mask"),
            a.get("tgt_is_causal", False),
        )
        cross_args = (
            a.get("memory_mask"),
            a.get("memory_key_padding_mask"),
            a.get("memory_is_causal", False),
        )
        if self.norm_first:
            h = ctx.apply("norm1", tgt)
            x = tgt + self._attend(ctx, "self_attn", "dropout1", h, None, *self_args)
            h = ctx.apply("norm2", x)
            x = x + self._attend(ctx, "multihead_attn", "dropout2", h, memory, *cross_args)
            return x + self._feed_forward(ctx, ctx.apply("norm3", x))
        x = ctx.apply(
            "norm1", tgt + self._attend(ctx, "self_attn", "dropout1", tgt, None, *self_args)
        )
        x = ctx.apply(
            "norm2", x + self._attend(ctx, "multihead_attn", "dropout2", x, memory, *cross_args)
        )
        return ctx.apply("norm3", x + self._feed_forward(ctx, x))
