"""From a functional model to a saved int8 program: train, convert, fuse, QAT, export.

1. Train a small CNN with BatchNorm on scikit-learn's 8x8 digits, functionally
   (``fm.run`` in train mode returns the updated running statistics).
2. ``transforms.to_module``: the same model as real ``torch.nn`` layers.
3. ``transforms.fuse``: BatchNorm folded into the conv and linear layers before it.
4. ``transforms.qat.prepare``: fake int8 quantization; fine-tune with ``torch.optim``.
5. ``transforms.qat.convert``: the int8 model; save it with ``torch.export.save``, load it
   back and check that it predicts the same.

Needs torchao (``pip install 'funcmodels[qat]'``) besides the examples' extras.

    python examples/deploy.py            # about 15 s on two CPU cores
    python examples/deploy.py --quick    # a smoke run: fewer epochs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from _digits import Digits, batches, load
from torch import nn

import funcmodels as fm
import transforms

# Input (1, 8, 8) -> (16, 8, 8) -> (32, 8, 8) -> pooled (32, 4, 4) -> 512 -> 64 -> 10 logits.
SPEC = fm.nn.Sequential(
    fm.nn.Conv2d(1, 16, 3, padding=1),
    fm.nn.BatchNorm2d(16),
    fm.nn.ReLU(),
    fm.nn.Conv2d(16, 32, 3, padding=1),
    fm.nn.BatchNorm2d(32),
    fm.nn.ReLU(),
    fm.nn.MaxPool2d(2),
    fm.nn.Flatten(),
    fm.nn.Linear(32 * 4 * 4, 64),
    fm.nn.BatchNorm1d(64),
    fm.nn.ReLU(),
    fm.nn.Linear(64, 10),
)
BATCH = 64


def train_float(data: Digits, epochs: int, key: torch.Tensor) -> tuple[fm.Params, fm.State]:
    """Train ``SPEC`` with Adam; the BatchNorm statistics are threaded through as state."""
    init_key, shuffle_key = fm.split(key, 2)
    params, state = fm.init_with_state(init_key, SPEC)
    opt = fm.optim.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(p: fm.Params, s: fm.State, x: torch.Tensor, y: torch.Tensor):
        out = fm.run(p, x, state=s, train=True)
        loss = F.cross_entropy(out.out, y)
        return loss, (loss, out.state)

    step = fm.value_and_grad(loss_fn, has_aux=True)
    for epoch in range(epochs):
        for x, y in batches(fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, BATCH):
            (_, (loss, state)), grads = step(params, state, x, y)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = fm.optim.apply_updates(params, updates)
        print(f"  float epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}")
    return params, state


def fine_tune(
    prepared: nn.Module, data: Digits, epochs: int, key: torch.Tensor, lr: float = 1e-4
) -> None:
    """Quantization-aware fine-tuning of a prepared model with ``torch.optim.Adam``."""
    prepared.train()
    opt = torch.optim.Adam(prepared.parameters(), lr=lr)
    for epoch in range(epochs):
        for x, y in batches(fm.fold_in(key, epoch), data.x_train, data.y_train, BATCH):
            loss = F.cross_entropy(prepared(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  QAT epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}")
    prepared.eval()


def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Class predictions ``(N,)`` of a model returning logits."""
    with torch.no_grad():
        return model(x).argmax(-1)


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], data: Digits) -> float:
    """Share of the test split classified correctly."""
    return (predict(model, data.x_test) == data.y_test).float().mean().item()


def export_and_save(model: nn.Module, x: torch.Tensor, path: str) -> int:
    """``torch.export`` the model with a free batch dim, save it; return the file size."""
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, path)
    return os.path.getsize(path)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (int8 weights count one byte each)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


class Deployed(NamedTuple):
    """The models of each step and their test accuracies."""

    module: nn.Module
    fused: nn.Module
    int8: nn.Module
    accuracy: dict[str, float]


def pipeline(data: Digits, epochs: int, qat_epochs: int, key: torch.Tensor) -> Deployed:
    """Run steps 1-5 up to the int8 model (saving is left to the caller)."""
    float_key, qat_key = fm.split(key, 2)
    print("training the float model (functional)")
    params, state = train_float(data, epochs, float_key)
    x = data.x_test

    def functional(x: torch.Tensor) -> torch.Tensor:
        return fm.apply(params, x, state=state)

    module = transforms.to_module(params, state)
    same = torch.equal(predict(module, x), predict(functional, x))
    print(f"to_module: torch.nn layers, predictions identical to fm.apply: {same}")

    fused = transforms.fuse(module)
    folded, folded_state = transforms.fold_batchnorm(params, state)
    with torch.no_grad():
        diff = max_difference(fused(x), module(x))
        diff_fold = max_difference(fm.apply(folded, x, state=folded_state), fused(x))
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    print(
        f"fuse: {left} BatchNorm left, largest logit change {diff:.2e}; "
        f"fold_batchnorm on the params agrees with it to {diff_fold:.2e}"
    )

    print("quantization-aware fine-tuning (torch.optim on the prepared model)")
    prepared = transforms.qat.prepare(fused, (data.x_train[:BATCH],))
    fine_tune(prepared, data, qat_epochs, qat_key)
    fake_quant = accuracy(prepared, data)
    int8 = transforms.qat.convert(prepared)
    acc = {
        "float": accuracy(functional, data),
        "fused": accuracy(fused, data),
        "fake-quant": fake_quant,
        "int8": accuracy(int8, data),
    }
    return Deployed(module, fused, int8, acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 + 1 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="float epochs (default 10)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 10)
    qat_epochs = args.qat_epochs or (1 if args.quick else 3)
    # torchao's observers warn about conventions of its own, not about this model.
    warnings.filterwarnings("ignore", module="torchao")

    data_key, run_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    out = pipeline(data, epochs, qat_epochs, run_key)

    example = data.x_test[:BATCH]
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: export_and_save(model, example, os.path.join(tmp, f"{name}.pt2"))
            for name, model in (("float", out.module), ("fused", out.fused), ("int8", out.int8))
        }
        reloaded = torch.export.load(os.path.join(tmp, "int8.pt2")).module()
        same = torch.equal(predict(reloaded, data.x_test), predict(out.int8, data.x_test))
    print(f"int8 saved with torch.export.save and loaded back: predictions identical: {same}")

    acc = out.accuracy
    tensors = {"float": out.module, "fused": out.fused, "int8": out.int8}
    print()
    print("| model | test accuracy | tensors | torch.export.save file |")
    print("|---|---|---|---|")
    for name in ("float", "fused", "fake-quant", "int8"):
        sizes = " | "
        if name in files:
            sizes = f"{tensor_bytes(tensors[name]) / 1024:.1f} KiB | {files[name] / 1024:.1f} KiB"
        print(f"| {name} | {acc[name]:.4f} | {sizes} |")
    print(f"int8 - float accuracy: {100 * (acc['int8'] - acc['float']):+.2f} points")
    if not same:
        raise SystemExit("the reloaded int8 model predicts differently")


if __name__ == "__main__":
    main()
