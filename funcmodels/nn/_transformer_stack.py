"""Stacks of transformer layers and the whole transformer, matching
:class:`torch.nn.TransformerEncoder`, :class:`torch.nn.TransformerDecoder` and
:class:`torch.nn.Transformer` (conventions in :mod:`._attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._shapes import Shape, child_shape
from .._spec import Context, Spec
from ._attention import (
    MultiheadAttention,
    _arguments,
    _xavier_uniform,
)
from ._check import boolean, positive_int, within_layer_budget
from ._linear import Linear
from ._norm import LayerNorm
from ._transformer import (
    _DECODER_LAYER_ARGS,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    _check_layer_fields,
)

# -- stacks of layers ------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerList(Spec):
    """``n`` copies of one layer named ``'0'`` ... ``'n-1'`` (torch's ``nn.ModuleList`` of
    ``layers``), run in order: each gets the call's mapping with ``stream`` replaced by the
    previous layer's output."""

    preserves_rank: ClassVar[bool] = True

    layer: Spec
    n: int
    stream: str

    def children(self):
        return tuple((str(i), self.layer) for i in range(self.n))

    def layer_count(self) -> int:
        return 1 + self.n * self.layer.layer_count()

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = in_shape
        for i in range(self.n):
            shape = child_shape(self.layer, shape, f"{path}{i}.", record)
        return shape

    def forward(self, ctx: Context, x: dict[str, Any]) -> torch.Tensor:
        out = x[self.stream]
        for i in range(self.n):
            out = ctx.apply(str(i), {**x, self.stream: out})
        return out


def _check_stack(spec: Any, field: str, layer_type: type) -> None:
    layer = spec.type_name
    if not isinstance(getattr(spec, field), layer_type):
        raise TypeError(
            f"{layer}: {field} must be a fm.nn.{layer_type.__name__} spec, got "
            f"{type(getattr(spec, field)).__name__}"
        )
    positive_int(layer, "num_layers", spec.num_layers)
    if spec.norm is not None and not isinstance(spec.norm, Spec):
        raise TypeError(
            f"{layer}: norm must be None or a layer spec such as fm.nn.LayerNorm(512), got "
            f"{type(spec.norm).__name__}"
        )


def _stack_shape(spec: Any, in_shape: Shape, path: str, record: dict | None) -> Shape:
    """A stack's output shape: its layers', then its norm's (the shape is ``src``'s or
    ``tgt``'s, the output has it)."""
    shape = child_shape(spec.child("layers"), in_shape, f"{path}layers.", record)
    if spec.norm is not None:
        shape = child_shape(spec.norm, shape, f"{path}norm.", record)
    return shape


_ENCODER_ARGS = {
    "src": "tensor",
    "mask": "optional",
    "src_key_padding_mask": "optional",
    "is_causal": "hint",
}


@dataclass(frozen=True)
class TransformerEncoder(Spec):
    """``num_layers`` encoder layers and an optional final norm, as
    :class:`torch.nn.TransformerEncoder`.

    Arguments:
        encoder_layer: a :class:`TransformerEncoderLayer` spec; the encoder holds
            ``num_layers`` layers of it.
        num_layers: the number of layers.
        norm: a spec applied to the output (``fm.nn.LayerNorm(d_model)``), or ``None``.
        enable_nested_tensor: torch's switch of its nested-tensor fast path; it changes
            nothing here and is kept for :func:`transforms.to_module`.
        mask_check: torch's check of the mask for that fast path; likewise kept only.

    Input: a tensor ``src``, or a mapping with torch's forward arguments ``src``,
    ``mask``, ``src_key_padding_mask``, ``is_causal`` (``None``, the default, counts as
    ``False``: the mask is applied as given).

    Children, torch's names: ``layers`` with ``layers.0`` ... (torch's
    ``nn.ModuleList``), and ``norm``. torch deep-copies one initialised layer, so its
    layers start with equal weights; here each layer draws its own initial weights (from
    the same distribution), and ``fm.init(fm.key(k), encoder_layer)`` gives none of them.
    """

    preserves_rank: ClassVar[bool] = True

    encoder_layer: TransformerEncoderLayer
    num_layers: int
    norm: Spec | None = None
    enable_nested_tensor: bool = True
    mask_check: bool = True

    def __post_init__(self):
        _check_stack(self, "encoder_layer", TransformerEncoderLayer)
        boolean(self.type_name, "enable_nested_tensor", self.enable_nested_tensor)
        boolean(self.type_name, "mask_check", self.mask_check)
        children = [("layers", _LayerList(self.encoder_layer, self.num_layers, "src"))]
        if self.norm is not None:
            children.append(("norm", self.norm))
        object.__setattr__(self, "_children", tuple(children))
        within_layer_budget(self, "num_layers")

    def children(self):
        return self._children

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _stack_shape(self, in_shape, path, record)

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        a = _arguments(x, "src", _ENCODER_ARGS)
        out = ctx.apply(
            "layers",
            {
                "src": a["src"],
                "src_mask": a.get("mask"),
                "src_key_padding_mask": a.get("src_key_padding_mask"),
                "is_causal": bool(a.get("is_causal")),
            },
        )
        return out if self.norm is None else ctx.apply("norm", out)


