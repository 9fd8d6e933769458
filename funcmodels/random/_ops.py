"""The operators the generator becomes under :func:`torch.compile`:
``funcmodels::keep_mask``, ``funcmodels::scaled_keep_mask`` (dropout's masks) and
``funcmodels::fold_in`` (a key with an int folded in, as every layer's key is made).

Traced, each would be Philox's rounds in integer tensor ops (~100 per mask, ~60 per
key), which inductor turns into generated C++ kernels: seconds of ``g++`` per compile.
As operators they are extern calls of the eager generator, so the same function of the
key and the same bits. Each takes keys ``(*batch, 2)`` and returns one result per key,
``(*batch, ...)``: that is their vmap rule, so vmap over keys inside a compiled function
gives each key what it gives alone. They are defined with :class:`torch.library.Library`
rather than ``torch.library.custom_op``, whose Python wrappers cost ~30 µs more per call
(~80 against ~115 µs for a 64x128 mask), paid in every compiled step. Registered once
per process, when :mod:`funcmodels.random` is imported (a reload would register twice).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._masks import _keep_mask, _scaled_keep_mask
from ._philox import _STREAM_FOLD, _philox_functional, fold_in

_LIB = torch.library.Library("funcmodels", "FRAGMENT")
_LIB.define("keep_mask(Tensor key, float keep, SymInt[] shape, Device device) -> Tensor")
_LIB.define(
    "scaled_keep_mask(Tensor key, float p, SymInt[] shape, ScalarType dtype, Device device)"
    " -> Tensor"
)
_LIB.define("fold_in(Tensor key, int data) -> Tensor")


def _per_key(key: torch.Tensor, shape, dtype, device, make: Callable) -> torch.Tensor:
    """``make(k)`` (a result of ``shape``) for each key ``k`` of ``key`` ``(*batch, 2)``,
    stacked as ``(*batch, *shape)``."""
    if key.dim() == 1:
        return make(key)
    out = torch.empty((*key.shape[:-1], *shape), dtype=dtype, device=device)
    rows = out.view(math.prod(key.shape[:-1]), *shape)  # -1 is ambiguous for 0 entries
    for i, k in enumerate(key.reshape(-1, 2)):
        rows[i] = make(k)
    return out


def _keep_mask_impl(key, keep, shape, device):
    shape = tuple(shape)
    threshold, n = round(keep * 65536.0), math.prod(shape)
    return _per_key(
        key, shape, torch.bool, device, lambda k: _keep_mask(k, threshold, shape, n, device)
    )


def _scaled_keep_mask_impl(key, p, shape, dtype, device):
    shape = tuple(shape)
    return _per_key(
        key, shape, dtype, device, lambda k: _scaled_keep_mask(k, p, shape, dtype, device)
    )


def _fold_in_impl(key, data):
    if key.dim() == 1:
        return fold_in(key, data)
    d = torch.tensor(data, dtype=torch.int64, device=key.device)
    stream = torch.tensor(_STREAM_FOLD, dtype=torch.int64, device=key.device)
    return _philox_functional(key[..., 0], key[..., 1], d, stream)[..., :2].contiguous()


_LIB.impl("keep_mask", _keep_mask_impl, "CompositeExplicitAutograd")
_LIB.impl("scaled_keep_mask", _scaled_keep_mask_impl, "CompositeExplicitAutograd")
_LIB.impl("fold_in", _fold_in_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("funcmodels::keep_mask", lib=_LIB)
def _(key, keep, shape, device):
    return torch.empty((*key.shape[:-1], *shape), dtype=torch.bool, device=device)


@torch.library.register_fake("funcmodels::scaled_keep_mask", lib=_LIB)
def _(key, p, shape, dtype, device):
    return torch.empty((*key.shape[:-1], *shape), dtype=dtype, device=device)


@torch.library.register_fake("funcmodels::fold_in", lib=_LIB)
def _(key, data):
    return torch.empty_like(key, memory_format=torch.contiguous_format)


def _keys_first(op: Callable) -> Callable:
    """The vmap rule of an operator whose first argument is the keys: the batch dim of
    the keys to the front (one more leading dim of keys), the result batched along 0."""

    def rule(info, in_dims, key, *args):
        if in_dims[0] is None:
            return op(key, *args), None
        return op(key.movedim(in_dims[0], 0), *args), 0

    return rule


for _name in ("keep_mask", "scaled_keep_mask", "fold_in"):
    _op = getattr(torch.ops.funcmodels, _name).default
    torch.library.register_vmap(f"funcmodels::{_name}", _keys_first(_op), lib=_LIB)
