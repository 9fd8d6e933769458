"""A mixture of experts on scikit-learn's 8x8 digits, next to a dense model of equal
active parameters.

Each image is a sequence of 8 tokens (its rows, 8 pixels each). Both models embed the
tokens to width 32, transform each token with a feed-forward block, and classify the
concatenated tokens:

* MoE: ``transforms.MoE`` with 4 experts (MLPs 32-64-32), each token routed to 2 of them,
  trained with the Switch / ST-MoE auxiliary losses (load balance and router z-loss);
* dense: one MLP 32-128-32, about the parameters one token meets in the MoE (2 experts of
  hidden 64, plus the gate), so both do about the same work per token.

It prints both test accuracies and each expert's share of the tokens, and saves a plot of
the experts' shares over training (``--plot``, PNG).

    python examples/moe.py             # a few seconds on two CPU cores
    python examples/moe.py --epochs 3  # a quick check
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from _digits import Digits, load, num_batches
from tqdm import tqdm

import funcmodels as fm
import transforms

nn = fm.nn
WIDTH, EXPERTS, TOP_K, HIDDEN = 32, 4, 2, 64


def model(moe: bool) -> fm.Spec:
    """Tokens ``(8, 8)`` -> 10 logits, with an MoE block or a dense one of equal work."""
    if moe:
        block = transforms.MoE(
            expert=nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, WIDTH)),
            num_experts=EXPERTS,
            top_k=TOP_K,
        )
    else:
        block = nn.Sequential(
            nn.Linear(WIDTH, TOP_K * HIDDEN), nn.GELU(), nn.Linear(TOP_K * HIDDEN, WIDTH)
        )
    return nn.Sequential(
        {
            "embed": nn.Linear(8, WIDTH),
            "block": block,
            "flat": nn.Rearrange("b t d -> b (t d)"),  # keeps each row's place
            "head": nn.Linear(8 * WIDTH, 10),
        }
    )


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy plus the weighted MoE losses (zero for the dense model); also returns
    the aux outputs, for the utilisation plot."""
    out = fm.run(params, x)
    return F.cross_entropy(out.out, y) + transforms.moe_aux_loss(out.aux), out.aux


def train(spec: fm.Spec, data: Digits, epochs: int, batch_size: int, lr: float, key: torch.Tensor):
    """Adam on ``spec``; returns the params and, per epoch, each expert's share of tokens."""
    init_key, shuffle_key = fm.split(key, 2)
    params = fm.init(init_key, spec)
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step = fm.value_and_grad(loss_fn, has_aux=True)
    shares = []
    x_train = data.x_train.squeeze(1)  # (N, 8 rows, 8 pixels)
    with tqdm(
        total=epochs * num_batches(len(data.y_train), batch_size), desc="train", unit="step"
    ) as bar:
        for epoch in range(epochs):
            counts = torch.zeros(EXPERTS)
            for xb, yb in fm.random.batches(
                fm.fold_in(shuffle_key, epoch), x_train, data.y_train, batch_size=batch_size
            ):
                (loss, aux), grads = step(params, xb, yb)
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                if "block" in aux:
                    counts += aux["block"]["expert_counts"]
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
            shares.append((counts / counts.sum().clamp(min=1)).tolist())
    return params, shares


def accuracy(params: fm.Params, data: Digits) -> float:
    with torch.no_grad():
        return (
            (fm.apply(params, data.x_test.squeeze(1)).argmax(-1) == data.y_test)
            .float()
            .mean()
            .item()
        )


def plot(shares: list[list[float]], path: str) -> None:
    """Each expert's share of the routed tokens, epoch by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(shares) + 1)
    for e in range(EXPERTS):
        ax.plot(epochs, [s[e] for s in shares], marker="o", label=f"expert {e}")
    ax.axhline(1 / EXPERTS, color="gray", linestyle="--", linewidth=1, label="perfect balance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of routed tokens")
    ax.set_title(f"MoE on digits: {EXPERTS} experts, top-{TOP_K}")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 20)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="moe_utilisation.png", help="where to save the plot")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_key, moe_key, dense_key = fm.split(fm.key(args.seed), 3)
    data = load(data_key)
    moe_params, shares = train(model(True), data, args.epochs, args.batch_size, args.lr, moe_key)
    dense_params, _ = train(model(False), data, args.epochs, args.batch_size, args.lr, dense_key)
    dense_active = sum(t.numel() for t in dense_params.flat().values())
    moe_total = sum(t.numel() for t in moe_params.flat().values())
    per_expert = sum(
        t[0].numel() for n, t in moe_params.flat().items() if n.startswith("block.experts.")
    )
    moe_active = moe_total - (EXPERTS - TOP_K) * per_expert  # the experts a token skips
    print(f"parameters a token meets: moe {moe_active} (of {moe_total}), dense {dense_active}")
    print(f"test accuracy (moe): {accuracy(moe_params, data):.4f}")
    print(f"test accuracy (dense): {accuracy(dense_params, data):.4f}")
    print("expert shares, last epoch: " + ", ".join(f"{s:.3f}" for s in shares[-1]))
    plot(shares, args.plot)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
