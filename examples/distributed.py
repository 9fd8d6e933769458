"""Data- and expert-parallel training of the digits MoE with ``transforms.distributed``,
checked step by step against single-process training.

The model is ``examples/moe.py``'s: each 8x8 digit is a sequence of its 8 rows, embedded
to width 32, one ``transforms.MoE`` block (4 experts 32-64-32, top-2) and a linear head,
trained with Adam on cross-entropy plus the MoE's auxiliary losses. Launched on ``W``
processes:

* every rank initialises the single-process model from the same key, so the params start
  identical everywhere, and ``D.expert_parallel`` keeps this rank's ``4 / W`` experts
  (the MoE becomes a ``D.ExpertParallelMoE``: tokens travel to their experts' ranks and
  back with ``all_to_all_single``);
* every rank draws the same global batch of 64; ``D.data_parallel`` gives each rank its
  contiguous shard, sums the gradients of the replicated params over the ranks (one
  coalesced all-reduce) and leaves the experts' gradients on their ranks, so the same
  Adam update keeps the replicated params identical;
* rank 0 then trains the single-process model on the same batches (``torch.func``
  gradients, no collectives) and prints the largest difference between the two loss
  curves (about 1e-7: the same training, up to float rounding);
* the experts are gathered (``D.gather``) into the single-process model, which rank 0
  saves with ``fm.save``; it loads in one process (``fm.load``) and predicts as the
  distributed model does, and every rank shards the file again with ``D.expert_parallel``
  to the very params it trained (how a run resumes from a checkpoint).

The MoE's load-balance loss (``E * sum_e f_e * P_e``) is a product of two means over the
batch, not a mean of per-example losses: each rank computes it on its own shard (as
Switch-style training does per device), and the objective is the mean over the shards,
weighted by their sizes. The single-process reference computes that objective (the shards'
losses, weighted), in one process with all the experts; on one rank it is
``examples/moe.py``'s loss.

    torchrun --standalone --nproc-per-node 2 examples/distributed.py             # ~13 s
    torchrun --standalone --nproc-per-node 2 examples/distributed.py --epochs 1  # ~6 s
    torchrun --standalone --nproc-per-node 1 examples/distributed.py  # or plain python

gloo on the CPU (one thread per process, ``--threads``); ``--backend nccl`` trains on one
GPU per process. ``--out`` keeps the checkpoint there (default: a temporary directory).
Timings on two CPU cores, 20 epochs (440 steps, test accuracy about 0.96-0.97): the
distributed training ~4 s, the reference ~3 s, the rest is starting the processes. At
this size the exchanges (an all-reduce and five all-to-alls a step) cost more than halving
the compute saves; ``benchmarks/distributed.py`` measures the scaling.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
from _digits import load
from moe import EXPERTS, loss_fn, model
from torch.func import grad_and_value

import funcmodels as fm
from transforms import distributed as D


def task_loss(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``examples/moe.py``'s loss on one batch: cross-entropy plus the MoE losses."""
    return loss_fn(params, x, y)[0]


