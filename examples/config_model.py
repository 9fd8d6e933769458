"""Build a ResNet-style classifier from a YAML config, print its summary, train it briefly.

The model is data (examples/config_model.yaml): a list of layer dicts with the sizes that
follow from the input left out. ``fm.from_config`` checks every entry and the chain of
shapes before anything is allocated, ``fm.init_with_state`` infers the omitted sizes from
the shape of one example, and training carries the BatchNorm statistics as explicit state.

    python examples/config_model.py               # about 5 s on two CPU cores
    python examples/config_model.py --epochs 1    # a quick check
    python examples/config_model.py --no-dropout  # the config's dropout entry is skipped
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from _digits import Digits, batches, load, num_batches
from tqdm import tqdm

import funcmodels as fm

CONFIG = Path(__file__).with_name("config_model.yaml")
INPUT_SHAPE = (1, 8, 8)  # one example: a grey 8x8 image, no batch dim


def loss_fn(
    params: fm.Params, state: fm.State, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor
) -> tuple[torch.Tensor, fm.State]:
    """Mean cross-entropy of a batch in train mode, and the updated BatchNorm state."""
    out = fm.run(params, x, state=state, key=key, train=True)
    return F.cross_entropy(out.out, y), out.state


def train(
    spec: fm.Spec, data: Digits, epochs: int, batch_size: int, lr: float, key: torch.Tensor
) -> tuple[fm.Params, fm.State]:
    """Train with Adam; ``key`` decides init, batch order and dropout."""
    init_key, shuffle_key, dropout_key = fm.split(key, 3)
    params, state = fm.init_with_state(init_key, spec, input_shape=INPUT_SHAPE)
    opt = fm.optim.adam(lr)
    opt_state = opt.init(params)
    step_fn = fm.value_and_grad(loss_fn, has_aux=True)

    step = 0
    n_steps = epochs * num_batches(len(data.y_train), batch_size)
    with tqdm(total=n_steps, desc="train", unit="step") as bar:
        for epoch in range(epochs):
            losses = []
            for xb, yb in batches(
                fm.fold_in(shuffle_key, epoch), data.x_train, data.y_train, batch_size
            ):
                (loss, state), grads = step_fn(params, state, xb, yb, fm.fold_in(dropout_key, step))
                updates, opt_state = opt.update(grads, opt_state, params)
                params = fm.optim.apply_updates(params, updates)
                step += 1
                losses.append(loss.item())
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update()
            mean = sum(losses) / len(losses)
            tqdm.write(f"epoch {epoch + 1}/{epochs}: mean train loss {mean:.4f}")
    return params, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="a .yaml or .json config")
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 8)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dropout", action="store_true", help="set the flag use_dropout off")
    # Tensors this small leave threads little to share and much to synchronise.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = fm.load_config(args.config)
    spec = fm.from_config(config, variables={"use_dropout": not args.no_dropout})
    print(fm.summary(spec, INPUT_SHAPE))
    # The spec written back as a config rebuilds the same model.
    same = fm.from_config(spec.to_config()) == spec
    print(f"config round trip: equal specs: {same}")

    data_key, train_key = fm.split(fm.key(args.seed), 2)
    data = load(data_key)
    params, state = train(spec, data, args.epochs, args.batch_size, args.lr, train_key)
    print(
        f"inferred sizes: stem in_channels={params.spec['stem'].in_channels}, "
        f"head in_features={params.spec['head'].in_features}"
    )
    with torch.no_grad():
        logits = fm.apply(params, data.x_test, state=state)
    acc = (logits.argmax(-1) == data.y_test).float().mean().item()
    print(f"test accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
