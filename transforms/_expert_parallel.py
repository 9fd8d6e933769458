"""Expert parallelism for :mod:`transforms.distributed` (its public names are exported
there): :class:`ExpertParallelMoE`, :func:`expert_parallel`, :func:`gather`, and the
process-group helpers both parts use."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

import funcmodels as fm
from funcmodels.extend import cached, replace_layers

from ._routing import route
from ._surgery import model_entries
from .moe import MoE


def _group_size(group, where: str) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"transforms.distributed.{where}: no process group is initialised; call "
            "torch.distributed.init_process_group (torchrun sets the environment it "
            "reads: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"
        )
    return dist.get_world_size(group)


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
