"""Masked-sparse linear layers: :class:`SparseLinear` and its inference form
:class:`CompressedLinear`.

``SparseLinear`` computes ``y = x @ (W * M).T + b`` with a boolean mask ``M`` kept as
state (never trained): the weight's gradient is zero where the mask is. Two kernels give
the same result:

* **masked dense** (``_MaskedLinear``, an autograd Function with ``setup_context``, a vmap
  rule and ``jvp``): one masked weight per call, then ``F.linear``. It runs under every
  transform (``vmap(grad)`` per-sample gradients, ``jacfwd``, ``torch.compile``). The
  forward itself computes ``F.linear(x, W * M, b)``, so a transform that ignores the
  custom backward (``torch.compile(grad(f))`` in torch 2.13) still differentiates a
  masked product: the gradient of the pruned weights stays exactly zero.
* **CSR** (``_CSRValuesLinear``, eager mode on the CPU, plain tensors only): the kept weights
  are gathered into a CSR matrix whose indices are computed once per mask and cached,
  the forward is a sparse-dense product (``torch.addmm`` with the CSR weight), the input
  gradient the transposed product, and the weight gradient is computed at the kept
  positions only (``torch.sparse.sampled_addmm``, SDDMM), then scattered into the dense
  gradient. No sparse tensor ever enters a pytree or a ``torch.func`` transform.

``kernel='auto'`` takes the CSR kernel where it measured faster on the CPU: a mask at or
above ``crossover`` sparsity (default 0.9, see NOTES.md for the measurements), eager mode,
CPU tensors.

``CompressedLinear`` is the inference form made by :func:`transforms.compress`: the
kept values as the only weight param, the CSR indices (int32) as state. ``fm.apply`` on it
builds the CSR matrix from its parts (no conversion per call) in eager mode and scatters
the values into a dense weight under transforms and compile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import funcmodels as fm
from funcmodels.extend import layer_error, name_hash, positive_int, torch_signature

from ._kernels import (
    _pattern,
    _plain,
    csr_linear,
    csr_values_linear,
    dense_weight,
    masked_linear,
)

PATTERNS = ("unstructured", "2:4")
"""The sparsity patterns of :class:`SparseLinear` and :func:`sparsify`."""
INIT_MASKS = ("magnitude", "random")
"""How :class:`SparseLinear` draws its initial mask (its ``init_mask`` field)."""
KERNELS = ("auto", "dense", "sparse")
"""The kernels :class:`SparseLinear` may run (its ``kernel`` field)."""
CROSSOVER = 0.9
"""The default sparsity from which ``kernel='auto'`` takes the CSR kernel (measured, see
NOTES.md)."""


# -- masks ----------------------------------------------------------------------------------


def kept_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a mask of ``sparsity`` keeps: ``numel - round(s * n)``.

    Arguments:
        numel: the number of weights.
        sparsity: the fraction pruned, in ``[0, 1]``.

    Returns:
        The number kept.
    """
    return numel - int(round(sparsity * numel))


def magnitude_mask(scores: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    """The mask keeping the largest ``scores`` (ties: the lower flat index first).

    ``pattern='unstructured'`` keeps ``kept_count(numel, sparsity)`` of the whole tensor;
    ``'2:4'`` keeps the two largest of every four consecutive entries of a row (the
    sparsity is then 0.5 whatever ``sparsity`` says).

    Arguments:
        scores: a tensor of any shape (for ``'2:4'`` its last dim divisible by 4); the
            largest entries are kept.
        sparsity: the fraction to prune, in ``[0, 1]``.
        pattern: ``'unstructured'`` or ``'2:4'``.

    Returns:
        A ``bool`` tensor of ``scores``' shape, ``True`` where kept.
    """
    if pattern == "2:4":
        groups = scores.reshape(*scores.shape[:-1], -1, 4)
        order = torch.argsort(groups, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :2], True)
        return keep.reshape(scores.shape)
    flat = scores.reshape(-1)
    k = kept_count(flat.numel(), sparsity)
    if scores.device.type == "meta":  # shapes only: no values to rank
        return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k == flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    # The k-th largest score by selection (linear time, unlike a sort of every weight);
    # of the entries equal to it, the first ones by index make up the count.
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    keep = flat > threshold
    tied = flat == threshold
    keep |= tied & (torch.cumsum(tied, 0) <= k - int(keep.sum()))
    return keep.reshape(scores.shape)


