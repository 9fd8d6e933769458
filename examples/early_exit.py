"""Per-sample early exit on scikit-learn's 8x8 digits, against the seed article's rule.

A network of 8 blocks with an exit head after each is trained with deep supervision (the
mean of the exits' losses). At test time each digit leaves at the first exit confident
enough (maximum softmax above a threshold), so easy digits run few blocks. The script

* calibrates the threshold: the least mean depth whose accuracy stays within 1 point of
  the full-depth model (every block, the last exit), on a validation split;
* prints accuracy and mean blocks run on the test split at a few thresholds, next to the
  seed article's rule on the same model and batches of 64 (the whole batch leaves at the
  first exit where the batch's *mean* confidence passes the threshold);
* saves the accuracy-vs-compute curves of both rules (``--plot``, PNG).

    python examples/early_exit.py             # a few seconds on two CPU cores
    python examples/early_exit.py --epochs 5  # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch
from _digits import Digits, load, num_batches
from tqdm import tqdm

import funcmodels as fm
import transforms

nn = fm.nn
BLOCKS, WIDTH, BATCH = 8, 64, 64


def model(threshold: float = 0.9) -> transforms.EarlyExit:
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(64, WIDTH), nn.ReLU())]
    blocks += [
        nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.LayerNorm(WIDTH), nn.ReLU())
        for _ in range(BLOCKS - 1)
    ]
    heads = tuple(nn.Linear(WIDTH, 10) for _ in range(BLOCKS))
    return transforms.EarlyExit(tuple(blocks), heads, threshold=threshold)


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Deep supervision: every exit learns to classify."""
    out = fm.run(params, x, key=key, train=True)
    return transforms.deep_supervision_loss(out.aux[""], y)


def train(data: Digits, epochs: int, lr: float, key: torch.Tensor) -> fm.Params:
    init_key, shuffle_key, step_key = fm.split(key, 3)
    params = fm.init(init_key, model())
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step = fm.value_and_grad(loss_fn)
    n = 0
    with tqdm(
        total=epochs * num_batches(len(data.y_train), BATCH), desc="train", unit="step"
    ) as bar:
        for epoch in range(epochs):
            for xb, yb in fm.random.batches(
                fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, batch_size=BATCH
            ):
                loss, grads = step(params, xb, yb, fm.fold_in(step_key, n))
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                n += 1
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    return params


def per_sample(
    params: fm.Params, threshold: float, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """Accuracy and mean blocks run with per-sample exits at ``threshold``."""
    p = params.with_spec(dataclasses.replace(params.spec, threshold=threshold))
    with torch.no_grad():
        out = fm.run(p, x)
    return (out.out.argmax(-1) == y).float().mean().item(), out.aux[""][
        "depth"
    ].float().mean().item()


def batch_mean_rule(
    params: fm.Params, threshold: float, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """The seed article's rule on batches of 64: the whole batch leaves at the first exit
    where its mean maximum-softmax exceeds ``threshold`` (else at the last)."""
    with torch.no_grad():
        exits = fm.run(params, x, train=True, key=fm.key(0)).aux[""][
            "exit_logits"
        ]  # no dropout here
    correct = blocks = 0.0
    for start in range(0, len(y), BATCH):
        logits = exits[:, start : start + BATCH]
        confident = torch.softmax(logits, -1).amax(-1).mean(-1) > threshold
        j = int(confident.to(torch.int64).argmax()) if bool(confident.any()) else BLOCKS - 1
        correct += (logits[j].argmax(-1) == y[start : start + BATCH]).sum().item()
        blocks += (j + 1) * logits.shape[1]
    return correct / len(y), blocks / len(y)


def plot(curves: dict[str, list[tuple[float, float]]], full: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, points in curves.items():
        points = sorted(points, key=lambda p: p[1])
        ax.plot([p[1] for p in points], [p[0] for p in points], marker=".", label=label)
    ax.axhline(full, color="gray", linestyle="--", linewidth=1, label="full depth")
    ax.set_xlabel("mean blocks run per digit")
    ax.set_ylabel("test accuracy")
    ax.set_title("Early exit on digits: accuracy vs compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 30)))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="early_exit.png", help="where to save the plot")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_key, split_key, train_key = fm.split(fm.key(args.seed), 3)
    data = load(data_key)
    # A validation split of the training data, for the calibration.
    order = fm.random.permutation(split_key, len(data.y_train))
    val, fit = order[:300], order[300:]
    train_data = Digits(data.x_train[fit], data.y_train[fit], data.x_test, data.y_test)
    params = train(train_data, args.epochs, args.lr, train_key)

    cal = transforms.calibrate_threshold(
        params, data.x_train[val], data.y_train[val], max_drop=0.01
    )
    x, y = data.x_test, data.y_test
    full_acc, _ = per_sample(params, 1.0, x, y)
    print(f"full depth ({BLOCKS} blocks): test accuracy {full_acc:.4f}")
    print(
        f"calibrated threshold {cal.threshold:.2f} (validation: accuracy {cal.accuracy:.4f}, "
        f"full {cal.full_accuracy:.4f})"
    )
    acc, depth = per_sample(params, cal.threshold, x, y)
    share = depth / BLOCKS
    print(
        f"calibrated: test accuracy {acc:.4f}, mean blocks {depth:.2f} ({share:.2f} of full depth)"
    )
    print("threshold  per-sample acc / blocks   batch-mean rule acc / blocks")
    for t in (0.5, 0.8, 0.9, 0.95, 0.99):
        a1, d1 = per_sample(params, t, x, y)
        a2, d2 = batch_mean_rule(params, t, x, y)
        print(f"{t:9.2f}  {a1:.4f} / {d1:.2f}            {a2:.4f} / {d2:.2f}")
    grid = [i / 100 for i in range(30, 100)] + [0.995, 0.999]
    curves = {
        "per-sample exits": [per_sample(params, t, x, y) for t in grid],
        "batch-mean rule (batches of 64)": [batch_mean_rule(params, t, x, y) for t in grid],
    }
    # The article's rule at the calibrated accuracy: its fewest blocks reaching it.
    reach = [d for a, d in curves["batch-mean rule (batches of 64)"] if a >= acc]
    if reach:
        print(f"batch-mean rule at accuracy >= {acc:.4f}: mean blocks {min(reach):.2f}")
    else:
        print(f"batch-mean rule at accuracy >= {acc:.4f}: never reached")
    plot(curves, full_acc, args.plot)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