_DECODER_ARGS = {**_DECODER_LAYER_ARGS, "tgt_is_causal": "hint"}


@dataclass(frozen=True)
class TransformerDecoder(Spec):
    """``num_layers`` decoder layers and an optional final norm, as
    :class:`torch.nn.TransformerDecoder`.

    Arguments:
        decoder_layer: a :class:`TransformerDecoderLayer` spec.
        num_layers: the number of layers.
        norm: a spec applied to the output, or ``None``.

    Input: a mapping with torch's forward arguments, as
    :class:`TransformerDecoderLayer` (``tgt_is_causal=None`` counts as ``False``).

    Children: ``layers.0`` ... and ``norm``, as :class:`TransformerEncoder` (whose note
    on initial weights holds here too).
    """

    decoder_layer: TransformerDecoderLayer
    num_layers: int
    norm: Spec | None = None

    def __post_init__(self):
        _check_stack(self, "decoder_layer", TransformerDecoderLayer)
        children = [("layers", _LayerList(self.decoder_layer, self.num_layers, "tgt"))]
        if self.norm is not None:
            children.append(("norm", self.norm))
        object.__setattr__(self, "_children", tuple(children))
        within_layer_budget(self, "num_layers")

    def children(self):
        return self._children

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        return _stack_shape(self, in_shape, path, record)

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        a = _arguments(x, "tgt", _DECODER_ARGS, tensor_ok=False)
        a["tgt_is_causal"] = bool(a.get("tgt_is_causal"))
        out = ctx.apply("layers", a)
        return out if self.norm is None else ctx.apply("norm", out)


# -- nn.Transformer --------------------------------------------------------------------------


class _XavierLinear(Linear):
    """A :class:`Linear` as ``nn.Transformer`` initialises it: ``xavier_uniform`` weight."""

    def init_params(self, key, *, dtype, device):
        params = super().init_params(key, dtype=dtype, device=device)
        shape = (self.out_features, self.in_features)
        params["weight"] = _xavier_uniform(key, "weight", shape, dtype, device)
        return params


class _XavierMultiheadAttention(MultiheadAttention):
    """A :class:`MultiheadAttention` as ``nn.Transformer`` initialises it: every matrix
    ``xavier_uniform`` (the output projection too)."""

    def _out_proj_weight(self, key, dtype, device) -> torch.Tensor:
        e = self.embed_dim
        return _xavier_uniform(key, "out_proj.weight", (e, e), dtype, device)


class _XavierEncoderLayer(TransformerEncoderLayer):
    """The encoder layer of ``nn.Transformer``: its matrices ``xavier_uniform``."""

    _linear_type: ClassVar[type] = _XavierLinear
    _attention_type: ClassVar[type] = _XavierMultiheadAttention


class _XavierDecoderLayer(TransformerDecoderLayer):
    """The decoder layer of ``nn.Transformer``: its matrices ``xavier_uniform``."""

    _linear_type: ClassVar[type] = _XavierLinear
    _attention_type: ClassVar[type] = _XavierMultiheadAttention


_TRANSFORMER_ARGS = {
    "src": "tensor",
    "tgt": "tensor",
    "src_mask": "optional",
    "tgt_mask": "optional",
    "memory_mask": "optional",
    "src_key_padding_mask": "optional",
    "tgt_key_padding_mask": "optional",
    "memory_key_padding_mask": "optional",
    "src_is_causal": "hint",
    "tgt_is_causal": "hint",
    "memory_is_causal": "flag",
}


