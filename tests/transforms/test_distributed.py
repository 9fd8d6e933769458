"""transforms.distributed on gloo, in 2 and 4 processes spawned on this CPU: coalesced
collectives, the data-parallel step against the single-process one, DDP and FSDP2 on
``to_module`` output, the expert-parallel MoE against the single-process MoE, and
checkpoints both ways.

Each test spawns its processes once and runs several checks in them (a process costs a
few seconds of imports); a failing rank's traceback is re-raised here.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import funcmodels as fm
import transforms
from transforms import distributed as D

nn = fm.nn
slow = pytest.mark.slow  # the tests that spawn processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, errors: str, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()  # every rank done before any tears its group down
    except BaseException:
        with open(f"{errors}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # The work is done and checked. On a loaded machine the interpreter's shutdown of a
    # process that ran gloo (DDP, FSDP) sometimes ends in std::terminate from a torch
    # thread (seen after destroy_process_group had returned on both ranks): leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes; re-raise a rank's error."""
    with tempfile.TemporaryDirectory() as tmp:
        errors = os.path.join(tmp, "error")
        try:
            mp.spawn(_entry, args=(world, _free_port(), fn, errors, args), nprocs=world)
        except Exception:
            found = [f for f in sorted(os.listdir(tmp)) if f.startswith("error")]
            details = "\n".join(open(os.path.join(tmp, f)).read() for f in found)
            raise AssertionError(f"a rank failed:\n{details}") from None


def moe_model(experts: int = 4, gate: fm.Spec | None = None) -> fm.Spec:
    expert = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 6))
    return nn.Sequential(
        {
            "embed": nn.Linear(5, 6),
            "moe": transforms.MoE(expert, num_experts=experts, top_k=2, gate=gate),
            "head": nn.Linear(6, 3),
        }
    )


def batch(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 7, 5, generator=g), torch.randint(0, 3, (n, 7), generator=g)


def loss(params, x, y):
    return F.cross_entropy(fm.apply(params, x).reshape(-1, 3), y.reshape(-1))


def single_process_grads(params, x, y):
    leaves = fm.tree.map(lambda t: t.detach().requires_grad_(), params)
    value = loss(leaves, x, y)
    names = list(leaves.flat())
    grads = torch.autograd.grad(value, [leaves[n] for n in names])
    return dict(zip(names, grads, strict=True)), value.detach()


# -- collectives and the data-parallel step -----------------------------------------------------


def _collectives(rank, world):
    tree = {
        "a": torch.full((3, 2), float(rank + 1)),
        "b": torch.arange(4, dtype=torch.float64) * (rank + 1),
        "c": torch.tensor([rank], dtype=torch.int64),
    }
    before = {k: v.clone() for k, v in tree.items()}
    mean = D.all_reduce(tree)
    total = D.all_reduce(tree, op="sum")
    s = sum(range(1, world + 1))
    torch.testing.assert_close(mean["a"], torch.full((3, 2), s / world))
    torch.testing.assert_close(total["b"], torch.arange(4, dtype=torch.float64) * s)
    assert total["c"].item() == sum(range(world)) and mean["b"].dtype == torch.float64
    assert all(torch.equal(tree[k], before[k]) for k in tree)  # inputs untouched
    params = fm.init(fm.key(rank), nn.Linear(3, 2))  # different on every rank
    same = D.broadcast(params, src=1)
    want = fm.init(fm.key(1), nn.Linear(3, 2))
    assert all(torch.equal(same[n], want[n]) for n in want.flat())
    compiled = torch.compile(lambda t: D.all_reduce(t, op="sum"), fullgraph=True)
    torch.testing.assert_close(compiled({"a": tree["a"]})["a"], total["a"])
    compiled = torch.compile(lambda t: D.broadcast(t, src=1), fullgraph=True)
    torch.testing.assert_close(compiled({"a": tree["a"]})["a"], torch.full((3, 2), 2.0))
    # integer leaves keep their dtype: floor-divided means (exact for equal step counts)
    assert mean["c"].dtype == torch.int64 and mean["c"].item() == sum(range(world)) // world
    steps = D.all_reduce(fm.optim.adam(1e-3).init({"w": torch.ones(2) * rank}))
    assert steps[0].count.dtype == torch.int64 and steps[0].count.item() == 0
    # not differentiable, and says so by detaching (no silent wrong gradient path)
    assert not D.all_reduce({"a": tree["a"].requires_grad_()})["a"].requires_grad


