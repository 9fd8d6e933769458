"""Train a small transformer on scikit-learn's 8x8 digits, one token per image row.

Each image becomes a sequence of 8 tokens, its rows: a row's 8 pixels are projected to the
model width by a ``Linear`` layer and a learned position embedding (an ``Embedding`` looked
up at the row indices ``0..7``) is added. Two ``TransformerEncoderLayer`` blocks mix the
rows, their mean feeds a linear head. (One token per pixel, its intensity as the token id,
works too but needs a sequence 8 times longer and many more epochs.) The blocks are one
``fm.nn.Repeat`` of a ``TransformerEncoderLayer``: their params are stacked on a leading
axis, and ``torch.compile`` would trace one block however deep the model; ``--remat``
recomputes each block's activations in the backward pass (less memory, the same values
and gradients). After training: the test accuracy, per-sample gradients through
attention (a ``vmap`` of the gradient of one example's loss, checked against one
example's gradient), and the model shipped as real ``torch.nn`` layers
(``transforms.to_module``) and as a ``torch.export`` program, both checked to predict as
``fm.apply`` does.

    python examples/transformer.py             # about fifteen seconds on one CPU core
    python examples/transformer.py --epochs 3  # a quick check
    python examples/transformer.py --remat     # the blocks' activations recomputed
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _digits import Digits, batches, load, num_batches
from torch.func import grad, vmap
from tqdm import tqdm

import funcmodels as fm
import transforms

nn = fm.nn

ROWS = 8  # tokens: the rows of an 8x8 image
WIDTH = 32


@dataclass(frozen=True)
class RowsAndPositions(fm.Spec):
    """Row tokens plus a learned position embedding: ``(*, L, F)`` -> ``(*, L, D)``.

    Children ``tokens`` (``Linear(features, dim)``, each row's pixels to a vector) and
    ``positions`` (``Embedding(length, dim)``, looked up at ``0 .. L-1``).
    """

    features: int
    length: int
    dim: int

    def children(self):
        return (
            ("tokens", nn.Linear(self.features, self.dim)),
            ("positions", nn.Embedding(self.length, self.dim)),
        )

    def out_shape(self, in_shape, path="", record=None):
        return (*in_shape[:-1], self.dim)

    def forward(self, ctx: fm.Context, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[-2], device=x.device)
        return ctx.apply("tokens", x) + ctx.apply("positions", positions)


BLOCKS = 2


def model(remat: bool = False) -> nn.Sequential:
    """The model; ``remat`` recomputes the blocks' activations in the backward pass."""
    block = nn.TransformerEncoderLayer(
        WIDTH, 4, dim_feedforward=64, dropout=0.1, batch_first=True, norm_first=True
    )
    return nn.Sequential(
        {
            "embed": RowsAndPositions(8, ROWS, WIDTH),
            "blocks": nn.Repeat(block, BLOCKS, remat=remat),  # params (BLOCKS, ...)
            "norm": nn.LayerNorm(WIDTH),
            "pool": nn.Reduce("... l d -> ... d", "mean"),  # batched (N, L, D) or one (L, D)
            "head": nn.Linear(WIDTH, 10),
        }
    )


def rows(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 8, 8)`` pixels -> ``(N, 8, 8)``: a sequence of 8 rows of 8 pixels each."""
    return images.squeeze(1)


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch in train mode (``key`` drives every dropout)."""
    return F.cross_entropy(fm.apply(params, x, key=key, train=True), y)


def sample_loss(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example: ``x`` is ``(8, 8)`` (its rows), ``y`` a scalar label."""
    return F.cross_entropy(fm.apply(params, x), y)


def train(
    spec: fm.Spec, data: Digits, epochs: int, batch_size: int, lr: float, key: torch.Tensor
) -> fm.Params:
    """Train ``spec`` with AdamW; ``key`` decides init, batch order and dropout."""
    init_key, shuffle_key, dropout_key = fm.split(key, 3)
    params = fm.init(init_key, spec)
    opt = fm.optim.adamw(lr, weight_decay=1e-4)
    opt_state = opt.init(params)
    step_fn = fm.value_and_grad(loss_fn)
    x_train = rows(data.x_train)
    step = 0
    n_steps = epochs * num_batches(len(data.y_train), batch_size)
    with tqdm(total=n_steps, desc="train", unit="step") as bar:
        for epoch in range(epochs):
            for xb, yb in batches(
                fm.fold_in(shuffle_key, epoch), x_train, data.y_train, batch_size
            ):
                loss, grads = step_fn(params, xb, yb, fm.fold_in(dropout_key, step))
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                step += 1
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    return params


def accuracy(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (fm.apply(params, x).argmax(-1) == y).float().mean().item()


def show_per_sample_grads(params: fm.Params, x: torch.Tensor, y: torch.Tensor) -> None:
    """Per-sample gradients through attention: grad of one example's loss, vmapped."""
    per_sample = fm.to_state_dict(vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y))
    print("per-sample gradient shapes (attention of the blocks, stacked on dim 1):")
    for name, g in per_sample.items():
        if name.startswith("blocks.self_attn."):
            print(f"  {name:45s} {tuple(g.shape)}")
    one = fm.to_state_dict(grad(sample_loss)(params, x[0], y[0]))
    err = max((per_sample[n][0] - g).abs().max().item() for n, g in one.items())
    scale = max(g.abs().max().item() for g in one.values())
    print(f"vmap vs single-example gradient of sample 0: relative difference {err / scale:.2e}")


def ship(params: fm.Params, x: torch.Tensor) -> None:
    """``to_module`` (real torch.nn layers) and a ``torch.export`` program, both checked."""
    want = fm.apply(params, x)
    module = transforms.to_module(params)
    with torch.no_grad():
        as_module = module(x)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    exported = program.module()(x[:7])
    print(f"to_module: {type(module.blocks).__name__} of {module.blocks.spec.n} blocks")
    print(
        f"to_module vs fm.apply: max difference {(as_module - want).abs().max().item():.2e}; "
        f"torch.export (7 of {len(x)}): max difference "
        f"{(exported - want[:7]).abs().max().item():.2e}"
    )
    same = torch.equal(as_module.argmax(-1), want.argmax(-1))
    print(f"to_module predictions identical: {same}")
    if not same:
        raise SystemExit("the torch.nn module predicts differently")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=int(os.environ.get("EPOCHS", 10)),
        help="passes over the training set (default: $EPOCHS, else 10)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--remat", action="store_true", help="recompute the blocks' activations in backward"
    )
    # Tensors this small leave threads little to share and much to synchronise: one
    # thread is faster, and many times faster when other processes compete for the cores.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_key, train_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    spec = model(args.remat)
    print(fm.summary(spec, (ROWS, 8)))
    params = train(spec, data, args.epochs, args.batch_size, args.lr, train_key)
    x_test = rows(data.x_test)
    print(f"test accuracy: {accuracy(params, x_test, data.y_test):.4f}")
    show_per_sample_grads(params, x_test[:16], data.y_test[:16])
    ship(params, x_test)


if __name__ == "__main__":
    main()
