"""Train a small CNN on scikit-learn's 8x8 digits, then take per-sample gradients.

Everything is a pure function of explicit inputs: the model is a spec plus a Params
pytree, the optimiser state is returned rather than mutated, and every random draw (split,
batch order, initial weights, dropout) comes from a funcmodels key.

    python examples/quickstart.py             # a few seconds on two CPU cores
    python examples/quickstart.py --epochs 1  # a quick check
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from _digits import Digits, accuracy, batches, load, num_batches
from torch.func import grad, vmap
from tqdm import tqdm

import funcmodels as fm

nn = fm.nn

# Input (1, 8, 8) -> (16, 8, 8) -> pooled (16, 4, 4) -> (32, 4, 4) -> 512 features -> 10 logits.
SPEC = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1),
    nn.GroupNorm(4, 32),
    nn.ReLU(),
    nn.Flatten(),
    nn.Linear(32 * 4 * 4, 64),
    nn.ReLU(),
    nn.Dropout(0.2),
    nn.Linear(64, 10),
)


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch in train mode (``key`` drives dropout)."""
    return F.cross_entropy(fm.apply(params, x, key=key, train=True), y)


def sample_loss(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example: ``x`` is ``(1, 8, 8)``, ``y`` a scalar label."""
    return F.cross_entropy(fm.apply(params, x), y)


def train(data: Digits, epochs: int, batch_size: int, lr: float, key: torch.Tensor) -> fm.Params:
    """Train ``SPEC`` on ``data`` with Adam; ``key`` decides init, batch order and dropout."""
    init_key, shuffle_key, dropout_key = fm.split(key, 3)
    params = fm.init(init_key, SPEC)
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step_fn = fm.value_and_grad(loss_fn)

    step = 0
    n_steps = epochs * num_batches(len(data.y_train), batch_size)
    with tqdm(total=n_steps, desc="train", unit="step") as bar:
        for epoch in range(epochs):
            for xb, yb in batches(
                fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, batch_size
            ):
                loss, grads = step_fn(params, xb, yb, fm.fold_in(dropout_key, step))
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                step += 1
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    return params


def show_per_sample_grads(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> None:
    """Per-sample gradients of a batch: grad of a one-example loss, vmapped over the batch."""
    per_sample = fm.to_state_dict(vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y))
    print("per-sample gradient shapes:")
    for name, g in per_sample.items():
        print(f"  {name:12s} {tuple(g.shape)}")
    squares = [g.flatten(1).pow(2).sum(1) for g in per_sample.values()]
    norms = torch.stack(squares).sum(0).sqrt()
    shown = ", ".join(f"{v:.3g}" for v in norms[:8].tolist())
    print(f"per-sample gradient norms (first 8 of {len(norms)}): {shown}")
    # The first row must be the gradient of the first example taken on its own.
    one = fm.to_state_dict(grad(sample_loss)(params, x[0], y[0]))
    err = max((per_sample[n][0] - g).abs().max().item() for n, g in one.items())
    scale = max(g.abs().max().item() for g in one.values())
    print(f"vmap vs single-example gradient of sample 0: relative difference {err / scale:.2e}")


def check_save_load(params: fm.Params, x: torch.Tensor) -> None:
    """Save to safetensors, load back (the spec comes from the file), compare predictions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_cnn.safetensors")
        fm.save(path, params)
        loaded, _ = fm.load(path)
    same = torch.equal(fm.apply(loaded, x), fm.apply(params, x))
    print(f"saved and loaded: predictions identical: {same}")
    if not same:
        raise SystemExit("the loaded model predicts differently")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=int(os.environ.get("EPOCHS", 15)),
        help="passes over the training set (default: $EPOCHS, else 15)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    # Tensors this small leave threads little to share and much to synchronise: one
    # thread is faster, and many times faster when other processes compete for the cores.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_key, train_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    params = train(data, args.epochs, args.batch_size, args.lr, train_key)
    print(f"test accuracy: {accuracy(params, data.x_test, data.y_test):.4f}")
    show_per_sample_grads(params, data.x_test[:32], data.y_test[:32])
    check_save_load(params, data.x_test)


if __name__ == "__main__":
    main()