def _data_parallel(rank, world):
    spec = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    params = fm.init(fm.key(0), spec)
    x, y = torch.randn(11, 5, generator=torch.Generator().manual_seed(3)), torch.arange(11) % 3

    def mean_loss(p, xb, yb):
        return F.cross_entropy(fm.apply(p, xb), yb)

    step = D.data_parallel(mean_loss)
    with pytest.raises(ValueError, match="loss must return a scalar tensor, got \\([56], 3\\)"):
        D.data_parallel(lambda p, xb, yb: fm.apply(p, xb))(params, x, y)
    # a non-tensor first argument: the shard's share still comes from the tensors
    flagged = D.data_parallel(lambda p, flag, xb, yb: mean_loss(p, xb, yb))
    torch.testing.assert_close(flagged(params, "flag", x, y)[1], mean_loss(params, x, y))
    opt = fm.optim.adam(1e-2)
    ref, ref_state, state = params, opt.init(params), opt.init(params)
    for _ in range(3):  # 11 examples over the ranks: uneven shards
        grads, value = step(params, x, y)
        want = torch.func.grad(mean_loss)(ref, x, y)
        for n, g in want.flat().items():
            torch.testing.assert_close(grads[n], g, atol=1e-6, rtol=1e-5, msg=n)
        torch.testing.assert_close(value, mean_loss(ref, x, y), atol=1e-6, rtol=1e-5)
        updates, state = opt.update(grads, state, params)
        params = fm.optim.apply_updates(params, updates)
        ref_updates, ref_state = opt.update(want, ref_state, ref)
        ref = fm.optim.apply_updates(ref, ref_updates)
    everyone = D.all_reduce(params, op="mean")
    for n in params.flat():
        torch.testing.assert_close(everyone[n], params[n], atol=0, rtol=0)  # identical ranks


@slow
def test_collectives_and_the_data_parallel_step():
    run_ranks(_collectives, 2)
    run_ranks(_data_parallel, 2)


def test_clear_errors_without_a_process_group_and_for_bad_ranks():
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        D.all_reduce({"a": torch.ones(2)})
    with pytest.raises(RuntimeError, match="expert_parallel: no process group"):
        D.expert_parallel(fm.init(fm.key(0), moe_model(4)), world_size=2)  # rank missing
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank=2"):
        D.expert_parallel(fm.init(fm.key(0), moe_model(4)), world_size=2, rank=2)
    with pytest.raises(TypeError, match="shard: world_size must be an int, got float"):
        D.shard(torch.ones(4), 0, 2.0)
    with pytest.raises(ValueError, match="shard: expected a tensor with examples on dim 0"):
        D.shard(torch.tensor(1.0), 0, 2)
    assert D.shard(torch.arange(5), 0, 2).tolist() == [0, 1, 2]  # the first ranks get more
    assert D.shard(torch.arange(5), 1, 2).tolist() == [3, 4]


# -- DDP and FSDP2 on to_module output --------------------------------------------------------


def _ddp_and_fsdp(rank, world):
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    spec = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    params = fm.init(fm.key(0), spec)
    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3

    def mean_loss(p, xb, yb):
        return F.cross_entropy(fm.apply(p, xb), yb)

    ref = params
    for _ in range(2):  # functional SGD on the global batch
        g = torch.func.grad(mean_loss)(ref, x, y)
        ref = fm.tree.map(lambda p, gg: p - 0.1 * gg, ref, g)
    for wrap in ("ddp", "fsdp"):
        module = transforms.to_module(params)
        if wrap == "ddp":
            model = DistributedDataParallel(module)
        else:
            for layer in module:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            model = fully_shard(module)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(D.shard(x)), D.shard(y)).backward()
            opt.step()
        state = model.module.state_dict() if wrap == "ddp" else module.state_dict()
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}
        for n, t in ref.flat().items():
            torch.testing.assert_close(state[n], t, atol=1e-6, rtol=1e-5, msg=f"{wrap} {n}")


@slow
def test_ddp_and_fsdp_train_to_module_output_as_the_functional_step():
    run_ranks(_ddp_and_fsdp, 2)


