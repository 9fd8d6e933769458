"""Pruning on ``(params, state)``: :func:`sparsify`, :func:`compress`, :func:`decompress`
and the gradual-pruning schedule :func:`polynomial_sparsity`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Collection

import torch

import funcmodels as fm
from funcmodels.extend import layer_name, replace_layers

from .._surgery import model_entries
from ._layers import (
    PATTERNS,
    CompressedLinear,
    SparseLinear,
    dense_weight,
    kept_count,
    magnitude_mask,
)

_PRUNABLE = (fm.nn.Linear, SparseLinear)


def _targets(
    spec: fm.Spec, include: Collection[str] | None, where: str
) -> list[tuple[str, fm.Spec]]:
    layers = {p: s for p, s in spec.walk() if type(s) in _PRUNABLE}
    if include is None:
        return list(layers.items())
    if isinstance(include, str):
        raise TypeError(f"{where}: include must be a collection of layer paths, not a string")
    out = []
    for name in include:
        prefix = f"{name}." if name not in ("", "<root>") else ""
        if prefix not in layers:
            found = dict(spec.walk()).get(prefix)
            what = f"a {found.type_name}" if found is not None else "not a layer of the model"
            raise ValueError(
                f"{where}: include names '{name}', which is {what}; expected a Linear or "
                f"SparseLinear layer, one of {[layer_name(p) for p in layers]}"
            )
        out.append((prefix, layers[prefix]))
    return out


def sparsify(
    params: fm.Params,
    state: fm.State | None = None,
    sparsity: float = 0.9,
    *,
    scope: str = "layer",
    pattern: str = "unstructured",
    include: Collection[str] | None = None,
) -> tuple[fm.Params, fm.State]:
    """Prune a model by weight magnitude: every ``Linear`` (or the layers named in
    ``include``) becomes a :class:`SparseLinear` whose mask keeps its largest weights.

    On a model that is already sparse, the masks are re-pruned to the new sparsity among
    the weights still kept: a pruned weight is never revived (a sparsity below a layer's
    current one leaves its mask as it is), and the spec stays the same (only the masks,
    which are state, change), so an optimiser's state stays valid. Gradual pruning
    converts the model once (``sparsify(params, sparsity=0.0)``: every weight kept), makes
    the optimiser's state for it, then calls this every few steps with the sparsity of
    :func:`polynomial_sparsity`.

    Arguments:
        params: the model's Params.
        state: its State (may be left out for a model without state).
        sparsity: the fraction of weights to prune, in ``[0, 1)``.
        scope: ``'layer'`` (each layer loses ``sparsity`` of its weights) or ``'global'``
            (one magnitude threshold over all the layers together).
        pattern: ``'unstructured'`` or ``'2:4'`` (two of every four consecutive weights of
            a row kept, per layer; ``sparsity`` is then 0.5 whatever is given).
        include: layer paths (``'encoder.fc1'``) to prune; ``None``: every ``Linear`` and
            ``SparseLinear`` the spec tree reaches (a ``Stack``'s members are not).

    Returns:
        ``(params, state)`` of the new spec; the weights are the same tensors' values
            (pruned ones keep their values: the mask zeroes them), the masks are new. The
            inputs are not modified.

    Raises:
        TypeError: ``sparsity`` is not a number.
        ValueError: a value out of range, an unknown ``scope`` or ``pattern``, ``'2:4'`` with
            ``scope='global'``, a model without a layer to prune, or an ``in_features`` that
            ``'2:4'`` cannot divide.
    """
    where = "transforms.sparsify"
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{where}: sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"{where}: scope must be 'layer' or 'global', got {scope!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"{where}: pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    if pattern == "2:4" and scope == "global":
        raise ValueError(f"{where}: the '2:4' pattern is per row, so scope must be 'layer'")
    entries = model_entries(params, state, where)
    targets = _targets(params.spec, include, where)
    if not targets:
        raise ValueError(f"{where}: the model has no Linear or SparseLinear layer to prune")
    sparsity = 0.5 if pattern == "2:4" else float(sparsity)
    scores, old_masks = {}, {}
    for prefix, layer in targets:
        if pattern == "2:4" and layer.in_features % 4:
            raise ValueError(
                f"{where}: layer '{layer_name(prefix)}' has in_features={layer.in_features}, "
                "not divisible by 4 as the '2:4' pattern needs"
            )
        weight = entries[f"{prefix}weight"].detach()
        old = entries.get(f"{prefix}mask")
        old_masks[prefix] = old
        # Pruned weights rank below every kept one (magnitudes are >= 0).
        score = weight.abs().float()
        scores[prefix] = score if old is None else torch.where(old, score, -1.0)
    masks = {}
    if scope == "layer":
        for prefix, score in scores.items():
            kept = magnitude_mask(score, sparsity, pattern)
            masks[prefix] = kept if old_masks[prefix] is None else kept & old_masks[prefix]
    else:
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep = magnitude_mask(flat, sparsity, "unstructured")
        keep &= flat >= 0  # never revive
        start = 0
        for prefix, score in scores.items():
            masks[prefix] = keep[start : start + score.numel()].view(score.shape)
            start += score.numel()
    replaced = {}
    for prefix, layer in targets:
        if type(layer) is SparseLinear:
            # The same spec whenever possible, so that an optimiser's state (made for the
            # params' spec) stays valid through gradual pruning: ``sparsity`` is only the
            # init mask's, and the mask itself is state.
            if layer.pattern != pattern:
                replaced[prefix[:-1]] = dataclasses.replace(layer, pattern=pattern)
        else:
            replaced[prefix[:-1]] = SparseLinear(
                layer.in_features, layer.out_features, layer.bias, sparsity, pattern
            )
        entries[f"{prefix}mask"] = masks[prefix]
    return fm.from_state_dict(replace_layers(params.spec, replaced), entries)


def compress(
    params: fm.Params, state: fm.State, *, crossover: float | None = None
) -> tuple[fm.Params, fm.State]:
    """The inference form of a sparse model: each :class:`SparseLinear` whose mask is at
    least as sparse as the crossover becomes a :class:`CompressedLinear` (the kept weights
    and int32 CSR indices: ``fm.apply`` runs the sparse kernel with no conversion per
    call); any other becomes a plain ``Linear`` with the pruned weights set to zero (below
    the crossover the dense product is the faster one). Outputs are unchanged.

    Arguments:
        params: the Params of a model with :class:`SparseLinear` layers.
        state: its State (holding the masks).
        crossover: the sparsity from which a layer is stored in CSR form; ``None``: each
            layer's own ``crossover`` field.

    Returns:
        ``(params, state)`` of the compressed spec; other layers are untouched, and the
            inputs are not modified. :func:`decompress` turns the CSR layers back.

    Raises:
        ValueError: ``crossover`` out of ``[0, 1]``, or a model without a :class:`SparseLinear`
            layer.
    """
    where = "transforms.compress"
    entries = model_entries(params, state, where)
    if crossover is not None and not 0.0 <= crossover <= 1.0:
        raise ValueError(f"{where}: crossover must be in [0, 1], got {crossover!r}")
    replaced = {}
    for prefix, layer in params.spec.walk():
        if type(layer) is not SparseLinear:
            continue
        weight = entries.pop(f"{prefix}weight")
        mask = entries.pop(f"{prefix}mask")
        nnz = int(mask.sum())
        limit = layer.crossover if crossover is None else crossover
        if nnz <= kept_count(mask.numel(), limit):
            with warnings.catch_warnings():  # torch's notice that CSR support is in beta
                warnings.simplefilter("ignore", UserWarning)
                csr = mask.to_sparse_csr()
            replaced[prefix[:-1]] = CompressedLinear(
                layer.in_features, layer.out_features, nnz, layer.bias
            )
            entries[f"{prefix}values"] = weight.detach().reshape(-1)[mask.reshape(-1)].clone()
            entries[f"{prefix}crow_indices"] = csr.crow_indices().to(torch.int32)
            entries[f"{prefix}col_indices"] = csr.col_indices().to(torch.int32)
        else:
            replaced[prefix[:-1]] = fm.nn.Linear(layer.in_features, layer.out_features, layer.bias)
            entries[f"{prefix}weight"] = weight.detach() * mask
    if not replaced:
        raise ValueError(f"{where}: the model has no SparseLinear layer")
    return fm.from_state_dict(replace_layers(params.spec, replaced), entries)


def decompress(params: fm.Params, state: fm.State) -> tuple[fm.Params, fm.State]:
    """The training form of :func:`compress`'s output: every :class:`CompressedLinear`
    becomes a :class:`SparseLinear` with the dense weight (zeros where pruned) and its mask.
    Layers that ``compress`` stored dense stay plain ``Linear`` layers.

    Arguments:
        params: the Params of a model with :class:`CompressedLinear` layers.
        state: its State (holding the CSR indices).

    Returns:
        ``(params, state)`` of the new spec; the inputs are not modified.

    Raises:
        ValueError: the model has no :class:`CompressedLinear` layer.
    """
    where = "transforms.decompress"
    entries = model_entries(params, state, where)
    replaced = {}
    for prefix, layer in params.spec.walk():
        if type(layer) is not CompressedLinear:
            continue
        values = entries.pop(f"{prefix}values").detach()
        crow = entries.pop(f"{prefix}crow_indices")
        col = entries.pop(f"{prefix}col_indices")
        shape = (layer.out_features, layer.in_features)
        entries[f"{prefix}weight"] = dense_weight(values, crow, col, shape)
        ones = torch.ones(layer.nnz, dtype=torch.bool, device=values.device)
        entries[f"{prefix}mask"] = dense_weight(ones, crow, col, shape)
        # ``sparsity`` only sets the mask a fresh init would draw; [0, 1) is its range
        sparsity = min(1.0 - layer.nnz / layer.size, 1.0 - 1e-9)
        replaced[prefix[:-1]] = SparseLinear(
            layer.in_features, layer.out_features, layer.bias, sparsity
        )
    if not replaced:
        raise ValueError(f"{where}: the model has no CompressedLinear layer")
    return fm.from_state_dict(replace_layers(params.spec, replaced), entries)


def polynomial_sparsity(
    final: float,
    begin_step: int,
    end_step: int,
    *,
    initial: float = 0.0,
    frequency: int = 1,
    power: float = 3.0,
) -> Callable[[int], float]:
    """Gradual pruning's schedule (Zhu & Gupta, 2017): the sparsity at step ``t``,

    ``final + (initial - final) * (1 - (t - begin_step) / (end_step - begin_step)) ** power``

    between ``begin_step`` and ``end_step`` (``initial`` before, ``final`` after), held
    constant between multiples of ``frequency`` steps after ``begin_step`` (prune every
    ``frequency`` steps and fine-tune in between).

    Arguments:
        final: the sparsity reached at ``end_step``, in ``[0, 1)``.
        begin_step: the step where pruning starts.
        end_step: the step where it reaches ``final``, after ``begin_step``.
        initial: the sparsity before ``begin_step``, in ``[0, 1)``.
        frequency: the sparsity changes every ``frequency`` steps, a positive int.
        power: the exponent of the decay.

    Returns:
        ``schedule(step) -> sparsity``, a float, for :func:`sparsify`.

    Raises:
        ValueError: a sparsity out of ``[0, 1)``, a negative step, ``end_step <=
            begin_step`` or ``frequency < 1``.

    Example:
        ```python
        schedule = transforms.polynomial_sparsity(0.9, begin_step=0, end_step=100)
        assert schedule(0) == 0.0 and schedule(100) == 0.9
        ```
    """
    where = "transforms.polynomial_sparsity"
    for name, v in (("final", final), ("initial", initial)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"{where}: {name} must be a number in [0, 1), got {v!r}")
    for name, v in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{where}: {name} must be a non-negative int, got {v!r}")
    if end_step <= begin_step or frequency < 1:
        raise ValueError(
            f"{where}: need begin_step < end_step and frequency >= 1, got {begin_step}, "
            f"{end_step}, {frequency}"
        )
    span = end_step - begin_step

    def schedule(step: int) -> float:
        if step <= begin_step:
            return float(initial)
        if step >= end_step:
            return float(final)
        t = (step - begin_step) // frequency * frequency
        if t == 0:
            return float(initial)
        return float(final + (initial - final) * (1.0 - t / span) ** power)

    return schedule
