"""fm.checkpoint.Manager in a torch.distributed job: each rank's shard of an FSDP2 model
(``fully_shard`` on ``transforms.to_module`` output) and of its optimiser's state goes
through torch.distributed.checkpoint, and comes back on the same world size and on others
(1 and 4 processes: DCP reshards), bit for bit; the rest of the tree comes back from JSON.

The gloo processes are spawned by the harness of ``tests/transforms/test_distributed.py``
(imported, not copied).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import funcmodels as fm
import transforms
from tests.transforms.test_distributed import run_ranks
from transforms import distributed as D

nn = fm.nn
SPEC = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def sharded_model(seed: int, world: int):
    """An FSDP2 model of SPEC (every Linear and the root sharded) and its AdamW."""
    from torch.distributed.fsdp import fully_shard

    module = transforms.to_module(fm.init(fm.key(seed), SPEC))
    if world:
        for layer in module:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(module)
    return module, torch.optim.AdamW(module.parameters(), lr=0.01)


def train(model, opt, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g), torch.arange(8) % 3
    if torch.distributed.is_initialized():  # each rank its share of the batch
        x, y = D.shard(x), D.shard(y)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def full_state(model, opt) -> dict:
    """The whole model and optimiser state, gathered on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t
    return {
        "model": {k: full(v).clone() for k, v in model_sd.items()},
        "optim": {
            k: {n: full(v).clone() for n, v in s.items()} for k, s in optim_sd["state"].items()
        },
    }


def like(module_state) -> dict:
    return {"run": module_state, "step": 0, "key": fm.key(0), "lr": 0.0, "tags": ["", ""]}


def restore_and_check(directory: str, reference: str, world: int) -> None:
    """A fresh (differently initialised) model restored from the checkpoint equals the
    saved one bitwise, and trains on."""
    model, opt = sharded_model(seed=7, world=world)
    state = fm.checkpoint.ModuleState(model, opt)
    tree = fm.checkpoint.Manager(directory).restore(like=like(state))
    assert tree["run"] is state
    assert tree["step"] == 2 and tree["lr"] == 0.01 and tree["tags"] == ["fsdp", "adamw"]
    assert torch.equal(tree["key"], fm.fold_in(fm.key(3), 2))
    want = fm.checkpoint.load(reference)
    got = full_state(model, opt)
    for name, t in want["model"].items():
        assert torch.equal(got["model"][name], t), name
    for name, s in want["optim"].items():
        for n, t in s.items():
            assert torch.equal(got["optim"][name][n], t), (name, n)
    train(model, opt, 1)  # the optimiser continues from the restored step count
    assert all(s["step"].item() == 3 for s in opt.state.values())


def _save_then_restore(rank: int, world: int, directory: str, reference: str) -> None:
    model, opt = sharded_model(seed=0, world=world)
    train(model, opt, 2)
    mgr = fm.checkpoint.Manager(directory, keep=2)
    tree = like(fm.checkpoint.ModuleState(model, opt))
    tree.update(step=2, key=fm.fold_in(fm.key(3), 2), lr=0.01, tags=["fsdp", "adamw"])
    mgr.save(2, tree)
    assert mgr.all_steps() == [2]
    shards = [n for n in os.listdir(mgr.path(2)) if n.endswith(".distcp")]
    assert len(shards) == world  # one file per rank: each wrote its own shard
    full = full_state(model, opt)  # collective: every rank gathers
    if rank == 0:
        fm.checkpoint.save(reference, full)
    torch.distributed.barrier()
    restore_and_check(directory, reference, world)  # the same world size


def _restore(rank: int, world: int, directory: str, reference: str) -> None:
    restore_and_check(directory, reference, world)


@pytest.mark.slow
def test_fsdp2_shards_save_and_restore_on_the_same_and_other_world_sizes(tmp_path):
    directory, reference = str(tmp_path / "run"), str(tmp_path / "reference")
    run_ranks(_save_then_restore, 2, directory, reference)
    assert os.listdir(directory) == ["step_2"]
    assert sorted(os.listdir(os.path.join(directory, "step_2"))) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "tree.json",
    ]
    run_ranks(_restore, 1, directory, reference)
    run_ranks(_restore, 4, directory, reference)
    # A process on its own (no process group) reads it whole into a plain module.
    restore_and_check(directory, reference, world=0)


def test_a_distributed_checkpoint_needs_somewhere_to_load_a_module_into(tmp_path):
    """Without a process group DCP writes in this process alone; the checkpoint's module
    state can only be restored into a ModuleState given by like=."""
    model, opt = sharded_model(seed=0, world=0)
    train(model, opt, 1)
    directory = tmp_path / "run"
    from funcmodels.checkpoint import _distributed

    tree = {"run": fm.checkpoint.ModuleState(model, opt), "w": torch.arange(3.0), "n": 1}
    with pytest.warns(UserWarning, match="assuming the intent is to save in a single process"):
        doc = _distributed.save(str(directory), tree, "here")
    _distributed.write_description(str(directory), doc)
    with pytest.raises(ValueError, match=r"'run' holds a module's state; pass like= with an"):
        _distributed.load(str(directory), None, "here")
    got = _distributed.load(str(directory), {"run": fm.checkpoint.ModuleState(model, opt)}, "here")
    assert torch.equal(got["w"], torch.arange(3.0)) and got["n"] == 1
    with pytest.raises(TypeError, match=r"wrap a model and its optimiser as fm.checkpoint"):
        _distributed.save(str(tmp_path / "x"), {"m": model}, "here")