@torch_signature
@dataclass(frozen=True, init=False)
class SparseLinear(fm.nn.Linear):
    """``y = x @ (weight * mask).T + bias``: a :class:`~funcmodels.nn.Linear` whose
    weights outside a fixed boolean mask are zero and stay zero.

    Arguments:
        in_features: size of the last input dimension; ``None`` (or left out) to infer it
            from the input shape given to :func:`funcmodels.init`.
        out_features: size of the last output dimension.
        bias: whether to add a learned bias.
        sparsity: the fraction of weights the initial mask prunes, in ``[0, 1)``:
            ``round(sparsity * in * out)`` of them (ignored by ``'2:4'``, which prunes half).
        pattern: ``'unstructured'`` (any positions) or ``'2:4'`` (two of every four
            consecutive weights of a row are kept; ``in_features`` must divide by 4).
        init_mask: ``'magnitude'`` (keep the largest initial weights) or ``'random'``
            (positions drawn from the layer's key).
        kernel: ``'auto'`` (the CSR kernel in eager mode on the CPU when the mask's
            sparsity is at least ``crossover``, the masked dense one otherwise), ``'dense'``
            or ``'sparse'`` (the CSR kernel wherever it can run: eager, plain CPU tensors;
            the masked dense kernel elsewhere).
        crossover: the sparsity from which ``'auto'`` takes the CSR kernel.

    Params: ``weight (out_features, in_features)``, ``bias (out_features,)``, initialised as
    torch's Linear (pruned entries keep their values but never contribute or change).
    State: ``mask (out_features, in_features)``, bool, from the init key.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``, as
    :class:`~funcmodels.nn.Linear`.
    """

    inferred_fields: ClassVar[tuple[str, ...]] = ("in_features",)

    in_features: int | None = None
    out_features: int
    bias: bool = True
    sparsity: float = 0.9
    pattern: str = "unstructured"
    init_mask: str = "magnitude"
    kernel: str = "auto"
    crossover: float = CROSSOVER

    def __post_init__(self):
        super().__post_init__()
        layer = "SparseLinear"
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"{layer}: sparsity must be a number in [0, 1), got {s!r}")
        object.__setattr__(self, "sparsity", float(s))
        for name, value, allowed in (
            ("pattern", self.pattern, PATTERNS),
            ("init_mask", self.init_mask, INIT_MASKS),
            ("kernel", self.kernel, KERNELS),
        ):
            if value not in allowed:
                raise ValueError(f"{layer}: {name} must be one of {list(allowed)}, got {value!r}")
        c = self.crossover
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
            raise ValueError(f"{layer}: crossover must be a number in [0, 1], got {c!r}")
        object.__setattr__(self, "crossover", float(c))
        if self.pattern == "2:4" and self.in_features is not None and self.in_features % 4:
            raise ValueError(
                f"{layer}: the '2:4' pattern needs in_features divisible by 4, got "
                f"{self.in_features}"
            )

    def state_shapes(self):
        return {"mask": ((self.out_features, self.in_features), torch.bool)}

    def init_state(self, key, *, dtype, device):
        shape = (self.out_features, self.in_features)
        if self.init_mask == "magnitude":
            # The weight init_params draws from the same key: its magnitudes rank the entries.
            scores = self.init_params(key, dtype=torch.float32, device=device)["weight"].abs()
        else:
            scores = fm.random.uniform(fm.fold_in(key, name_hash("mask")), shape, device=device)
        return {"mask": magnitude_mask(scores, self.sparsity, self.pattern)}

    def resolve(self, in_shape, path: str = ""):
        resolved = super().resolve(in_shape, path)
        if resolved is not self:
            resolved.__post_init__()  # the 2:4 width check, now that the width is known
        return resolved

    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        """Read a ``torch.nn.utils.prune``-pruned ``nn.Linear``: ``weight_orig`` is the
        weight, ``weight_mask`` (0/1 floats) the mask."""
        orig, mask = f"{prefix}weight_orig", f"{prefix}weight_mask"
        if orig in entries and mask in entries and f"{prefix}weight" not in entries:
            entries[f"{prefix}weight"] = entries.pop(orig)
            m = entries.pop(mask)
            entries[f"{prefix}mask"] = m.bool() if isinstance(m, torch.Tensor) else m

    def forward(self, ctx: fm.Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (*, {self.in_features}), got shape {tuple(x.shape)}")
        weight = ctx.param("weight")
        bias = ctx.param("bias") if self.bias else None
        mask = ctx.buffer("mask")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape[-2:]):
            raise TypeError(
                f"expected the state 'mask' to be a bool tensor of shape "
                f"{(self.out_features, self.in_features)}, got {mask.dtype} of shape "
                f"{tuple(mask.shape)}"
            )
        if self._use_csr(ctx, x, weight, bias, mask):
            return csr_linear(x, weight, bias, mask)
        return masked_linear(x, weight, bias, mask)

    def _use_csr(self, ctx, x, weight, bias, mask) -> bool:
        if self.kernel == "dense" or ctx.mode != "eager" or x.numel() == 0:
            return False
        if not (x.device.type == weight.device.type == "cpu" and _plain(x, weight, bias, mask)):
            return False
        if x.dtype not in (torch.float32, torch.float64) or x.dtype != weight.dtype:
            return False
        if self.kernel == "sparse":
            return True
        return _pattern(mask).nnz <= kept_count(mask.numel(), self.crossover)


