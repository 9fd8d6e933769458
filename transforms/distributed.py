"""Beyond one process with :mod:`torch.distributed`: ``transforms.distributed``.

The engine is torch's own (gloo on the CPU, NCCL on GPUs), launched with ``torchrun`` as
PyTorch users already do; what this module adds is the functional side:

* :func:`all_reduce` and :func:`broadcast` of any pytree of tensors (Params, gradients,
  optimiser state), coalesced into one flat buffer per dtype and device: one collective,
  not one per leaf. The inputs are not modified; new tensors come back.
* :func:`data_parallel`: a data-parallel gradient step out of a single-process loss.
  Every rank passes the same global batch and takes its own contiguous shard; the
  gradients of the replicated params are summed over the ranks with each rank's loss
  weighted by its share of the batch, so for a loss that is a mean of per-example terms
  they equal the gradient of that loss on the global batch, and identical updates keep
  the params identical.
* Expert parallelism: :func:`expert_parallel` turns every dropless :class:`MoE` of a
  model into an :class:`ExpertParallelMoE` holding this rank's ``E / world`` experts;
  tokens travel to their experts' ranks and back with ``all_to_all_single`` (autograd
  through torch's functional collectives). :func:`gather` brings the experts back into one
  single-process model (for saving; a single-process file starts a distributed run
  through :func:`expert_parallel` again).

Expert parallelism exchanges tokens over the default process group (``dist.group.WORLD``).
A process group must be initialised first (``torch.distributed.init_process_group``;
``torchrun`` sets the environment it reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

import funcmodels as fm

from ._expert_parallel import (
    ExpertParallelMoE,
    _group_size,
    _rank_and_world,
    expert_parallel,
    gather,
    local_names,
)

__all__ = [
    "ExpertParallelMoE",
    "all_reduce",
    "broadcast",
    "data_parallel",
    "expert_parallel",
    "gather",
    "local_names",
    "shard",
]

_OPS = ("mean", "sum")


def _buckets(leaves: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Leaf indices by (dtype, device): one flat buffer each."""
    out: dict[tuple, list[int]] = {}
    for i, t in enumerate(leaves):
        out.setdefault((t.dtype, t.device), []).append(i)
    return out


def _coalesced(tree: Any, where: str, collective: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    leaves, spec = pytree.tree_flatten(tree)
    for t in leaves:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"transforms.distributed.{where}: expected a pytree of tensors, found a "
                f"{type(t).__name__} leaf"
            )
    out: list[torch.Tensor | None] = [None] * len(leaves)
    for idx in _buckets(leaves).values():
        # A new buffer (the inputs stay as they are), outside autograd: the collectives
        # are not differentiable.
        flat = torch.cat([leaves[i].detach().reshape(-1) for i in idx])
        flat = collective(flat)
        start = 0
        for i in idx:
            n = leaves[i].numel()
            out[i] = flat[start : start + n].view(leaves[i].shape)
            start += n
    return pytree.tree_unflatten(out, spec)


