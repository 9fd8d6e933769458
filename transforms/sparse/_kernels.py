"""The kernels of :mod:`transforms.sparse`: the masked dense autograd Function, the CSR
kernel with its cached index patterns, and the scatter of CSR parts into a dense weight."""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# -- the masked dense kernel ------------------------------------------------------------------


class _MaskedLinear(torch.autograd.Function):
    """``F.linear(x, weight * mask, bias)``; returns the output and the masked weight (a
    non-differentiable second output, so the backward reuses it: the mask is applied
    once per call, not once per product)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, mask):
        # where, not a product: no float copy of the mask, and the traced forward's own
        # gradient is masked too (where a transform ignores the custom backward)
        masked = torch.where(mask, weight, 0.0)
        return F.linear(x, masked, bias), masked

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, mask = inputs
        masked = output[1]
        ctx.mark_non_differentiable(masked)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, masked, mask)
        ctx.save_for_forward(x, masked, mask)

    @staticmethod
    def backward(ctx, grad_out, _grad_masked):
        x, masked, mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ masked
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w = torch.where(mask, g2.t() @ x.reshape(-1, x.shape[-1]), 0.0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _dmask):
        x, masked, mask = ctx.saved_tensors
        out = None
        if dx is not None:
            out = F.linear(dx, masked)
        if dweight is not None:
            term = F.linear(x, torch.where(mask, dweight, 0.0))
            out = term if out is None else out + term
        if dbias is not None:
            out = dbias.expand(x.shape[:-1] + dbias.shape) if out is None else out + dbias
        return out, None  # the masked weight is a non-differentiable output


def masked_linear(x, weight, bias, mask) -> torch.Tensor:
    """``F.linear(x, weight * mask, bias)`` with masked weight gradients, under any transform."""
    return _MaskedLinear.apply(x, weight, bias, mask)[0]


# -- the CSR kernel ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    """A mask's nonzero pattern, in the index forms the CSR kernel needs."""

    flat: torch.Tensor  # (nnz,) row-major flat indices of the kept weights
    crow: torch.Tensor  # (out + 1,) CSR row pointers
    col: torch.Tensor  # (nnz,) CSR column indices

    @property
    def nnz(self) -> int:
        return self.flat.numel()


_PATTERNS: dict[int, tuple[Any, int, _Pattern]] = {}


