"""transforms.distributed on gloo, 2 processes on this CPU: coalesced all-reduce, scaling.

Figures, timed interleaved inside the spawned processes (every rank runs the same
contenders in the same order, so their collectives pair up; rank 0's clock is reported):

* all-reduce (sum) of ResNet-18-sized gradients, 62 float32 tensors, 11,689,512 values
  (the shapes of ``fm.init`` of ``init_resnet18.resnet18_spec()``, random values), over 2
  processes: ``D.all_reduce`` (one flat buffer, one collective) vs one
  ``dist.all_reduce`` per leaf (on a copy, as ``D.all_reduce`` leaves its input alone),
  and one ``dist.all_reduce`` of an already flat copy (the floor). Both are checked equal
  to the sum of the ranks' tensors first. The same for the gradients of the digits MoE
  below (small leaves: there the collectives' latency, not the bandwidth, is the cost);
* scaling: one epoch (22 steps of Adam, global batch 64, cross-entropy) of
  ``examples/moe.py``'s digits MoE model (4 experts 32-64-32, top-2), with 2 processes
  (``D.data_parallel`` + ``D.expert_parallel``: each rank takes 32 examples and holds 2
  experts) vs 1 process training the single-process model on the same batches
  (``torch.func.grad_and_value``, no collectives; the other rank waits meanwhile, idle
  in a collective). The ratio is the speedup; efficiency = speedup / 2. The same at
  global batch 512 (2 steps an epoch; not in ``--quick``) shows how much a larger batch
  per exchange recovers. Before timing, the two are checked to give the same loss curve
  (1e-5) and the same params after the epoch (1e-4).

One torch thread per process (``--threads`` counts per process here): 2 processes on 2
cores, against 1 process on 1 core.

Run: ``python benchmarks/distributed.py [--quick] [--threads 1] [--repeats N]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from common import assert_trees_close, parse_args, ratio, report, row, time_interleaved
from init_resnet18 import resnet18_spec
from torch.func import grad_and_value

import funcmodels as fm
from transforms import distributed as D

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.append(str(EXAMPLES))
from _digits import load  # noqa: E402  (examples/_digits.py)

# examples/moe.py by path: this folder has a moe.py of its own.
_spec = importlib.util.spec_from_file_location("digits_moe", EXAMPLES / "moe.py")
digits_moe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_moe)

WORLD = 2


# -- all-reduce ---------------------------------------------------------------------------------


def all_reduce_rows(
    rank: int, world: int, repeats: int, spec: fm.Spec, name: str, target: str | None
) -> tuple[list[str], list[str]]:
    shapes = fm.init(fm.key(0), spec).flat()

    def grads_of(r: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(r)
        return {n: torch.randn(t.shape, generator=g) for n, t in shapes.items()}

    grads = grads_of(rank)
    flat = torch.cat([t.reshape(-1) for t in grads.values()])

    def coalesced():
        return D.all_reduce(grads, op="sum")

    def per_leaf():
        out = {}
        for n, t in grads.items():
            out[n] = t.clone()
            dist.all_reduce(out[n])
        return out

    def one_buffer():
        out = flat.clone()
        dist.all_reduce(out)
        return out

    want = grads_of(0)
    for r in range(1, world):
        want = {n: t + u for (n, t), u in zip(want.items(), grads_of(r).values(), strict=True)}
    assert_trees_close(coalesced(), want, "D.all_reduce", rtol=1e-6, atol=1e-6)
    assert_trees_close(per_leaf(), want, "per-leaf dist.all_reduce", rtol=1e-6, atol=1e-6)
    fns = {
        "D.all_reduce (coalesced)": coalesced,
        "dist.all_reduce per leaf": per_leaf,
        "one flat dist.all_reduce": one_buffer,
    }
    # min_sample_s=0: one call per sample on every rank (a calibrated count could differ
    # between the ranks, and their collectives would no longer pair up).
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0)
    n = sum(t.numel() for t in grads.values())
    what = (
        f"all-reduce (sum) of {name} grads: {len(grads)} leaves, {n / 1e6:.2g}M fp32, "
        f"{world} gloo processes"
    )
    rows = [
        row(what, timings, "one flat dist.all_reduce"),
        row(
            what,
            timings,
            "D.all_reduce (coalesced)",
            ratio_of=("D.all_reduce (coalesced)", "one flat dist.all_reduce"),
        ),
        row(
            what,
            timings,
            "dist.all_reduce per leaf",
            ratio_of=("dist.all_reduce per leaf", "D.all_reduce (coalesced)"),
            target=target,
        ),
    ]
    return rows, [f"{name}: D.all_reduce and the per-leaf all-reduces agree with the sum"]


# -- scaling ------------------------------------------------------------------------------------


def ce(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(fm.apply(params, x), y)


def scaling_rows(rank: int, world: int, repeats: int, batch: int) -> tuple[list[str], list[str]]:
    data_key, init_key, shuffle_key = fm.split(fm.key(0), 3)
    data = load(data_key)
    batches = list(
        fm.random.batches(shuffle_key, data.x_train.squeeze(1), data.y_train, batch_size=batch)
    )
    single = fm.init(init_key, digits_moe.model(True))
    sharded, _ = D.expert_parallel(single)
    opt = fm.optim.adam(3e-3)

    def epoch(params, step):
        state, losses = opt.init(params), []
        for xb, yb in batches:
            grads, loss = step(params, xb, yb)
            updates, state = opt.update(grads, state, params)
            params = fm.optim.apply_updates(params, updates)
            losses.append(loss)
        return params, losses

    dp_step, sp_step = D.data_parallel(ce), grad_and_value(ce)

    def two_processes():
        return epoch(sharded, dp_step)

    def one_process():  # rank 0 alone; the other ranks wait in the next collective
        return epoch(single, sp_step) if rank == 0 else None

    got, got_losses = two_processes()
    full, _ = D.gather(got)
    if rank == 0:
        want, want_losses = one_process()
        diff = max(abs(a.item() - b.item()) for a, b in zip(got_losses, want_losses, strict=True))
        assert diff < 1e-5, f"loss curves differ by {diff}"
        assert_trees_close(full.flat(), want.flat(), "params after an epoch", rtol=1e-4, atol=1e-4)
    fns = {"1 process": one_process, f"{world} processes": two_processes}
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0)
    what = (
        f"an epoch of the digits MoE, {len(batches)} steps of global batch {batch}, "
        "1 thread per process, gloo"
    )
    rows = [
        row(what, timings, "1 process"),
        row(
            what,
            timings,
            f"{world} processes",
            ratio_of=("1 process", f"{world} processes"),
        ),
    ]
    if rank != 0:
        return rows, []
    speedup = ratio(timings, "1 process", f"{world} processes")
    return rows, [
        f"global batch {batch}: {world} processes give a speedup of {speedup:.2f}x over 1, "
        f"a scaling efficiency of {100 * speedup / world:.0f}% (loss curves within {diff:.1e})"
    ]


# -- processes ----------------------------------------------------------------------------------


def _worker(rank, world, port, threads, repeats, quick, result, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows, notes = all_reduce_rows(rank, world, repeats, resnet18_spec(), "ResNet-18", ">= 3")
        r, n = all_reduce_rows(rank, world, repeats, digits_moe.model(True), "the digits MoE", None)
        rows += r
        notes += n
        for batch in (64,) if quick else (64, 512):
            r, n = scaling_rows(rank, world, repeats, batch)
            rows += r
            notes += n
        if rank == 0:
            with open(result, "w") as f:
                json.dump([rows, notes], f)
    except BaseException:
        with open(f"{errors}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # As in the tests: the interpreter's shutdown after gloo can end in std::terminate on a
    # loaded machine, after the work is done; leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not any(a.startswith("--threads") for a in argv):
        argv = [*argv, "--threads", "1"]  # per process: 2 processes on 2 cores
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (5 if args.quick else 21)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result, errors = os.path.join(tmp, "result"), os.path.join(tmp, "error")
        try:
            mp.spawn(
                _worker,
                args=(WORLD, port, args.threads, repeats, args.quick, result, errors),
                nprocs=WORLD,
            )
        except Exception:
            found = sorted(f for f in os.listdir(tmp) if f.startswith("error"))
            raise SystemExit(
                "a rank failed:\n" + "\n".join(open(os.path.join(tmp, f)).read() for f in found)
            ) from None
        with open(result) as f:
            rows, notes = json.load(f)
    print(f"{WORLD} gloo processes, torch.set_num_threads({args.threads}) in each")
    for note in notes:
        print(note)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
