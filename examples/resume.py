"""Train an MLP on the digits with a checkpoint every few steps; started again, it resumes.

Stop the run at any moment (Ctrl-C, ``kill -9``, a crash during a save) and run the same
command again: it continues from the latest checkpoint and ends with the same parameters,
bit for bit, as a run that never stopped. That holds because everything a step depends on
is either in the checkpoint or a function of it:

* the params and the optimiser state (AdamW's moments and its schedule's step count);
* the run's key: step ``s`` draws its dropout from ``fold_in(dropout_key, s)``;
* the data order: epoch ``e`` visits the examples in ``permutation(fold_in(data_key, e))``,
  so the batch of step ``s`` follows from ``s`` alone.

    python examples/resume.py --dir /tmp/run            # 300 steps, a checkpoint every 25
    python examples/resume.py --dir /tmp/run            # again: "resumed from step 300"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _digits import Digits, accuracy, load
from torch.func import grad_and_value

import funcmodels as fm

nn = fm.nn

SPEC = nn.Sequential(
    nn.Flatten(),
    nn.Linear(64, 64),
    nn.ReLU(),
    nn.Dropout(0.1),
    nn.Linear(64, 10),
)
BATCH = 32


def optimizer(steps: int) -> fm.optim.GradientTransformation:
    """AdamW on a warmup-cosine schedule over ``steps`` (the schedule reads the step count
    kept in the optimiser state, so a resumed run continues the same curve)."""
    schedule = fm.optim.warmup_cosine_decay_schedule(0.0, 5e-3, steps // 10, steps)
    return fm.optim.adamw(schedule, weight_decay=1e-4)


def batch_at(data: Digits, data_key: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of step ``step``: ``(BATCH, 1, 8, 8)`` images and ``(BATCH,)`` labels."""
    per_epoch = len(data.y_train) // BATCH
    epoch, i = divmod(step, per_epoch)
    order = fm.random.permutation(fm.fold_in(data_key, epoch), len(data.y_train))
    idx = order[i * BATCH : (i + 1) * BATCH]
    return data.x_train[idx], data.y_train[idx]


def loss_fn(params: fm.Params, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor):
    return F.cross_entropy(fm.apply(params, x, key=key, train=True), y)


def start(steps: int, seed: int) -> dict[str, Any]:
    """A fresh run: what a checkpoint holds, at step 0."""
    init_key, run_key = fm.split(fm.key(seed))
    params = fm.init(init_key, SPEC)
    return {"params": params, "opt": optimizer(steps).init(params), "step": 0, "key": run_key}


def train(
    directory: str,
    steps: int = 300,
    every: int = 25,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train to ``steps``, saving every ``every`` steps (and the last) in ``directory``;
    resume from the latest checkpoint there if there is one.

    Returns:
        The final run: ``{"params", "opt", "step", "key"}``.
    """
    data = load(fm.key(seed))
    mgr = fm.checkpoint.Manager(directory, keep=2)
    run = start(steps, seed)
    if mgr.latest_step() is not None:
        run = mgr.restore(like=run)  # checks the structure against a fresh run's
        log(f"resumed from step {run['step']}")
    params, opt_state = run["params"], run["opt"]
    data_key, dropout_key = fm.split(run["key"])
    opt = optimizer(steps)
    step_fn = grad_and_value(loss_fn)
    for step in range(run["step"], steps):
        xb, yb = batch_at(data, data_key, step)
        grads, loss = step_fn(params, xb, yb, fm.fold_in(dropout_key, step))
        updates, opt_state = opt.update(grads, opt_state, params)
        params = fm.optim.apply_updates(params, updates)
        log(f"step {step + 1} loss {loss.item():.4f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            run = {"params": params, "opt": opt_state, "step": step + 1, "key": run["key"]}
            mgr.save(step + 1, run)
    log(f"test accuracy: {accuracy(params, data.x_test, data.y_test):.3f}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="checkpoints/resume", help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25, help="steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.dir, args.steps, args.every, args.seed)


if __name__ == "__main__":
    main()