def all_reduce(tree: Any, op: str = "mean", group=None) -> Any:
    """The sum or mean over the ranks of every tensor of ``tree``, one collective per dtype
    and device (the leaves are packed into one flat buffer). New tensors come back, of the
    leaves' dtypes: the mean of an integer leaf is floor-divided (exact where the ranks
    agree, as optimiser step counts do); the result is not differentiable. Under
    ``torch.compile`` it uses torch's functional collectives, which dynamo traces.

    Arguments:
        tree: a pytree of tensors (Params, gradients, an optimiser state).
        op: ``'mean'`` or ``'sum'``.
        group (torch.distributed.ProcessGroup | None): the group (``None``: the default).

    Returns:
        A tree of ``tree``'s structure, each tensor of its leaf's shape and dtype.

    Raises:
        TypeError: a leaf is not a tensor.
        ValueError: ``op`` is neither ``'mean'`` nor ``'sum'``.
        RuntimeError: no process group is initialised.
    """
    if op not in _OPS:
        raise ValueError(
            f"transforms.distributed.all_reduce: op must be 'mean' or 'sum', got {op!r}"
        )
    world = _group_size(group, "all_reduce")

    def reduce(flat: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            from torch.distributed import _functional_collectives as funcol

            flat = funcol.all_reduce(flat, "sum", group or dist.group.WORLD)
        else:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if op == "sum":
            return flat
        if flat.is_floating_point() or flat.is_complex():
            return flat / world
        return torch.div(flat, world, rounding_mode="floor")

    return _coalesced(tree, "all_reduce", reduce)


def broadcast(tree: Any, src: int = 0, group=None) -> Any:
    """Every tensor of ``tree`` as rank ``src`` holds it, on every rank (one collective per
    dtype and device).

    Arguments:
        tree: a pytree of tensors, of the same structure and shapes on every rank.
        src: the rank whose values are sent.
        group (torch.distributed.ProcessGroup | None): the group (``None``: the default).

    Returns:
        A new tree of ``tree``'s structure holding rank ``src``'s values.

    Raises:
        TypeError: a leaf is not a tensor.
        RuntimeError: no process group is initialised.
    """
    _group_size(group, "broadcast")

    def send(flat: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            from torch.distributed import _functional_collectives as funcol

            return funcol.broadcast(flat, src, group or dist.group.WORLD)
        dist.broadcast(flat, src=src, group=group)
        return flat

    return _coalesced(tree, "broadcast", send)


def shard(x: torch.Tensor, rank: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's contiguous share of dim 0 of ``x`` (the first ``n % world`` ranks get one
    row more). ``rank`` and ``world`` default to the default process group's.

    Arguments:
        x: a tensor with examples on dim 0, shape ``(n, *)``.
        rank: this rank; ``None`` for the default process group's.
        world: the number of ranks; ``None`` for the default process group's.

    Returns:
        A view of ``x`` of shape ``(n // world + (rank < n % world), *)``.

    Raises:
        TypeError: ``rank`` or ``world`` is not an int.
        ValueError: ``x`` is not a tensor with a dim 0, or ``rank`` is out of range.
    """
    rank, world = _rank_and_world(rank, world, "shard")
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        what = "a 0-dim tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"transforms.distributed.shard: expected a tensor with examples on dim 0, got {what}"
        )
    n = x.shape[0]
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return x[start : start + base + (1 if rank < extra else 0)]


def data_parallel(
    loss: Callable[..., torch.Tensor], group=None
) -> Callable[..., tuple[fm.Params, torch.Tensor]]:
    """A data-parallel gradient step from a single-process ``loss(params, *batch,
    **kwargs)`` (a scalar mean over the batch).

    The returned function takes the *global* batch on every rank (the positional tensors,
    examples on dim 0, are sharded; other positional values and every keyword are passed
    to each rank as they are), computes the gradient of this rank's shard's loss weighted by
    the shard's share of the batch with torch's autograd (so collectives with autograd
    inside the model, an expert-parallel MoE's, work), sums the gradients of the
    replicated params over the ranks (coalesced) and returns ``(grads, global mean
    loss)``. The experts of an :class:`ExpertParallelMoE` are not replicated: their
    gradients already gather every rank's tokens (through the backward of the exchange)
    and stay on their rank. Applying the same optimiser update on every rank keeps the
    replicated params identical.

    The result equals the single-process gradient of ``loss`` on the global batch when the
    loss is a mean of per-example terms and draws no randomness. Otherwise it is the
    gradient of the shards' losses weighted by their sizes: a batch statistic (the MoE's
    load-balance loss, BatchNorm's batch statistics) is computed per shard, as it is on
    every data-parallel engine, and a key passed in reaches every rank alike (fold the
    rank in, ``fm.fold_in(key, dist.get_rank())``, for independent dropout masks).

    Arguments:
        loss: ``loss(params, *batch, **kwargs)`` returning a scalar tensor, the mean over
            the batch.
        group (torch.distributed.ProcessGroup | None): the group (``None``: the default).

    Returns:
        ``step(params, *batch, **kwargs) -> (grads, loss)``: ``grads`` a
            :class:`~funcmodels.Params` like ``params``, ``loss`` a 0-dim tensor.

    Raises:
        TypeError: ``loss`` is not callable (at once).
        ValueError: when called, batch tensors without a dim 0 or of different lengths,
            fewer examples than ranks, or a loss that is not a scalar.
    """
    if not callable(loss):
        raise TypeError(
            f"transforms.distributed.data_parallel: loss must be callable, got {loss!r}"
        )

    def step(params: fm.Params, *batch: Any, **kwargs: Any) -> tuple[fm.Params, torch.Tensor]:
        world = _group_size(group, "data_parallel")
        rank = dist.get_rank(group)
        tensors = [b for b in batch if isinstance(b, torch.Tensor)]
        if any(b.dim() == 0 for b in tensors):
            raise ValueError(
                "transforms.distributed.data_parallel: the batch tensors need the examples "
                "on dim 0, got a 0-dim tensor"
            )
        sizes = {b.shape[0] for b in tensors}
        if len(sizes) != 1:
            raise ValueError(
                "transforms.distributed.data_parallel: the batch tensors must have the same "
                f"number of examples on dim 0, got {sorted(sizes)}"
            )
        n = sizes.pop()
        if n < world:
            raise ValueError(
                f"transforms.distributed.data_parallel: a batch of {n} examples cannot give "
                f"each of the {world} ranks one"
            )
        local = [shard(b, rank, world) if isinstance(b, torch.Tensor) else b for b in batch]
        base, extra = divmod(n, world)
        share = (base + (rank < extra)) / n  # this rank's rows, as shard gives them
        leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
        value = loss(leaves, *local, **kwargs)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            what = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                "transforms.distributed.data_parallel: loss must return a scalar tensor, "
                f"got {what}"
            )
        value = value.reshape(()) * share
        names = list(leaves.flat())
        grads = torch.autograd.grad(value, [leaves[n_] for n_ in names], allow_unused=True)
        flat = {
            n_: torch.zeros_like(leaves[n_]) if g is None else g
            for n_, g in zip(names, grads, strict=True)
        }
        rank_local = local_names(params.spec)
        replicated = {n_: g for n_, g in flat.items() if n_ not in rank_local}
        replicated["__loss__"] = value.detach().reshape(1)
        summed = all_reduce(replicated, op="sum", group=group)
        total = summed.pop("__loss__")[0].clone()  # not a view of the gradients' buffer
        flat.update(summed)
        return fm.Params(params.spec, flat), total

    return step


# -- expert parallelism -------------------------------------------------------------------------