def _pattern(mask: torch.Tensor) -> _Pattern:
    """The CSR pattern of ``mask``, computed once per mask tensor (and version) and cached
    for as long as the tensor lives: training keeps one state, so one computation."""
    key = id(mask)
    hit = _PATTERNS.get(key)
    if hit is not None and hit[0]() is mask and hit[1] == mask._version:
        return hit[2]
    out_f, in_f = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)
    crow = torch.zeros(out_f + 1, dtype=torch.int64, device=mask.device)
    crow[1:] = torch.bincount(flat // in_f, minlength=out_f).cumsum(0)
    pattern = _Pattern(flat, crow, flat % in_f)
    if hit is None:
        weakref.finalize(mask, _PATTERNS.pop, key, None)
    _PATTERNS[key] = (weakref.ref(mask), mask._version, pattern)
    return pattern


def csr_matrix(crow, col, values, shape) -> torch.Tensor:
    """A CSR tensor from trusted parts (no invariant checks), without torch's notice that
    CSR support is in beta (which it prints on the first use in each process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


_TRANSPOSED: dict[int, tuple[Any, Any, tuple, tuple[torch.Tensor, ...]]] = {}


def _transposed(crow: torch.Tensor, col: torch.Tensor, shape) -> tuple[torch.Tensor, ...]:
    """``(t_perm, t_crow, t_col)``: the CSR pattern of the transposed weight, computed once
    per index state (cached while ``col`` lives and neither index tensor is written)."""
    key = id(col)
    hit = _TRANSPOSED.get(key)
    version = (col._version, crow._version, tuple(shape))
    if hit is not None and hit[0]() is col and hit[1]() is crow and hit[2] == version:
        return hit[3]
    out_f, in_f = shape
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(out_f, device=col.device), counts)
    cols = col.to(torch.int64)
    t_perm = torch.argsort(cols * out_f + rows)
    t_crow = torch.zeros(in_f + 1, dtype=torch.int64, device=col.device)
    t_crow[1:] = torch.bincount(cols, minlength=in_f).cumsum(0)
    out = (t_perm, t_crow, rows.index_select(0, t_perm))
    if hit is None:
        weakref.finalize(col, _TRANSPOSED.pop, key, None)
    _TRANSPOSED[key] = (weakref.ref(col), weakref.ref(crow), version, out)
    return out


class _CSRValuesLinear(torch.autograd.Function):
    """``b + x @ W.T`` for ``x (B, in)``, ``W`` given by its kept ``values`` in CSR order:
    the forward and the input gradient by sparse products (the latter through the
    transposed pattern), the gradient of ``values`` by SDDMM at the kept positions, a
    ``(nnz,)`` tensor: no dense weight or dense gradient here."""

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, shape):
        csr = csr_matrix(crow, col, values, shape)
        if bias is None:
            y = torch.sparse.mm(csr, x.t()).t()
        else:
            y = torch.addmm(bias[:, None], csr, x.t()).t()
        ctx.save_for_backward(x, values, crow, col)
        ctx.shape, ctx.has_bias = shape, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, values, crow, col = ctx.saved_tensors
        out_f, in_f = ctx.shape
        grad_x = grad_v = grad_b = None
        if ctx.needs_input_grad[0]:
            t_perm, t_crow, t_col = _transposed(crow, col, ctx.shape)
            csr_t = csr_matrix(t_crow, t_col, values.index_select(0, t_perm), (in_f, out_f))
            grad_x = torch.sparse.mm(csr_t, grad_out.t()).t()
        if ctx.needs_input_grad[1]:
            csr = csr_matrix(crow, col, values, ctx.shape)
            kept = torch.sparse.sampled_addmm(csr, grad_out.t().contiguous(), x, beta=0.0)
            grad_v = kept.values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_v, grad_b, None, None, None


def csr_values_linear(x, values, bias, crow, col, shape) -> torch.Tensor:
    """The CSR product with autograd through ``values`` (eager, CPU, float32/64)."""
    lead = x.shape[:-1]
    y = _CSRValuesLinear.apply(x.reshape(-1, x.shape[-1]), values, bias, crow, col, shape)
    return y.reshape(*lead, y.shape[-1])


def csr_linear(x, weight, bias, mask) -> torch.Tensor:
    """``F.linear(x, weight * mask, bias)`` by the CSR kernel (eager, plain tensors): the
    kept weights gathered (autograd scatters their gradients back into a dense one)."""
    p = _pattern(mask)
    values = weight.reshape(-1).index_select(0, p.flat)
    return csr_values_linear(x, values, bias, p.crow, p.col, tuple(weight.shape))


def _plain(*tensors: torch.Tensor | None) -> bool:
    """No tensor is a functorch wrapper (vmap/grad/jvp) or a subclass (fake, proxy, ...)."""
    return all(
        t is None
        or (type(t) is torch.Tensor or type(t) is torch.nn.Parameter)
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


def dense_weight(values, crow, col, shape) -> torch.Tensor:
    """The dense ``(out, in)`` weight of CSR parts (zeros elsewhere); differentiable in
    ``values`` and made of fixed-shape ops, so it runs under transforms and compile."""
    out_f, in_f = shape
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    rows = torch.repeat_interleave(
        torch.arange(out_f, device=values.device), counts, output_size=values.shape[-1]
    )
    flat = rows * in_f + col.to(torch.int64)
    return values.new_zeros(out_f * in_f).scatter(0, flat, values).view(out_f, in_f)