@dataclass(frozen=True)
class Transformer(Spec):
    """An encoder-decoder transformer, as :class:`torch.nn.Transformer`.

    Arguments:
        d_model: the embedding size ``E``.
        nhead: the number of attention heads; must divide ``d_model``.
        num_encoder_layers: the number of encoder layers.
        num_decoder_layers: the number of decoder layers.
        dim_feedforward: the hidden size of every feed-forward block.
        dropout: the dropout probability.
        activation: ``'relu'``, ``'gelu'`` or a layer spec.
        custom_encoder: a spec taking the encoder's mapping, used instead of the default
            stack; ``None`` for the default.
        custom_decoder: likewise for the decoder.
        layer_norm_eps: the ``eps`` of the layer norms.
        batch_first: inputs and outputs are batch first, ``(N, S, E)`` and ``(N, T, E)``.
        norm_first: pre-norm rather than post-norm.
        bias: whether the linear layers and the norms have biases.

    Input: a mapping with torch's forward arguments ``src``, ``tgt`` (both required),
    ``src_mask``, ``tgt_mask``, ``memory_mask``, ``src_key_padding_mask``,
    ``tgt_key_padding_mask``, ``memory_key_padding_mask``, ``src_is_causal``,
    ``tgt_is_causal``, ``memory_is_causal``.

    Shapes: ``src`` ``(S, N, E)``, ``tgt`` ``(T, N, E)`` (batch first with
    ``batch_first``), or unbatched ``(S, E)`` and ``(T, E)``; output as ``tgt``.

    Children: ``encoder`` (a :class:`TransformerEncoder` with a final ``LayerNorm``) and
    ``decoder`` (likewise), torch's names throughout (``encoder.layers.0.self_attn.
    in_proj_weight``, ...). Initialisation is torch's: every matrix of the default stacks
    ``xavier_uniform``, the rest as each layer has it (the default stacks' layers are
    private subclasses that differ only in that, shown as ``_XavierEncoderLayer``,
    ``_XavierLinear``, ... by ``fm.summary``). torch also re-initialises the matrices of a
    custom encoder or decoder; here those keep their own initialisation.
    """

    d_model: int = 512
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str | Spec = "relu"
    custom_encoder: Spec | None = None
    custom_decoder: Spec | None = None
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def __post_init__(self):
        layer = "Transformer"
        _check_layer_fields(self)
        positive_int(layer, "num_encoder_layers", self.num_encoder_layers)
        positive_int(layer, "num_decoder_layers", self.num_decoder_layers)
        for field in ("custom_encoder", "custom_decoder"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, Spec):
                raise TypeError(
                    f"{layer}: {field} must be None or a layer spec, got {type(value).__name__}"
                )
        object.__setattr__(self, "_children", self._build())

    def layer_arguments(self) -> dict[str, Any]:
        """The arguments the default encoder and decoder layers are built with."""
        return dict(
            d_model=self.d_model,
            nhead=self.nhead,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            activation=self.activation,
            layer_norm_eps=self.layer_norm_eps,
            batch_first=self.batch_first,
            norm_first=self.norm_first,
            bias=self.bias,
        )

    def _build(self) -> tuple[tuple[str, Spec], ...]:
        norm = LayerNorm(self.d_model, eps=self.layer_norm_eps, bias=self.bias)
        encoder, decoder = self.custom_encoder, self.custom_decoder
        if encoder is None:
            layer = _XavierEncoderLayer(**self.layer_arguments())
            encoder = TransformerEncoder(layer, self.num_encoder_layers, norm)
        if decoder is None:
            layer = _XavierDecoderLayer(**self.layer_arguments())
            decoder = TransformerDecoder(layer, self.num_decoder_layers, norm)
        return (("encoder", encoder), ("decoder", decoder))

    def children(self):
        return self._children

    def forward(self, ctx: Context, x: Any) -> torch.Tensor:
        a = _arguments(x, "src", _TRANSFORMER_ARGS, tensor_ok=False)
        src, tgt = a["src"], a["tgt"]
        batch = 0 if self.batch_first else 1
        if src.dim() == 3 and (tgt.dim() != 3 or src.shape[batch] != tgt.shape[batch]):
            raise ValueError(
                f"expected src and tgt with the same batch size, got shapes "
                f"{tuple(src.shape)} and {tuple(tgt.shape)}"
            )
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(
                f"expected src and tgt with d_model={self.d_model} features, got shapes "
                f"{tuple(src.shape)} and {tuple(tgt.shape)}"
            )
        memory = ctx.apply(
            "encoder",
            {
                "src": src,
                "mask": a.get("src_mask"),
                "src_key_padding_mask": a.get("src_key_padding_mask"),
                "is_causal": a.get("src_is_causal"),
            },
        )
        return ctx.apply(
            "decoder",
            {
                "tgt": tgt,
                "memory": memory,
                "tgt_mask": a.get("tgt_mask"),
                "memory_mask": a.get("memory_mask"),
                "tgt_key_padding_mask": a.get("tgt_key_padding_mask"),
                "memory_key_padding_mask": a.get("memory_key_padding_mask"),
                "tgt_is_causal": a.get("tgt_is_causal"),
                "memory_is_causal": a.get("memory_is_causal", False),
            },
        )
