"""Checkpoint throughput: fm.checkpoint.save/load of a 500 MB tree vs torch.save/torch.load
and safetensors' save_file/load_file on the same tensors.

The tree is a model-like dict of float32 tensors (24 weights of 2048 x 2560 and their
biases, 503 MB). Every contender writes the same tensors to its own file in one directory
and reads its own file back; the contenders run interleaved, in a new order each round.

* **save, to disk**: each contender's call, then ``fsync`` of its file (``fm.checkpoint``
  syncs the file and the directory itself, as part of its atomic replace), so every
  contender pays for getting the bytes onto the disk.
* **save, to memory**: the same calls into a directory on tmpfs (``/dev/shm``), where no
  disk is behind the page cache: the cost of the call itself. (Into a disk's page cache
  without ``fsync`` the figures are dominated by the kernel throttling whoever writes
  while earlier rounds' dirty pages are written back: 0.42x to 1.6x between runs.)
* **load into memory**: every file is read warm, from the page cache (each file was just
  written and is re-read every round, and the machine has room for all three), so the
  figure is the cost of the read path, not the disk's. ``fm.checkpoint.load`` reads into
  fresh aligned tensors, ``torch.load(weights_only=True)`` and safetensors'
  ``load_file(backend="pread")`` read into memory too.
* **load and read every byte**: safetensors' default ``load_file`` maps the file and reads
  nothing until a tensor is touched (its call alone takes microseconds), so each contender
  is timed for its load plus one pass over every element (a sum), the least a user of the
  tensors does.

Target: fm.checkpoint at >= 0.8x safetensors' throughput both ways (time ratio <= 1.25).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from common import command, parse_args, ratio, time_interleaved
from safetensors.torch import load_file, save_file

import funcmodels as fm


def make_tree(layers: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tree = {}
    for i in range(layers):
        tree[f"layer{i}.weight"] = torch.randn(2048, 2560, generator=g)
        tree[f"layer{i}.bias"] = torch.randn(2560, generator=g)
    return tree


def nbytes(tree: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tree.values())


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(tree: dict[str, torch.Tensor]) -> float:
    return sum(float(t.sum()) for t in tree.values())


def saves(paths: dict[str, str], tree: dict[str, torch.Tensor]) -> dict:
    """Each contender's save of ``tree`` into its file, synced to disk."""
    return {
        "fm.checkpoint.save": lambda: fm.checkpoint.save(paths["fm"], tree),
        "torch.save": lambda: (torch.save(tree, paths["torch"]), fsync(paths["torch"])),
        "safetensors save_file": lambda: (
            save_file(tree, paths["safetensors"]),
            fsync(paths["safetensors"]),
        ),
    }


def check_same(paths: dict[str, str], tree: dict[str, torch.Tensor]) -> None:
    """Every contender's file reads back to the saved tensors, bit for bit."""
    loaded = {
        "fm": fm.checkpoint.load(paths["fm"]),
        "torch": torch.load(paths["torch"], weights_only=True),
        "safetensors": load_file(paths["safetensors"]),
    }
    for name, got in loaded.items():
        assert list(got) == list(tree) or sorted(got) == sorted(tree), name
        for k, t in tree.items():
            assert torch.equal(got[k], t), (name, k)
    assert all(t.data_ptr() % 64 == 0 for t in loaded["fm"].values())


def table_rows(op: str, timings, size: int, base: str, target: bool) -> list[str]:
    rows = []
    for name, t in timings.items():
        mbs = size / t.median / 1e6
        r = ratio(timings, base, name) if name != base else 1.0  # throughput ratio
        ok = ("yes" if r >= 0.8 else "no") if target and name.startswith("fm") else ""
        rows.append(
            f"| {op} | {name} | {t.median * 1e3:.0f} ms | {mbs:.0f} MB/s | {r:.2f}x | "
            f"{'>= 0.8x' if ok else ''} | {ok} |"
        )
    return rows


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        layers=(int, 24, "weights of 2048 x 2560 (24: 503 MB)"),
        dir=(str, None, "where the files go (default: a new directory under the temp dir)"),
        memory_dir=(str, "/dev/shm", "a tmpfs directory for the in-memory saves ('' to skip)"),
    )
    repeats = args.repeats or (2 if args.quick else 5)
    tree = make_tree(2 if args.quick else args.layers)
    size = nbytes(tree)
    work = tempfile.mkdtemp(dir=args.dir, prefix="fm-checkpoint-bench-")
    paths = {n: os.path.join(work, n) for n in ("fm", "torch", "safetensors")}
    in_memory = os.path.isdir(args.memory_dir) if args.memory_dir else False
    shm = tempfile.mkdtemp(dir=args.memory_dir, prefix="fm-bench-") if in_memory else None
    try:
        to_disk = time_interleaved(saves(paths, tree), repeats=repeats, warmup=1, min_sample_s=0)
        to_memory = None
        if shm is not None:
            shm_paths = {n: os.path.join(shm, n) for n in paths}
            to_memory = time_interleaved(
                saves(shm_paths, tree), repeats=repeats, warmup=1, min_sample_s=0
            )
            shutil.rmtree(shm)
        check_same(paths, tree)
        loads = {
            "fm.checkpoint.load": lambda: fm.checkpoint.load(paths["fm"]),
            "torch.load": lambda: torch.load(paths["torch"], weights_only=True),
            "safetensors load_file (pread)": lambda: load_file(
                paths["safetensors"], backend="pread"
            ),
        }
        into_memory = time_interleaved(loads, repeats=repeats, warmup=1, min_sample_s=0)
        used = {
            "fm.checkpoint.load + read": lambda: read_all(fm.checkpoint.load(paths["fm"])),
            "safetensors load_file (mmap) + read": lambda: read_all(
                load_file(paths["safetensors"])
            ),
            "safetensors load_file (pread) + read": lambda: read_all(
                load_file(paths["safetensors"], backend="pread")
            ),
        }
        touched = time_interleaved(used, repeats=repeats, warmup=1, min_sample_s=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
    print(f"tree: {len(tree)} float32 tensors, {size / 1e6:.0f} MB; {repeats} rounds")
    print("\n| operation | contender | median | throughput | vs safetensors | target | met |")
    print("|---|---|---|---|---|---|---|")
    for op, timings, base in [
        ("save, to disk", to_disk, "safetensors save_file"),
        *([("save, to memory (tmpfs)", to_memory, "safetensors save_file")] if to_memory else []),
        ("load into memory (warm)", into_memory, "safetensors load_file (pread)"),
        ("load and read every byte (warm)", touched, "safetensors load_file (mmap) + read"),
    ]:
        for r in table_rows(op, timings, size, base, target=True):
            print(r)
    threads = f"torch.set_num_threads({args.threads})"
    print(f"\ntorch {torch.__version__}, {threads}; command: `{command()}`")


if __name__ == "__main__":
    main()
