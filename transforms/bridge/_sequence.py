"""Converters of the sequence layers: ``nn.Embedding``, ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``, ``nn.TransformerEncoder``,
``nn.TransformerDecoder`` and ``nn.Transformer``.

torch's transformer modules keep only some of their constructor arguments as attributes
(``nn.TransformerEncoderLayer`` has no ``d_model``; ``nn.Transformer`` no
``dim_feedforward``), so the specs are read back from their submodules, and every
submodule is checked against the spec's (a layer whose ``linear1`` was replaced, or whose
dropouts differ, is refused rather than misread). The transformers' own ``forward``
methods take torch's arguments; a spec's mapping input (``{"src": ..., "src_mask": ...}``)
is the same arguments by name.

Importing this module registers the converters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import nn

import funcmodels as fm
from funcmodels.extend import expected_entries, field_values

from ._module import _build, _infer, register_converter
from ._twins import build_twin, infer_twin, register_with_subclass

# -- Embedding --------------------------------------------------------------------------------


register_converter(
    fm.nn.Embedding, nn.Embedding, build=build_twin(nn.Embedding), infer=infer_twin(fm.nn.Embedding)
)


# -- MultiheadAttention -----------------------------------------------------------------------


def _check_entries(module: nn.Module, spec: fm.Spec) -> None:
    """The module's ``state_dict`` must hold the spec's names (torch may be given tensors
    the spec cannot have, such as an output projection without bias next to an input
    projection with one)."""
    have = list(module.state_dict())
    want = [*expected_entries(spec, "params"), *expected_entries(spec, "state")]
    if sorted(have) != sorted(want):
        raise ValueError(f"its tensors {have} differ from those of {spec!r}: {want}")


class MultiheadAttentionModule(nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` that also runs as a layer of one input.

    :func:`~transforms.to_module` makes one for a :class:`funcmodels.nn.MultiheadAttention`,
    whose input is the query alone (self-attention) or a mapping of torch's argument names
    (``{"query": q, "key": k, "value": v, "key_padding_mask": m, ...}``) and whose output
    is the attention output alone unless ``need_weights=True``: called so, ``module(x)``
    returns what ``fm.apply`` does, which is how the layer works inside ``nn.Sequential``
    as the spec does inside ``fm.nn.Sequential``. Called with a key (torch's way,
    ``module(q, k, v, ...)``), it is torch's layer: ``(output, weights)``, ``need_weights``
    true by default. Same arguments, parameters and ``state_dict`` as torch's.

    Arguments:
        embed_dim (int): the model size ``E``.
        num_heads (int): the number of heads; must divide ``embed_dim``.
        dropout (float): dropout probability on the attention weights.
        bias (bool): learn the input and output projection biases.
        add_bias_kv (bool): learn a bias row appended to the keys and to the values.
        add_zero_attn (bool): append a row of zeros to the keys and values.
        kdim (int | None): the size of the keys (``None``: ``embed_dim``).
        vdim (int | None): the size of the values (``None``: ``embed_dim``).
        batch_first (bool): batched inputs are ``(N, L, E)`` rather than ``(L, N, E)``.
        device (torch.device | str | None): where the parameters are made.
        dtype (torch.dtype | None): the parameters' dtype.

    Shapes: as :class:`funcmodels.nn.MultiheadAttention`.
    """

    def forward(self, query, key=None, value=None, **kwargs):
        if key is not None or value is not None:
            return super().forward(query, key, value, **kwargs)
        if isinstance(query, Mapping):
            kwargs = {**dict(query), **kwargs}
            query = kwargs.pop("query")
        key = kwargs.pop("key", None)
        key = query if key is None else key
        value = kwargs.pop("value", None)
        value = key if value is None else value
        need_weights = kwargs.pop("need_weights", False)
        out, weights = super().forward(query, key, value, need_weights=need_weights, **kwargs)
        return (out, weights) if need_weights else out