def sharded_objective(world: int):
    """The objective data parallelism over ``world`` ranks optimises, in one process: each
    contiguous shard's loss (the MoE's load-balance loss is the shard's own) weighted by
    its share of the batch."""

    def objective(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[0]
        return sum(
            task_loss(params, D.shard(x, r, world), D.shard(y, r, world))
            * (D.shard(y, r, world).shape[0] / n)
            for r in range(world)
        )

    return objective


def train(params, step, x, y, *, epochs: int, batch_size: int, lr: float, key):
    """Adam with ``step(params, xb, yb) -> (grads, loss)`` on the batches of ``key`` (the
    same on every rank); returns the params and the per-step losses."""
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    losses = []
    for epoch in range(epochs):
        for xb, yb in fm.random.batches(fm.fold_in(key, epoch), x, y, batch_size=batch_size):
            grads, loss = step(params, xb, yb)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = fm.optim.apply_updates(params, updates)
            losses.append(loss.item())
    return params, losses


def distributed_logits(params: fm.Params, x: torch.Tensor) -> torch.Tensor:
    """The distributed model's logits for all of ``x`` on every rank: each rank runs its
    shard (the experts serve every rank's tokens), the shards are summed into place."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n, base, extra = x.shape[0], *divmod(x.shape[0], world)
    start = rank * base + min(rank, extra)
    with torch.no_grad():
        mine = fm.apply(params, D.shard(x))
    full = torch.zeros(n, mine.shape[-1], dtype=mine.dtype, device=mine.device)
    full[start : start + mine.shape[0]] = mine
    return D.all_reduce({"logits": full}, op="sum")["logits"]


def on_every_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (every rank must call this)."""
    total = D.all_reduce({"flag": torch.tensor([float(flag)], device=device)}, op="sum")
    return total["flag"].item() == dist.get_world_size()


def setup(backend: str) -> torch.device:
    """Join the process group torchrun describes (or a one-process group without it)."""
    if "RANK" not in os.environ:  # plain `python examples/distributed.py`
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise SystemExit("--backend nccl needs CUDA")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 20)))
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=None, help="checkpoint path (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = setup(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)

    data_key, init_key, shuffle_key = fm.split(fm.key(args.seed), 3)
    data = load(data_key)
    x_train, y_train = data.x_train.squeeze(1).to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.squeeze(1).to(device), data.y_test.to(device)
    single = fm.init(init_key, model(True), device=device)  # the same on every rank
    params, _ = D.expert_parallel(single)
    say(
        f"{world} process(es), {args.backend} on {device.type}: {EXPERTS} experts, "
        f"{params.spec['block'].local_experts} on each rank; global batch {args.batch_size}, "
        f"{-(-args.batch_size // world)} examples per rank or fewer"
    )
    fit = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, key=shuffle_key)

    start = time.perf_counter()
    params, losses = train(params, D.data_parallel(task_loss), x_train, y_train, **fit)
    took = time.perf_counter() - start
    say(f"distributed training: {args.epochs} epoch(s), {len(losses)} steps in {took:.2f} s")

    # Replicated params stay identical across ranks: compare with rank 0's.
    replicated = {n: t for n, t in params.flat().items() if n not in D.local_names(params.spec)}
    same = all(
        torch.equal(a, b)
        for a, b in zip(D.broadcast(replicated).values(), replicated.values(), strict=True)
    )
    say(f"replicated params identical on every rank: {on_every_rank(same, device)}")

    if rank == 0:  # the single-process reference on the same batches
        reference_step = grad_and_value(sharded_objective(world))  # (grads, loss)
        start = time.perf_counter()
        reference, ref_losses = train(single, reference_step, x_train, y_train, **fit)
        took = time.perf_counter() - start
        print(f"single-process reference: {len(ref_losses)} steps in {took:.2f} s")
        diff = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
        print(
            f"loss curves ({len(losses)} steps, {losses[0]:.4f} -> {losses[-1]:.4f}): "
            f"max |distributed - single-process| = {diff:.2e}"
        )

    logits = distributed_logits(params, x_test)
    accuracy = (logits.argmax(-1) == y_test).float().mean().item()
    say(f"test accuracy (distributed): {accuracy:.4f}")

    full, _ = D.gather(params)  # the single-process model, on every rank
    with tempfile.TemporaryDirectory() as tmp:
        path = [args.out or os.path.join(tmp, "distributed_moe.safetensors")]
        dist.broadcast_object_list(path, src=0)  # rank 0's temp dir, for everyone
        path = path[0]
        if rank == 0:
            gap = max((full[n] - reference[n]).abs().max().item() for n in full.flat())
            print(f"gathered params vs the single-process reference: max difference {gap:.2e}")
            fm.save(path, full)
            print(f"saved the gathered model: {path} ({os.path.getsize(path) / 1e3:.1f} kB)")
            loaded, _ = fm.load(path, device=device)
            with torch.no_grad():
                alone = fm.apply(loaded, x_test)
            gap = (alone - logits).abs().max().item()
            same = torch.equal(alone.argmax(-1), logits.argmax(-1))
            print(
                f"loaded in one process: max |logit difference| vs the distributed model "
                f"{gap:.2e}; predictions identical: {same}"
            )
        dist.barrier()  # the file is written
        again, _ = D.expert_parallel(fm.load(path, device=device)[0])
        dist.barrier()  # every rank has read it before rank 0's temp dir goes
    same = again.spec == params.spec and all(
        torch.equal(again[n], params[n]) for n in params.flat()
    )
    say(f"the file sharded again equals the trained params: {on_every_rank(same, device)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