# -- CompressedLinear -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressedLinear(fm.Spec):
    """The inference form of :class:`SparseLinear` (made by :func:`transforms.compress`):
    the kept weights only, in CSR order.

    Arguments:
        in_features: the dense weight's number of columns (the input size).
        out_features: the dense weight's number of rows (the output size).
        nnz: how many weights are kept.
        bias: whether there is a bias.

    Params: ``values (nnz,)`` (the kept weights, row by row), ``bias (out_features,)``.
    State: ``crow_indices (out_features + 1,)`` and ``col_indices (nnz,)``, int32.

    Shapes: input ``(*, in_features)``, output ``(*, out_features)``.

    Also the fastest way to train with a fixed mask: in eager mode on the CPU the
    gradient of ``values`` is an ``(nnz,)`` tensor from an SDDMM at the kept positions,
    and the forward and input gradient are sparse products, so no dense weight or dense
    gradient is ever formed (under ``torch.func`` transforms and compile the values are
    scattered into a dense weight, with the same results).
    """

    in_features: int
    out_features: int
    nnz: int
    bias: bool = True

    def __post_init__(self):
        positive_int("CompressedLinear", "in_features", self.in_features)
        positive_int("CompressedLinear", "out_features", self.out_features)
        n = self.nnz
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.size:
            raise ValueError(f"CompressedLinear: nnz must be an int in [0, {self.size}], got {n!r}")

    @property
    def size(self) -> int:
        return self.in_features * self.out_features

    def param_shapes(self):
        shapes = {"values": (self.nnz,)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, key, *, dtype, device):
        bound = 1.0 / math.sqrt(self.in_features)
        return {
            name: fm.random.uniform(
                fm.fold_in(key, name_hash(name)), shape, dtype, device, minval=-bound, maxval=bound
            )
            for name, shape in self.param_shapes().items()
        }

    def state_shapes(self):
        return {
            "crow_indices": ((self.out_features + 1,), torch.int32),
            "col_indices": ((self.nnz,), torch.int32),
        }

    def init_state(self, key, *, dtype, device):
        # The first nnz positions in row-major order: a valid pattern to load values into.
        flat = torch.arange(self.nnz, device=device)
        rows = torch.bincount(flat // self.in_features, minlength=self.out_features)
        crow = torch.zeros(self.out_features + 1, dtype=torch.int32, device=device)
        crow[1:] = rows.cumsum(0)
        return {"crow_indices": crow, "col_indices": (flat % self.in_features).int()}

    def out_shape(self, in_shape, path: str = "", record: dict | None = None):
        if not in_shape or in_shape[-1] not in (self.in_features, ...):
            raise layer_error(
                self, path, f"expected input (*, {self.in_features}), got shape {tuple(in_shape)}"
            )
        return (*in_shape[:-1], self.out_features)

    def forward(self, ctx: fm.Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (*, {self.in_features}), got shape {tuple(x.shape)}")
        values = ctx.param("values")
        bias = ctx.param("bias") if self.bias else None
        crow, col = ctx.buffer("crow_indices"), ctx.buffer("col_indices")
        shape = (self.out_features, self.in_features)
        sparse_ok = (
            ctx.mode == "eager"
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)  # MKL's sparse kernels' dtypes
            and not torch.is_autocast_enabled("cpu")
            and _plain(x, values, bias, crow, col)
            and x.dtype == values.dtype
        )
        if sparse_ok:  # trains the kept values too: sparse products and an SDDMM
            return csr_values_linear(x, values, bias, crow, col, shape)
        return F.linear(x, dense_weight(values, crow, col, shape), bias)


fm.register_layer("sparse_linear", SparseLinear)
fm.register_layer("compressed_linear", CompressedLinear)
