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

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

import funcmodels as fm
from funcmodels.extend import cached, replace_layers

from ._routing import route
from ._surgery import model_entries
from .moe import MoE

_OPS = ("mean", "sum")


def _group_size(group, where: str) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"transforms.distributed.{where}: no process group is initialised; call "
            "torch.distributed.init_process_group (torchrun sets the environment it "
            "reads: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"
        )
    return dist.get_world_size(group)


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


def _rank_and_world(rank: int | None, world: int | None, where: str) -> tuple[int, int]:
    """The given rank and world size, the missing ones from the default process group."""
    for name, v in (("rank", rank), ("world_size", world)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(
                f"transforms.distributed.{where}: {name} must be an int, got {type(v).__name__}"
            )
    if world is None or rank is None:
        size = _group_size(None, where)  # (the error when there is no group)
        world = size if world is None else world
        rank = dist.get_rank() if rank is None else rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"transforms.distributed.{where}: need 0 <= rank < world_size, got rank={rank}, "
            f"world_size={world}"
        )
    return rank, world


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


@dataclasses.dataclass(frozen=True)
class ExpertParallelMoE(fm.Spec):
    """A dropless :class:`MoE` whose ``E`` experts are split over the ``world_size`` ranks
    of the default process group: rank ``r`` holds experts ``r * E/world ... (r+1) *
    E/world - 1`` (``experts.*``, stacked as in ``MoE``), every rank the gate.

    Each rank routes its own tokens as ``MoE`` does, sends each assignment's token to the
    rank of its expert with ``all_to_all_single``, runs its experts on what it received
    (one group per expert) and sends the results back, where they are weighted and
    summed: the output equals the single-process ``MoE``'s with the same params on the
    same tokens, and so do the gradients (the exchange is differentiable). Eager mode
    only: the number of tokens each rank receives is data. The aux values it sows are the
    ``MoE``'s for this rank's tokens (``dropped_fraction`` is 0: dropless).

    Arguments:
        moe: the single-process :class:`MoE` (dropless: ``capacity_factor=None``).
        world_size: the number of ranks; must divide ``moe.num_experts``.

    Shapes: as :class:`MoE`'s: input ``(..., D)``, output the same.
    """

    moe: MoE
    world_size: int

    def __post_init__(self):
        if not isinstance(self.moe, MoE):
            raise TypeError(
                f"ExpertParallelMoE: moe must be a transforms.MoE, got {type(self.moe).__name__}"
            )
        w = self.world_size
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"ExpertParallelMoE: world_size must be an int, got {w!r}")
        if w < 1:
            raise ValueError(f"ExpertParallelMoE: world_size must be positive, got {w}")
        if self.moe.num_experts % w:
            raise ValueError(
                f"ExpertParallelMoE: num_experts={self.moe.num_experts} must divide evenly "
                f"over world_size={w}"
            )
        if self.moe.capacity_factor is not None:
            raise ValueError(
                "ExpertParallelMoE: only dropless routing (capacity_factor=None), got "
                f"capacity_factor={self.moe.capacity_factor}"
            )
        local = fm.nn.Stack(self.moe.expert, self.moe.num_experts // w, in_axis=0)
        gate = self.moe.child("gate")
        object.__setattr__(self, "_children", (("gate", gate), ("experts", local)))

    @property
    def local_experts(self) -> int:
        return self.moe.num_experts // self.world_size

    def children(self):
        return self._children

    def resolve(self, in_shape, path: str = ""):
        moe = self.moe.resolve(in_shape, path)
        return self if moe is self.moe else dataclasses.replace(self, moe=moe)

    def out_shape(self, in_shape, path: str = "", record: dict | None = None):
        return self.moe.out_shape(in_shape, path, record)

    def forward(self, ctx: fm.Context, x: torch.Tensor) -> torch.Tensor:
        if ctx.mode != "eager":
            raise ValueError(
                "runs in eager mode only (the tokens each rank receives are data); "
                "gather() the experts for vmap, grad or compile"
            )
        world = _group_size(None, "ExpertParallelMoE")
        if world != self.world_size:
            raise ValueError(
                f"was split over {self.world_size} ranks, but the process group has {world}"
            )
        tokens, top_idx, weights = route(self.moe, ctx, x)
        k, e_local = self.moe.top_k, self.local_experts
        flat = top_idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # by expert, hence by rank
        token = order // k
        expert = flat.index_select(0, order)
        # One exchange of the counts per expert tells each rank how many tokens it gets
        # from every rank for each of its experts; they arrive by source rank, then by
        # expert (the senders sorted them), so the local expert of each is known.
        send_counts = torch.bincount(expert, minlength=world * e_local)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        send = send_counts.view(world, e_local).sum(1).tolist()
        recv = recv_counts.view(world, e_local).sum(1).tolist()
        received = _exchange(tokens.index_select(0, token), recv, send)
        ids = torch.arange(e_local, device=expert.device).repeat(world)
        local_expert = torch.repeat_interleave(ids, recv_counts)
        # On this rank: group what arrived by local expert, run each expert on its group.
        by_expert = torch.argsort(local_expert, stable=True)
        sizes = torch.bincount(local_expert, minlength=e_local).tolist()
        groups = list(torch.split(received.index_select(0, by_expert), sizes))
        results = torch.cat(ctx.apply("experts", groups))
        processed = torch.empty_like(results).index_copy(0, by_expert, results)
        back = _exchange(processed, send, recv)
        w = weights.reshape(-1).index_select(0, order)
        out = torch.zeros_like(tokens).index_add(0, token, back * w[:, None])
        ctx.sow("dropped_fraction", torch.zeros((), device=x.device))
        return out.reshape(x.shape)


def _exchange(x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
    """``all_to_all_single`` with autograd (the backward exchanges the gradients back):
    torch's functional collective, waited on at once (the next step needs the tokens)."""
    from torch.distributed import _functional_collectives as funcol

    out = funcol.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, dist.group.WORLD)
    return funcol.wait_tensor(out)


def _moe_layers(spec: fm.Spec, kind: type) -> list[tuple[str, fm.Spec]]:
    return [(p, s) for p, s in spec.walk() if type(s) is kind]


def local_names(spec: fm.Spec) -> frozenset[str]:
    """The params of ``spec`` that live on one rank only (experts of expert-parallel
    layers), by name.

    Arguments:
        spec: a model's spec.

    Returns:
        The dotted names of those params (``'1.experts.0.weight'``), empty for a model
            without an :class:`ExpertParallelMoE`.
    """

    def names() -> frozenset[str]:
        out = set()
        for prefix, layer in _moe_layers(spec, ExpertParallelMoE):
            out.update(f"{prefix}experts.{n}" for n in layer.child("experts").param_shapes())
        return frozenset(out)

    return cached(spec, "_fm_rank_local_names", names)  # once per spec: every step asks


def expert_parallel(
    params: fm.Params,
    state: fm.State | None = None,
    *,
    world_size: int | None = None,
    rank: int | None = None,
) -> tuple[fm.Params, fm.State]:
    """Split every dropless :class:`MoE` of a single-process model over the ranks: it
    becomes an :class:`ExpertParallelMoE` holding this rank's experts (a slice of the
    stacked ``experts.*`` tensors), the rest of the model unchanged. ``world_size`` and
    ``rank`` default to the default process group's (the one the exchange uses).

    Arguments:
        params: the single-process model's Params.
        state: its State, if it has one.
        world_size: the number of ranks; must divide every MoE's ``num_experts``.
        rank: this rank.

    Returns:
        ``(params, state)`` of the expert-parallel spec; the inputs are not modified.

    Raises:
        TypeError: ``rank`` or ``world_size`` is not an int.
        ValueError: the model has no MoE layer, ``rank`` is out of range, or a MoE cannot
            be split (experts that do not divide evenly, routing with a capacity).
    """
    rank, world_size = _rank_and_world(rank, world_size, "expert_parallel")
    entries = model_entries(params, state, "transforms.distributed.expert_parallel")
    layers = _moe_layers(params.spec, MoE)
    if not layers:
        raise ValueError("transforms.distributed.expert_parallel: the model has no MoE layer")
    replaced = {}
    for prefix, moe in layers:
        layer = ExpertParallelMoE(moe, world_size)
        e = layer.local_experts
        for name in list(entries):
            if name.startswith(f"{prefix}experts."):
                entries[name] = entries[name][rank * e : (rank + 1) * e].clone()
        replaced[prefix[:-1]] = layer
    return fm.from_state_dict(replace_layers(params.spec, replaced), entries)


def gather(
    params: fm.Params, state: fm.State | None = None, group=None
) -> tuple[fm.Params, fm.State]:
    """The single-process model of an expert-parallel one, on every rank: each
    :class:`ExpertParallelMoE` becomes its :class:`MoE` again, with every rank's experts
    (``all_gather``). Save it from rank 0: ``fm.save`` of the result loads in one process.

    Arguments:
        params: the expert-parallel model's Params (this rank's).
        state: its State, if it has one.
        group (torch.distributed.ProcessGroup | None): the group (``None``: the default).

    Returns:
        ``(params, state)`` of the single-process spec, the same on every rank.

    Raises:
        ValueError: a layer was split over another number of ranks than the group has.
        RuntimeError: no process group is initialised.
    """
    world = _group_size(group, "gather")
    entries = model_entries(params, state, "transforms.distributed.gather")
    replaced = {}
    for prefix, layer in _moe_layers(params.spec, ExpertParallelMoE):
        if layer.world_size != world:
            raise ValueError(
                f"transforms.distributed.gather: the layer {prefix.rstrip('.') or '(root)'!r} "
                f"was split over {layer.world_size} ranks, but the group has {world}"
            )
        for name in list(entries):
            if name.startswith(f"{prefix}experts."):
                local = entries[name].detach().contiguous()
                parts = [torch.empty_like(local) for _ in range(world)]
                dist.all_gather(parts, local, group=group)
                entries[name] = torch.cat(parts)
        replaced[prefix[:-1]] = layer.moe
    return fm.from_state_dict(replace_layers(params.spec, replaced), entries)


fm.register_layer("expert_parallel_moe", ExpertParallelMoE)