def _infer_attention(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    spec = fm.nn.MultiheadAttention(
        module.embed_dim,
        module.num_heads,
        dropout=module.dropout,
        bias=module.in_proj_bias is not None,
        add_bias_kv=module.bias_k is not None,
        add_zero_attn=module.add_zero_attn,
        kdim=module.kdim,
        vdim=module.vdim,
        batch_first=module.batch_first,
    )
    _check_entries(module, spec)
    return spec


register_with_subclass(
    fm.nn.MultiheadAttention,
    (nn.MultiheadAttention, MultiheadAttentionModule),
    build=build_twin(MultiheadAttentionModule),
    infer=_infer_attention,
)


# -- encoder and decoder layers ---------------------------------------------------------------


def _activation_module(spec: fm.Spec, path: str) -> str | nn.Module:
    """What torch's layer takes as ``activation``: the name, or the module of a spec."""
    if isinstance(spec.activation, str):
        return spec.activation
    return _build(spec.activation, f"{path}activation.")


def _layer_module(spec: fm.Spec, path: str = "") -> nn.Module:
    """``nn.TransformerEncoderLayer`` or ``nn.TransformerDecoderLayer`` of a layer spec
    (the private subclasses inside ``fm.nn.Transformer`` included)."""
    cls = (
        nn.TransformerDecoderLayer
        if isinstance(spec, fm.nn.TransformerDecoderLayer)
        else nn.TransformerEncoderLayer
    )
    return cls(
        spec.d_model,
        spec.nhead,
        dim_feedforward=spec.dim_feedforward,
        dropout=spec.dropout,
        activation=_activation_module(spec, path),
        layer_norm_eps=spec.layer_norm_eps,
        batch_first=spec.batch_first,
        norm_first=spec.norm_first,
        bias=spec.bias,
    )


def _activation_of(module: nn.Module, child: Callable[[str], fm.Spec]) -> str | fm.Spec:
    act = module.activation
    if act is F.relu:
        return "relu"
    if act is F.gelu:
        return "gelu"
    if isinstance(act, nn.Module):
        return child("activation")
    raise ValueError(
        f"activation {act!r} is neither 'relu', 'gelu' (torch.nn.functional's) nor a module; "
        "give the layer a module (nn.GELU(approximate='tanh'), say) to convert it"
    )


def _infer_layer(spec_type: type[fm.Spec]) -> Callable[[nn.Module, Callable], fm.Spec]:
    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        attn = module.self_attn
        spec = spec_type(
            attn.embed_dim,
            attn.num_heads,
            dim_feedforward=module.linear1.out_features,
            dropout=module.dropout.p,
            activation=_activation_of(module, child),
            layer_norm_eps=module.norm1.eps,
            batch_first=attn.batch_first,
            norm_first=module.norm_first,
            bias=module.linear1.bias is not None,
        )
        want = dict(spec.children())
        # A layer computing a function ignores an activation module shadowed by it (see
        # _restore_activations).
        have = [
            name
            for name, _ in module.named_children()
            if not (name == "activation" and isinstance(spec.activation, str))
        ]
        if have != list(want):
            raise ValueError(f"its children {have} differ from those of {spec!r}: {list(want)}")
        for name, child_spec in want.items():
            got = child(name)
            if got != child_spec:
                raise ValueError(
                    f"child '{name}' is {got!r}, but {spec!r} needs {child_spec!r} (the spec "
                    "has one setting for all its attention blocks, linear layers, norms and "
                    "dropouts)"
                )
        return spec

    return infer


def _build_layer(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return _layer_module(spec)


register_converter(
    fm.nn.TransformerEncoderLayer,
    nn.TransformerEncoderLayer,
    build=_build_layer,
    infer=_infer_layer(fm.nn.TransformerEncoderLayer),
)
register_converter(
    fm.nn.TransformerDecoderLayer,
    nn.TransformerDecoderLayer,
    build=_build_layer,
    infer=_infer_layer(fm.nn.TransformerDecoderLayer),
)


# -- stacks -----------------------------------------------------------------------------------


def _restore_activations(stack: nn.Module) -> nn.Module:
    """Let the copied decoder layers of ``stack`` use their activation module.

    torch copies a stack's layers with ``copy.deepcopy``, and
    ``nn.TransformerDecoderLayer.__setstate__`` then sets the *attribute* ``activation`` to
    ``F.relu`` (it looks for the key among the plain attributes, where a module child
    never is), which shadows the activation module the layer was built with: the copies
    compute ReLU. Dropping the attribute makes them compute the module again.
    """
    for layer in stack.layers:
        if "activation" in layer._modules:
            layer.__dict__.pop("activation", None)
    return stack


def _stack_module(spec: fm.Spec, path: str = "") -> nn.Module:
    """``nn.TransformerEncoder`` or ``nn.TransformerDecoder`` of a stack spec."""
    norm = None if spec.norm is None else _build(spec.norm, f"{path}norm.")
    if isinstance(spec, fm.nn.TransformerEncoder):
        layer = _layer_module(spec.encoder_layer, f"{path}layers.0.")
        return nn.TransformerEncoder(
            layer,
            spec.num_layers,
            norm,
            enable_nested_tensor=spec.enable_nested_tensor,
            mask_check=spec.mask_check,
        )
    layer = _layer_module(spec.decoder_layer, f"{path}layers.0.")
    return _restore_activations(nn.TransformerDecoder(layer, spec.num_layers, norm))


def _stack_layer(module: nn.Module) -> fm.Spec:
    """The one layer spec of a stack's ``layers``; refused when the layers differ."""
    layers = list(module.layers)
    specs = [_infer(layer, f"layers.{i}.") for i, layer in enumerate(layers)]
    for i, spec in enumerate(specs[1:], 1):
        if spec != specs[0]:
            raise ValueError(
                f"layer {i} is {spec!r}, unlike layer 0, {specs[0]!r}; the spec holds "
                "num_layers copies of one layer spec"
            )
    return specs[0]


def _infer_encoder(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    return fm.nn.TransformerEncoder(
        _stack_layer(module),
        len(module.layers),
        None if module.norm is None else child("norm"),
        enable_nested_tensor=module.enable_nested_tensor,
        mask_check=module.mask_check,
    )


def _infer_decoder(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    return fm.nn.TransformerDecoder(
        _stack_layer(module),
        len(module.layers),
        None if module.norm is None else child("norm"),
    )


def _build_stack(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return _stack_module(spec)


register_converter(
    fm.nn.TransformerEncoder, nn.TransformerEncoder, build=_build_stack, infer=_infer_encoder
)
register_converter(
    fm.nn.TransformerDecoder, nn.TransformerDecoder, build=_build_stack, infer=_infer_decoder
)


# -- Transformer ------------------------------------------------------------------------------


def _build_transformer(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    module = nn.Transformer(
        spec.d_model,
        spec.nhead,
        spec.num_encoder_layers,
        spec.num_decoder_layers,
        spec.dim_feedforward,
        spec.dropout,
        _activation_module(spec, ""),
        custom_encoder=None if spec.custom_encoder is None else child("encoder"),
        custom_decoder=None if spec.custom_decoder is None else child("decoder"),
        layer_norm_eps=spec.layer_norm_eps,
        batch_first=spec.batch_first,
        norm_first=spec.norm_first,
        bias=spec.bias,
    )
    if spec.custom_decoder is None:
        _restore_activations(module.decoder)
    return module


def _default_stack(spec: fm.Spec, which: str) -> fm.Spec:
    """The encoder or decoder ``spec`` builds by default, with the public layer type (the
    one ``from_module`` infers)."""
    layer_type, stack_type, n = (
        (fm.nn.TransformerEncoderLayer, fm.nn.TransformerEncoder, spec.num_encoder_layers)
        if which == "encoder"
        else (fm.nn.TransformerDecoderLayer, fm.nn.TransformerDecoder, spec.num_decoder_layers)
    )
    norm = fm.nn.LayerNorm(spec.d_model, eps=spec.layer_norm_eps, bias=spec.bias)
    return stack_type(layer_type(**spec.layer_arguments()), n, norm)


def _layer_of(stack: fm.Spec) -> fm.Spec | None:
    """The layer spec of an encoder or decoder stack; ``None`` for any other spec."""
    if isinstance(stack, fm.nn.TransformerEncoder):
        return stack.encoder_layer
    if isinstance(stack, fm.nn.TransformerDecoder):
        return stack.decoder_layer
    return None


def _infer_transformer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
    stacks = {"encoder": child("encoder"), "decoder": child("decoder")}
    args = dict(d_model=module.d_model, nhead=module.nhead, batch_first=module.batch_first)
    layers = []
    for which, stack in stacks.items():
        if _layer_of(stack) is not None:
            args[f"num_{which}_layers"] = stack.num_layers
            layers.append(_layer_of(stack))
    # torch keeps the layers' settings only in the layers: the encoder's first.
    if layers:
        args |= {k: v for k, v in field_values(layers[0]).items() if k not in args}
    spec = fm.nn.Transformer(**args)
    custom = {
        f"custom_{which}": stack
        for which, stack in stacks.items()
        if stack != _default_stack(spec, which)
    }
    return dataclasses.replace(spec, **custom) if custom else spec


register_converter(
    fm.nn.Transformer, nn.Transformer, build=_build_transformer, infer=_infer_transformer
)