# -- expert parallelism -------------------------------------------------------------------------


def _expert_parallel(rank, world, path, n, skewed):
    """``n`` examples (uneven shards when ``world`` does not divide it); ``skewed``: a gate
    whose bias sends every token to the last two experts, so the first ranks receive none."""
    gate = nn.Linear(6, 4) if skewed else None
    params = fm.init(fm.key(0), moe_model(4, gate))
    if skewed:
        params = fm.Params(
            params.spec,
            {**params.flat(), "moe.gate.bias": torch.tensor([-50.0, -50.0, 50.0, 50.0])},
        )
    x, y = batch(n)
    mine = slice(rank * (n // world) + min(rank, n % world), None)
    mine = slice(mine.start, mine.start + n // world + (rank < n % world))
    sharded, _ = D.expert_parallel(params)
    layer = sharded.spec["moe"]
    assert isinstance(layer, D.ExpertParallelMoE) and layer.local_experts == 4 // world
    assert sharded["moe.experts.0.weight"].shape[0] == 4 // world
    # output: this rank's tokens through the split experts = the full MoE on them
    torch.testing.assert_close(
        fm.apply(sharded, x[mine]), fm.apply(params, x[mine]), atol=1e-6, rtol=1e-5
    )
    aux = fm.run(sharded, x[mine]).aux["moe"]
    assert aux["dropped_fraction"].item() == 0.0
    counts = D.all_reduce({"c": aux["expert_counts"]}, op="sum")["c"]
    assert counts.sum().item() == 2 * 7 * n  # every assignment of every rank counted once
    if skewed:
        assert counts[:2].sum().item() == 0
    # gradients through the exchange, and the data-parallel step: the full model's on the
    # global batch, the experts' being this rank's slice
    grads, value = D.data_parallel(loss)(sharded, x, y)
    want, want_value = single_process_grads(params, x, y)
    torch.testing.assert_close(value, want_value, atol=1e-6, rtol=1e-5)
    e = 4 // world
    for n, g in want.items():
        got = grads[n]
        if n.startswith("moe.experts."):
            g = g[rank * e : (rank + 1) * e]
        torch.testing.assert_close(got, g, atol=1e-6, rtol=1e-4, msg=n)
    # checkpoints: gather back, save on rank 0, load in one process elsewhere
    full, _ = D.gather(sharded)
    assert full.spec == params.spec
    assert all(torch.equal(full[n], params[n]) for n in params.flat())
    if rank == 0:
        fm.save(path, full)
    dist.barrier()
    loaded, _ = fm.load(path)
    again, _ = D.expert_parallel(loaded)
    assert all(torch.equal(again[n], sharded[n]) for n in sharded.flat())


@slow
@pytest.mark.parametrize(
    "world, n, skewed",
    [(2, 12, False), (4, 12, False), (2, 11, True), (4, 10, True)],
    ids=["2-even", "4-even", "2-uneven-first-rank-idle", "4-uneven-two-ranks-idle"],
)
def test_expert_parallel_moe_equals_the_single_process_moe(world, n, skewed, tmp_path):
    run_ranks(_expert_parallel, world, str(tmp_path / "moe.safetensors"), n, skewed)


def test_expert_parallel_settings_are_checked():
    moe = transforms.MoE(nn.Linear(4, 4), num_experts=6)
    with pytest.raises(ValueError, match="num_experts=6 must divide evenly over world_size=4"):
        D.ExpertParallelMoE(moe, 4)
    capped = transforms.MoE(nn.Linear(4, 4), num_experts=4, capacity_factor=1.0)
    with pytest.raises(ValueError, match="only dropless .* got capacity_factor=1.0"):
        D.ExpertParallelMoE(capped, 2)
    with pytest.raises(TypeError, match="world_size must be an int, got 2.0"):
        D.ExpertParallelMoE(moe, 2.0)
    layer = D.ExpertParallelMoE(transforms.MoE(nn.Linear(4, 4), num_experts=4), 2)
    params = fm.init(fm.key(0), nn.Sequential({"moe": layer}))
    with pytest.raises(ValueError, match="runs in eager mode only"):
        torch.func.vmap(lambda x: fm.apply(params, x))(torch.ones(3, 2, 4))
