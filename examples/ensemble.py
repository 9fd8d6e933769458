"""Train an ensemble of 8 MLPs on scikit-learn's 8x8 digits as one model: ``fm.nn.Stack``.

The ensemble is one spec, ``Stack(member, 8)``: its params are the members' stacked on a
leading axis (member ``i`` is ``fm.init(fm.fold_in(key, i), member)``), one ``fm.apply``
runs all members at once through a lifted ``vmap``, and one optimiser trains them all.
The members differ by their initial weights and by their dropout masks (member ``i``
draws from the step's key with ``i`` folded in). At the end: each member's test accuracy,
the ensemble's (the mean of the members' probabilities), and a save/load round trip.

    python examples/ensemble.py             # a few seconds on two CPU cores
    python examples/ensemble.py --epochs 3  # a quick check
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from _digits import Digits, batches, load, num_batches
from tqdm import tqdm

import funcmodels as fm

nn = fm.nn
MEMBERS = 8
MEMBER = nn.Sequential(
    nn.Flatten(),
    nn.Linear(64, 64),
    nn.ReLU(),
    nn.Dropout(0.2),
    nn.Linear(64, 10),
)
SPEC = nn.Stack(MEMBER, MEMBERS)  # (B, 1, 8, 8) -> (8, B, 10): every member sees the batch


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The sum over members of each member's mean cross-entropy: each member's gradient is
    that of its own loss, so the members train independently, side by side."""
    logits = fm.apply(params, x, key=key, train=True)  # (members, B, 10)
    per_member = F.cross_entropy(logits.flatten(0, 1), y.repeat(MEMBERS), reduction="none")
    return per_member.view(MEMBERS, -1).mean(dim=1).sum()


def train(data: Digits, epochs: int, batch_size: int, lr: float, key: torch.Tensor) -> fm.Params:
    """Train the ensemble with Adam; ``key`` decides init, batch order and dropout."""
    init_key, shuffle_key, dropout_key = fm.split(key, 3)
    params = fm.init(init_key, SPEC)
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step_fn = fm.value_and_grad(loss_fn)
    step = 0
    n_steps = epochs * num_batches(len(data.y_train), batch_size)
    with tqdm(total=n_steps, desc="train", unit="step") as bar:
        for epoch in range(epochs):
            losses = []
            for xb, yb in batches(
                fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, batch_size
            ):
                loss, grads = step_fn(params, xb, yb, fm.fold_in(dropout_key, step))
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                step += 1
                losses.append(loss.item() / MEMBERS)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update()
            tqdm.write(
                f"epoch {epoch + 1}/{epochs}: mean member loss {sum(losses) / len(losses):.4f}"
            )
    return params


def evaluate(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], float]:
    """Each member's accuracy, and the accuracy of the mean of their probabilities."""
    with torch.no_grad():
        probs = fm.apply(params, x).softmax(-1)  # (members, N, 10)
    members = (probs.argmax(-1) == y).float().mean(dim=1).tolist()
    ensemble = (probs.mean(0).argmax(-1) == y).float().mean().item()
    return members, ensemble


def check_save_load(params: fm.Params, x: torch.Tensor) -> None:
    """The ensemble saves and loads like any model (the Stack spec travels in the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ensemble.safetensors")
        fm.save(path, params)
        loaded, _ = fm.load(path)
    same = loaded.spec == SPEC and torch.equal(fm.apply(loaded, x), fm.apply(params, x))
    print(f"saved and loaded: same spec and predictions: {same}")
    if not same:
        raise SystemExit("the loaded ensemble predicts differently")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 15)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_key, train_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    params = train(data, args.epochs, args.batch_size, args.lr, train_key)
    members, ensemble = evaluate(params, data.x_test, data.y_test)
    print("member test accuracies: " + ", ".join(f"{a:.4f}" for a in members))
    print(f"mean member test accuracy: {sum(members) / len(members):.4f}")
    print(f"ensemble test accuracy: {ensemble:.4f}")
    check_save_load(params, data.x_test)


if __name__ == "__main__":
    main()
