"""Gradual magnitude pruning of an MLP on scikit-learn's 8x8 digits, to 90% sparsity.

1. Train a dense MLP 64-256-256-10 with Adam.
2. Prune it gradually while fine-tuning (Zhu & Gupta, 2017): every few steps
   ``transforms.sparsify`` re-prunes each layer by weight magnitude to the sparsity of
   ``transforms.polynomial_sparsity`` (0 -> 0.9 along a cubic), and training goes on
   between prunings. The layers are ``transforms.SparseLinear`` from the first pruning on:
   their masks are state, pruned weights get zero gradients and are never revived.
3. ``transforms.compress``: the inference form, the kept weights in CSR form
   (``transforms.CompressedLinear``); it predicts exactly as the sparse model does.

It prints the test accuracy of the dense model and of the 90%-sparse one, the inference
time of the compressed model against the dense one on the whole test split, and the
sizes of both ``fm.save`` files, and saves a plot of accuracy against sparsity
(``--plot``, PNG): the gradual schedule, where each level is measured after the
fine-tuning at it, next to one-shot magnitude pruning of the dense model with no
fine-tuning.

    python examples/prune.py             # a few seconds on two CPU cores
    python examples/prune.py --epochs 3  # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from _digits import Digits, load, num_batches
from tqdm import tqdm

import funcmodels as fm
import transforms

nn = fm.nn
SPEC = nn.Sequential(
    nn.Flatten(),
    nn.Linear(64, 256),
    nn.ReLU(),
    nn.Linear(256, 256),
    nn.ReLU(),
    nn.Linear(256, 10),
)
FINAL_SPARSITY = 0.9
# One-shot pruning levels for the plot (the gradual curve gets the levels it passes).
ONE_SHOT = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)

# torch warns on first use that its sparse CSR support is in beta.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def loss_fn(
    params: fm.Params, state: fm.State | None, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of a batch (``state`` holds the masks of a sparse model)."""
    return F.cross_entropy(fm.apply(params, x, state=state), y)


