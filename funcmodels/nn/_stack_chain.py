"""A Stack's direct batched form of a chain of layers (``Sequential.stacked``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

from .._context import EAGER
from .._spec import Context, Spec
from .._tap import active_tap
from ._activation import ReLU
from ._linear import Linear
from ._stack_mlp import StackedMLP, members_3d


def stacked_chain(
    ctx: Context,
    layers: Sequence[tuple[str, Spec]],
    params: dict[str, torch.Tensor],
    x: Any,
    in_axis: int | None,
) -> Any:
    """The members of a chain of layers at once, each layer by its direct batched form.

    In eager mode with no tap active (no tap or sow sees the layers of a direct path),
    a ``ReLU`` right after a ``Linear`` runs in place on the Linear's batched product, a
    new tensor that nothing else holds (``relu_``: its backward needs only the result);
    where gradients are recorded, a chain of Linears each maybe followed by a ReLU runs
    as one autograd node (:class:`StackedMLP`), whose backward also masks in place the
    gradients it makes. The same kernels give the same values; what is spared is the
    fresh ``(n, B, features)`` buffers, ``n`` times the loop's, which the allocator hands
    back to the system and faults in again on the next step. Under torch.func transforms
    and compile the chain runs op by op and out of place, as before.

    Arguments:
        ctx: the Stack's context.
        layers: ``(name, spec)`` of the chain, in order; each has a direct form.
        params: the chain's stacked params, by dotted name below the chain.
        x: the chain's input (shared, or with the members on dim 0 for ``in_axis=0``).
        in_axis: ``None`` (shared input) or ``0``.

    Returns:
        the members' outputs, ``(n, B, ...)``, or ``NotImplemented`` where a layer has
        no direct form for this input (the caller then takes the lifted vmap).
    """
    in_place = ctx.mode == EAGER and active_tap() is None
    if in_place and torch.is_grad_enabled():
        out = _as_one_node(layers, params, x, in_axis)
        if out is not NotImplemented:
            return out
    fresh = False  # x is a Linear's batched product, held by nothing else
    for name, layer in layers:
        if fresh and in_place and type(layer) is ReLU:
            x = torch.relu_(x)
        else:
            pre = f"{name}."
            own = {k[len(pre) :]: v for k, v in params.items() if k.startswith(pre)}
            x = layer.stacked(ctx, own, x, in_axis)
            if x is NotImplemented:
                return NotImplemented
        fresh = type(layer) is Linear
        in_axis = 0  # the members' outputs come stacked
    return x


def _plan(layers: Sequence[tuple[str, Spec]]) -> tuple[tuple[str, bool, bool], ...] | None:
    """``(name, has_bias, relu)`` per Linear of a chain of Linears, each maybe followed by
    a ReLU; ``None`` for any other chain."""
    plan: list[tuple[str, bool, bool]] = []
    for name, layer in layers:
        if type(layer) is Linear:
            plan.append((name, layer.bias, False))
        elif type(layer) is ReLU and plan and not plan[-1][2]:
            plan[-1] = (*plan[-1][:2], True)
        else:
            return None
    return tuple(plan) or None


def _as_one_node(layers, params, x, in_axis) -> Any:
    """A chain of Linears and ReLUs as one :class:`StackedMLP` node (gradients recorded,
    eager mode), or ``NotImplemented`` for any other chain or input."""
    plan = _plan(layers)
    if plan is None or not isinstance(x, torch.Tensor):
        return NotImplemented
    # Forward-mode AD (fwAD.dual_level: torch's own counter) needs each op's rule, and
    # autocast each op's cast, which the node's backward would not mirror.
    if fwAD._current_level >= 0 or torch.is_autocast_enabled(x.device.type):
        return NotImplemented
    tensors = []
    for name, has_bias, _ in plan:
        tensors.append(params[f"{name}.weight"])
        if has_bias:
            tensors.append(params[f"{name}.bias"])
    w = tensors[0]
    n, features = w.shape[0], w.shape[2]
    if x.dim() < (1 if in_axis is None else 2) or x.shape[-1] != features:
        return NotImplemented  # the lifted vmap gives the error, naming the layer
    for name, *_ in plan:
        weight = params[f"{name}.weight"]
        if weight.dtype != x.dtype or weight.shape[2] != features:
            return NotImplemented
        features = weight.shape[1]
    if not (x.requires_grad or any(t.requires_grad for t in tensors)):
        return NotImplemented
    x3, lead = members_3d(x, n, in_axis)
    out = StackedMLP.apply(tuple(p[1:] for p in plan), x3, *tensors)
    return out.reshape(n, *lead, features)
