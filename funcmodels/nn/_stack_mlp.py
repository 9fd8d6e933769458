"""A Stack of MLPs (``Linear`` layers, each maybe followed by ``ReLU``) as one autograd node.

Used by the Stack's direct path (:func:`._stack_chain.stacked_chain`) in eager mode when
gradients are recorded. The products and their gradients are autograd's own kernels with
autograd's own formulas (``baddbmm``/``bmm``, ``threshold_backward``, the bias gradient
summed over the batch), so the values are those of the layer-by-layer graph bit for bit;
what changes is where they are written: each ReLU runs in place on its product, and its
backward masks in place the gradient this node has just made. A Stack's intermediates are
``n`` times the loop's; made fresh for every op, the allocator hands them back to the
system and faults them in again on the next step, which cost the Stack its step against
a loop over the members.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_threshold_backward_into = torch.ops.aten.threshold_backward.grad_input


def batched_product(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``n`` Linears at once: ``h (n, B, in)``, ``w (n, out, in)``, ``b (n, out)`` or
    ``None`` give ``(n, B, out)`` (one ``baddbmm``: vmap's rule for ``linear`` is a
    ``bmm`` and a separate bias add)."""
    wt = w.transpose(1, 2)
    return torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)


def members_3d(x: torch.Tensor, n: int, in_axis: int | None):
    """``(x3, lead)``: the input as ``(n, rows, features)`` for ``n`` members (shared by
    all for ``in_axis=None``: an expanded view, no copy) and its leading shape, which the
    members' outputs take back with ``out.reshape(n, *lead, out_features)``."""
    if in_axis is None:
        return x.reshape(1, -1, x.shape[-1]).expand(n, -1, -1), x.shape[:-1]
    return x.reshape(n, -1, x.shape[-1]), x.shape[1:-1]


def _unpack(plan: Sequence[tuple[bool, bool]]):
    """``(weight index, bias index or None, relu)`` per Linear in the flat tensors."""
    i = 0
    for has_bias, relu in plan:
        yield i, i + 1 if has_bias else None, relu
        i += 2 if has_bias else 1


def chain_out_of_place(
    plan: Sequence[tuple[bool, bool]], x3: torch.Tensor, tensors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The chain op by op, nothing in place (the differentiable form)."""
    h = x3
    for iw, ib, relu in _unpack(plan):
        h = batched_product(h, tensors[iw], None if ib is None else tensors[ib])
        if relu:
            h = torch.relu(h)
    return h


class StackedMLP(torch.autograd.Function):
    """``StackedMLP.apply(plan, x3, *tensors)``: ``plan`` is ``(has_bias, relu)`` per
    Linear, ``x3`` the input ``(n, B, in)``, ``tensors`` each Linear's stacked weight
    ``(n, out, in)`` and, where it has one, bias ``(n, out)``; gives ``(n, B, out)``."""

    @staticmethod
    def forward(ctx, plan, x3, *tensors):
        h, ins = x3, []
        for iw, ib, relu in _unpack(plan):
            ins.append(h)
            h = batched_product(h, tensors[iw], None if ib is None else tensors[ib])
            if relu:
                h = torch.relu_(h)
        ctx.plan = plan
        # the layers' inputs after the first are this node's own (ReLU results among them)
        ctx.save_for_backward(x3, *tensors, *ins[1:], h if plan[-1][1] else None)
        return h

    @staticmethod
    def backward(ctx, g):
        plan = ctx.plan
        saved = ctx.saved_tensors
        m = len(saved) - len(plan)  # x3 and the tensors come first
        x3, tensors, ins = saved[0], saved[1:m], (saved[0], *saved[m:])
        needs = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph: differentiate the differentiable form
            return (None, *_differentiable_grads(plan, x3, tensors, needs, g))
        grads: list[torch.Tensor | None] = [None] * (1 + len(tensors))
        ours = False  # g was made here, so it may be masked in place
        for j, (iw, ib, relu) in reversed(list(enumerate(_unpack(plan)))):
            if relu:  # ins[j + 1] is this layer's result (the output for the last)
                if ours:
                    g = _threshold_backward_into(g, ins[j + 1], 0, grad_input=g)
                else:
                    g = torch.ops.aten.threshold_backward(g, ins[j + 1], 0)
            # autograd's formulas for baddbmm of the transposed weight
            if ib is not None and needs[1 + ib]:
                grads[1 + ib] = g.sum(1)
            if needs[1 + iw]:
                grads[1 + iw] = torch.bmm(ins[j].transpose(1, 2), g).transpose(1, 2)
            if j or needs[0]:
                g, ours = torch.bmm(g, tensors[iw]), True
        if needs[0]:
            grads[0] = g
        return (None, *grads)


def _differentiable_grads(plan, x3, tensors, needs, g) -> list[torch.Tensor | None]:
    """The input gradients as a graph of their own (a gradient of a gradient)."""
    inputs = (x3, *tensors)
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    with torch.enable_grad():
        got = iter(
            torch.autograd.grad(chain_out_of_place(plan, x3, tensors), wanted, g, create_graph=True)
        )
    return [next(got) if need else None for need in needs]