def accuracy(params: fm.Params, state: fm.State | None, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (fm.apply(params, x, state=state).argmax(-1) == y).float().mean().item()


def mask_sparsity(state: fm.State) -> dict[str, float]:
    """Each layer's share of pruned weights, and ``'all'`` for the layers together."""
    masks = {n.removesuffix(".mask"): m for n, m in state.flat().items()}
    out = {n: 1.0 - m.sum().item() / m.numel() for n, m in masks.items()}
    kept = sum(m.sum().item() for m in masks.values())
    out["all"] = 1.0 - kept / sum(m.numel() for m in masks.values())
    return out


def train(
    data: Digits, epochs: int, prune_epochs: int, batch_size: int, lr: float, key: torch.Tensor
) -> tuple[fm.Params, fm.Params, fm.State, list[tuple[float, float]]]:
    """Train ``SPEC`` for ``epochs``, then prune gradually for ``prune_epochs``.

    Returns:
        the dense params, the sparse params and state, and ``(sparsity, test accuracy)``
        at each level of the schedule, measured after the fine-tuning at that level.
    """
    init_key, shuffle_key = fm.split(key, 2)
    params, state = fm.init(init_key, SPEC), None
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step_fn = fm.value_and_grad(loss_fn)
    per_epoch = num_batches(len(data.y_train), batch_size)
    prune_steps = prune_epochs * per_epoch
    # Re-prune every `frequency` steps, reaching the final sparsity after 12 of them (3/4
    # of the pruning phase), then fine-tune at the final sparsity for the rest.
    frequency = max(1, prune_steps // 16)
    schedule = transforms.polynomial_sparsity(
        FINAL_SPARSITY, begin_step=0, end_step=12 * frequency, frequency=frequency
    )
    dense, curve, level = None, [], None

    step = 0
    total = (epochs + prune_epochs) * per_epoch
    with tqdm(total=total, desc="train", unit="step") as bar:
        for epoch in range(epochs + prune_epochs):
            if epoch == epochs:
                dense = params
                # Every Linear becomes a SparseLinear keeping all its weights; re-pruning
                # keeps that spec, so the optimiser's state made for it stays valid.
                params, state = transforms.sparsify(params, sparsity=0.0)
                opt_state = opt.init(params)
                bar.set_description("prune")
            for xb, yb in fm.random.batches(
                fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, batch_size=batch_size
            ):
                if epoch >= epochs:
                    target = schedule(step - epochs * per_epoch)
                    if target != level:
                        if level is not None:  # the level just left, after its fine-tuning
                            curve.append((level, accuracy(params, state, data.x_test, data.y_test)))
                        params, state = transforms.sparsify(params, state, target)
                        level = target
                loss, grads = step_fn(params, state, xb, yb)
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                step += 1
                bar.set_postfix(
                    epoch=epoch,
                    sparsity=f"{level or 0.0:.3f}",
                    loss=f"{loss.item():.3f}",
                    refresh=False,
                )
                bar.update()
    if dense is None:  # no pruning epochs
        dense = params
        params, state = transforms.sparsify(params, None, FINAL_SPARSITY)
        level = FINAL_SPARSITY
    curve.append((level, accuracy(params, state, data.x_test, data.y_test)))
    return dense, params, state, curve


def time_both(fns: dict, repeats: int, number: int = 20) -> dict[str, list[float]]:
    """Per-call times of each function, ``number`` back-to-back calls per sample, the
    functions taking turns in each of ``repeats`` rounds (load from other processes then
    hits both alike)."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return times


def file_size(params: fm.Params, state: fm.State | None) -> int:
    """Bytes of the ``fm.save`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        fm.save(path, params, state)
        return os.path.getsize(path)


def plot(gradual, one_shot, dense_acc: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(*zip(*gradual, strict=True), marker="o", label="gradual pruning + fine-tuning")
    ax.plot(*zip(*one_shot, strict=True), marker=".", label="one-shot magnitude, no fine-tuning")
    ax.axhline(dense_acc, color="gray", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel("sparsity (share of weights pruned)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Pruning an MLP 64-256-256-10 on digits")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=int(os.environ.get("EPOCHS", 15)),
        help="dense training epochs (default: $EPOCHS, else 15)",
    )
    parser.add_argument(
        "--prune-epochs", type=int, default=None, help="pruning epochs (default: --epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of inference")
    parser.add_argument("--plot", default="prune.png", help="where to save the plot")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prune_epochs = args.epochs if args.prune_epochs is None else args.prune_epochs

    data_key, train_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    x, y = data.x_test, data.y_test
    dense, params, state, gradual = train(
        data, args.epochs, prune_epochs, args.batch_size, args.lr, train_key
    )
    dense_acc = accuracy(dense, None, x, y)
    sparse_acc = accuracy(params, state, x, y)
    sparsity = mask_sparsity(state)
    print(f"test accuracy (dense): {dense_acc:.4f}")
    print(f"test accuracy ({sparsity['all']:.0%} sparse): {sparse_acc:.4f}")
    print(f"change: {100 * (sparse_acc - dense_acc):+.2f} points")
    print("mask sparsity: " + ", ".join(f"{n} {s:.4f}" for n, s in sparsity.items()))

    one_shot = []
    for s in ONE_SHOT:
        p, st = transforms.sparsify(dense, None, s)
        one_shot.append((s, accuracy(p, st, x, y)))
    print(f"one-shot to {FINAL_SPARSITY:.0%}, no fine-tuning: test accuracy ", end="")
    print(f"{dict(one_shot)[FINAL_SPARSITY]:.4f}")
    print("gradual schedule (sparsity: accuracy): ", end="")
    print(", ".join(f"{s:.3f}: {a:.4f}" for s, a in gradual))

    compressed, c_state = transforms.compress(params, state)
    layers = [type(s).__name__ for _, s in compressed.spec.walk() if "Linear" in type(s).__name__]
    print(f"compressed layers: {', '.join(layers)}")
    with torch.no_grad():
        sparse_out = fm.apply(params, x, state=state)
        comp_out = fm.apply(compressed, x, state=c_state)
    same = torch.equal(sparse_out.argmax(-1), comp_out.argmax(-1))
    diff = (sparse_out - comp_out).abs().max().item()
    print(f"compressed vs sparse: predictions identical: {same}, max logit difference {diff:.3g}")
    if not same:
        raise SystemExit("the compressed model predicts differently")

    def run_dense():
        with torch.no_grad():
            return fm.apply(dense, x)

    def run_compressed():
        with torch.no_grad():
            return fm.apply(compressed, x, state=c_state)

    times = time_both({"dense": run_dense, "compressed": run_compressed}, args.repeats)
    t_dense, t_comp = (statistics.median(times[n]) for n in ("dense", "compressed"))
    speedup = statistics.median(
        d / c for d, c in zip(times["dense"], times["compressed"], strict=True)
    )
    print(
        f"inference on the test split {tuple(x.shape)}, {args.threads} thread(s), median of "
        f"{args.repeats} rounds: dense {1e6 * t_dense:.0f} µs, compressed {1e6 * t_comp:.0f} µs "
        f"(compressed {speedup:.2f}x faster)"
    )
    dense_bytes, comp_bytes = file_size(dense, None), file_size(compressed, c_state)
    print(
        f"fm.save file: dense {dense_bytes / 1024:.1f} KiB, compressed "
        f"{comp_bytes / 1024:.1f} KiB ({comp_bytes / dense_bytes:.2f}x)"
    )
    plot(gradual, one_shot, dense_acc, args.plot)
    print(f"plot saved to {args.plot}")
    return {
        "dense_accuracy": dense_acc,
        "sparse_accuracy": sparse_acc,
        "sparsity": sparsity,
        "gradual": gradual,
        "one_shot": one_shot,
        "identical": same,
        "speedup": speedup,
        "dense_bytes": dense_bytes,
        "compressed_bytes": comp_bytes,
    }


if __name__ == "__main__":
    main()
