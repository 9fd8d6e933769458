"""Per-sample early exit: ``transforms.EarlyExit``.

A stack of blocks, some followed by an exit head. In eval mode each sample leaves at the
first exit whose criterion holds (and which is deeper than ``min_depth``), else at the
deepest exit within its maximum depth; its output is that exit's logits.

* **Eager** (plain tensors): finished samples leave the batch, so later blocks run on
  fewer rows; the outputs are scattered back in order. One host sync per exit.
* **Under vmap, grad or torch.compile**: every block runs for every sample and each sample
  keeps the logits of its exit (masking): the same results, static shapes.
* **Train mode**: every block runs for every sample; the output is the deepest exit's
  logits, and all exits' logits are sown (``exit_logits``, stacked) for a deep-supervision
  loss (:func:`deep_supervision_loss`).

Eval sows ``depth`` (the blocks each sample ran, int64) and ``confidence`` (the maximum
softmax probability at its exit). :func:`calibrate_threshold` picks the threshold with the
least mean depth whose accuracy stays within a given drop of the full-depth model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

import funcmodels as fm
from funcmodels.extend import subtree

__all__ = ["Calibration", "EarlyExit", "calibrate_threshold", "deep_supervision_loss"]

CRITERIA = ("max_prob", "entropy", "patience")


def _spec_tuple(field: str, value: object, allow_none: bool) -> tuple:
    if isinstance(value, fm.Spec) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"EarlyExit: {field} must be a tuple of layer specs, got {type(value).__name__}"
        )
    for i, v in enumerate(value):
        if not (isinstance(v, fm.Spec) or (allow_none and v is None)):
            what = "a layer spec or None" if allow_none else "a layer spec"
            raise TypeError(f"EarlyExit: {field}[{i}] must be {what}, got {type(v).__name__}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class EarlyExit(fm.Spec):
    """Blocks with exits; each sample leaves at its own exit (see the module docstring).

    Arguments:
        blocks: specs mapping the hidden state to the next (``hidden -> hidden``).
        heads: one per block: a spec mapping the hidden state after that block to logits
            ``(N, C)``, or ``None`` where the block has no exit; at least one exit.
        criterion: when a sample may leave at an exit: ``'max_prob'`` (its maximum softmax
            probability exceeds ``threshold``), ``'entropy'`` (the entropy of its softmax
            is below ``threshold``, in nats) or ``'patience'`` (its argmax has stayed the
            same over ``patience`` successive exits, as PABEE counts it).
        threshold: the criterion's bound (``[0, 1]`` for max_prob, ``>= 0`` for entropy;
            not used by patience).
        patience: for ``'patience'``, the number of unchanged predictions needed.
        min_depth: an exit after block ``d`` (counting from 1) is taken by the criterion
            only if ``d > min_depth``.
        depth_estimator: optional spec mapping the input to ``(N, 1)`` values ``e`` in
            ``[0, 1]``; a sample's maximum depth is then ``min(L, max(min_depth,
            floor(min_depth * (1 + e))))`` (the seed article's rule, per sample), else
            ``L``. A NaN estimate sets no limit (``L``: the estimator failed, so the
            sample may run every block). A sample no criterion lets out leaves at the
            deepest exit within its maximum depth (the shallowest exit if there is none).

    Children: ``blocks.{i}``, ``heads.{i}`` (exits only), ``depth_estimator``.
    Shapes: input whatever the first block takes, output ``(N, C)`` logits.

    Aux (``fm.run(params, x).aux[path]``): ``depth`` (blocks run per sample) and
    ``confidence`` in eval mode; ``exit_logits`` in train mode. The module that
    ``transforms.to_module`` makes returns the logits when called; its ``run(x)`` returns
    the whole output, so ``module.run(x).aux[path]["depth"]`` gives the depths.
    """

    blocks: tuple[fm.Spec, ...]
    heads: tuple[fm.Spec | None, ...]
    criterion: str = "max_prob"
    threshold: float = 0.9
    patience: int = 2
    min_depth: int = 0
    depth_estimator: fm.Spec | None = None

    def __post_init__(self):
        blocks = _spec_tuple("blocks", self.blocks, False)
        heads = _spec_tuple("heads", self.heads, True)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "heads", heads)
        if not blocks:
            raise ValueError("EarlyExit: blocks must not be empty")
        if len(heads) != len(blocks):
            raise ValueError(
                f"EarlyExit: heads must have one entry per block ({len(blocks)}), got "
                f"{len(heads)} (use None where a block has no exit)"
            )
        if all(h is None for h in heads):
            raise ValueError("EarlyExit: no exit at all: give at least one block a head")
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"EarlyExit: criterion must be one of {list(CRITERIA)}, got {self.criterion!r}"
            )
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise TypeError(f"EarlyExit: threshold must be a finite number, got {t!r}")
        if self.criterion == "max_prob" and not 0 <= t <= 1:
            raise ValueError(f"EarlyExit: a max_prob threshold is a probability in [0, 1], got {t}")
        if self.criterion == "entropy" and t < 0:
            raise ValueError(f"EarlyExit: an entropy threshold is >= 0 (nats), got {t}")
        object.__setattr__(self, "threshold", float(t))
        for field, lo in (("patience", 1), ("min_depth", 0)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"EarlyExit: {field} must be an int >= {lo}, got {v!r}")
        if self.min_depth >= len(blocks):
            raise ValueError(
                f"EarlyExit: min_depth={self.min_depth} leaves no block after it to exit at; "
                f"it must be below the number of blocks ({len(blocks)})"
            )
        if self.depth_estimator is not None:
            if not isinstance(self.depth_estimator, fm.Spec):
                raise TypeError("EarlyExit: depth_estimator must be a layer spec or None")
            if self.min_depth == 0:
                raise ValueError(
                    "EarlyExit: a depth_estimator needs min_depth >= 1: the maximum depth is "
                    "min(L, max(min_depth, floor(min_depth * (1 + e)))), 0 for min_depth 0"
                )
        children = [
            ("blocks", fm.nn.Sequential(*blocks)),
            ("heads", fm.nn.Sequential({str(i): h for i, h in enumerate(heads) if h is not None})),
        ]
        if self.depth_estimator is not None:
            children.append(("depth_estimator", self.depth_estimator))
        object.__setattr__(self, "_children", tuple(children))
        object.__setattr__(
            self, "_exits", tuple(i + 1 for i, h in enumerate(heads) if h is not None)
        )

    def children(self):
        return self._children

    @property
    def exit_depths(self) -> tuple[int, ...]:
        """The depths (blocks run, from 1) at which there is an exit."""
        return self._exits

    # -- computation ------------------------------------------------------------------------
    def forward(self, ctx: fm.Context, x: Any) -> torch.Tensor:
        if ctx.train:
            logits = self._all_exits(ctx, x)
            ctx.sow("exit_logits", torch.stack(logits))
            ctx.sow("exit_depths", torch.tensor(self._exits, device=logits[0].device))
            return logits[-1]
        max_depth = self._max_depth(ctx, x)
        if ctx.mode == "eager":
            out, depth, confidence = self._compacted(ctx, x, max_depth)
        else:
            logits = torch.stack(self._all_exits(ctx, x))
            out, depth, confidence = decide(self, logits, max_depth)
        ctx.sow("depth", depth)
        ctx.sow("confidence", confidence)
        return out

    def _all_exits(self, ctx, x) -> list[torch.Tensor]:
        out, h = [], x
        for i in range(len(self.blocks)):
            h = ctx.apply(f"blocks.{i}", h)
            if self.heads[i] is not None:
                out.append(_logits(ctx.apply(f"heads.{i}", h)))
        return out

    def _max_depth(self, ctx, x) -> torch.Tensor | None:
        if self.depth_estimator is None:
            return None
        e = ctx.apply("depth_estimator", x)
        return max_depth_of(self, e)

    def _compacted(self, ctx, x, max_depth):
        """Eager: finished samples leave the batch; one host sync per exit."""
        n = _batch_size(x)
        device = _device(x)
        fallback = fallback_depth(self, max_depth, n, device)
        idx = torch.arange(n, device=device)
        depth = torch.zeros(n, dtype=torch.int64, device=device)
        confidence = torch.zeros(n, device=device)
        out = prev = count = None
        h = x
        for i in range(len(self.blocks)):
            d = i + 1
            h = ctx.apply(f"blocks.{i}", h)
            if self.heads[i] is None:
                continue
            logits = _logits(ctx.apply(f"heads.{i}", h))
            if out is None:
                out = logits.new_zeros((n, logits.shape[-1]))
                confidence = confidence.to(
                    logits.dtype if logits.is_floating_point() else torch.float32
                )
            probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
            holds, prev, count = _criterion(self, probs, prev, count)
            leave = (holds & (d > self.min_depth)) | (fallback.index_select(0, idx) == d)
            done = int(leave.sum())  # the one host sync of this exit
            if done == 0:
                continue
            order = torch.argsort(~leave, stable=True)  # leaving rows first, in order
            gone, stay = order[:done], order[done:]
            where = idx.index_select(0, gone)
            out = out.index_put((where,), logits.index_select(0, gone))
            depth = depth.index_put((where,), torch.full_like(where, d))
            confidence = confidence.index_put(
                (where,), probs.index_select(0, gone).amax(-1).to(confidence.dtype)
            )
            if done == idx.shape[0]:
                break
            idx = idx.index_select(0, stay)
            h = _rows(h, stay)
            if prev is not None:
                prev, count = prev.index_select(0, stay), count.index_select(0, stay)
        return out, depth, confidence


def _logits(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"an exit head must give logits (N, C), got {shape}")
    return t


def _batch_size(x: Any) -> int:
    leaves = fm.tree.leaves(x)
    if not leaves or not isinstance(leaves[0], torch.Tensor) or leaves[0].dim() == 0:
        raise ValueError("expected a batched input (N, ...)")
    return leaves[0].shape[0]


def _device(x: Any) -> torch.device:
    return fm.tree.leaves(x)[0].device


def _rows(x: Any, rows: torch.Tensor) -> Any:
    return fm.tree.map(lambda t: t.index_select(0, rows), x)


def _criterion(spec: EarlyExit, probs, prev, count):
    """Whether each row's criterion holds at this exit; the patience bookkeeping."""
    if spec.criterion == "max_prob":
        return probs.amax(-1) > spec.threshold, prev, count
    if spec.criterion == "entropy":
        return torch.special.entr(probs).sum(-1) < spec.threshold, prev, count
    pred = probs.argmax(-1)
    if prev is None:
        count = torch.zeros_like(pred)
    else:
        count = torch.where(pred == prev, count + 1, torch.zeros_like(count))
    return count >= spec.patience, pred, count


def max_depth_of(spec: EarlyExit, estimate: torch.Tensor) -> torch.Tensor:
    """``min(L, max(min_depth, floor(min_depth * (1 + e))))`` per sample (int64)."""
    if not isinstance(estimate, torch.Tensor) or estimate.dim() != 2 or estimate.shape[1] != 1:
        shape = (
            tuple(estimate.shape) if isinstance(estimate, torch.Tensor) else type(estimate).__name__
        )
        raise ValueError(f"the depth estimator must give (N, 1) values in [0, 1], got {shape}")
    # In double precision, as the article's Python arithmetic on the estimate; clamped
    # before the cast (NaN or inf cast to int64 is undefined: it read as min_depth). A NaN
    # estimate sets no limit: the sample may run every block, as without an estimator.
    depth = len(spec.blocks)
    raw = torch.floor(spec.min_depth * (1 + estimate[:, 0].to(torch.float64)))
    raw = torch.nan_to_num(raw, nan=depth, posinf=depth, neginf=spec.min_depth)
    return raw.clamp(min=spec.min_depth, max=depth).to(torch.int64)


def fallback_depth(spec: EarlyExit, max_depth, n: int, device) -> torch.Tensor:
    """The exit a sample takes when no criterion lets it out: the deepest exit within its
    maximum depth, else the shallowest exit."""
    if max_depth is None:
        return torch.full((n,), spec.exit_depths[-1], dtype=torch.int64, device=device)
    exits = torch.tensor(spec.exit_depths, device=device)
    within = exits[None, :] <= max_depth[:, None]
    deepest = (exits[None, :] * within).amax(1)
    return torch.where(within.any(1), deepest, torch.full_like(deepest, spec.exit_depths[0]))


def decide(spec: EarlyExit, logits: torch.Tensor, max_depth: torch.Tensor | None):
    """Each sample's exit from the logits of every exit ``(n_exits, N, C)``, by masking.

    Returns:
        ``(logits at each sample's exit (N, C), depth (N,) int64, confidence (N,))``.
    """
    n_exits, n = logits.shape[0], logits.shape[1]
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    fallback = fallback_depth(spec, max_depth, n, logits.device)
    exits = torch.tensor(spec.exit_depths, device=logits.device)
    prev = count = None
    takes = []
    for j in range(n_exits):
        holds, prev, count = _criterion(spec, probs[j], prev, count)
        d = spec.exit_depths[j]
        takes.append((holds & (d > spec.min_depth)) | (fallback == d))
    take = torch.stack(takes)  # (n_exits, N); every column has a True (the fallback)
    first = take.to(torch.int64).argmax(0)
    rows = torch.arange(n, device=logits.device)
    chosen = logits[first, rows]
    return chosen, exits[first], probs[first, rows].amax(-1)


def deep_supervision_loss(
    aux: Mapping[str, Any], target: torch.Tensor, weights: str | Sequence[float] = "uniform"
) -> torch.Tensor:
    """The weighted mean of the exits' cross-entropy losses, from one EarlyExit layer's
    train-mode aux (``fm.run(params, x, key=k, train=True).aux[path]``).

    Arguments:
        aux: that layer's sown values (``exit_logits`` ``(n_exits, N, C)``, ``exit_depths``).
        target: class indices ``(N,)``.
        weights: ``'uniform'``, ``'depth'`` (proportional to each exit's depth, as PABEE
            weights layer ``i`` by ``i``) or one weight per exit; normalised to sum to 1.

    Returns:
        a 0-dim tensor.

    Raises:
        ValueError: ``aux`` is not an EarlyExit layer's train-mode aux, or ``weights`` is not
            ``'uniform'``, ``'depth'`` or one number per exit.
    """
    if not isinstance(aux, Mapping) or "exit_logits" not in aux:
        raise ValueError(
            "transforms.deep_supervision_loss: expected an EarlyExit layer's train-mode aux "
            "(fm.run(..., train=True).aux[path]), which holds 'exit_logits'"
        )
    logits = aux["exit_logits"]
    n_exits = logits.shape[0]
    if weights == "uniform":
        w = torch.ones(n_exits, device=logits.device)
    elif weights == "depth":
        w = aux["exit_depths"].to(torch.float32)
    elif isinstance(weights, (list, tuple)) and len(weights) == n_exits:
        w = torch.tensor([float(v) for v in weights], device=logits.device)
    else:
        raise ValueError(
            f"transforms.deep_supervision_loss: weights must be 'uniform', 'depth' or "
            f"{n_exits} numbers, got {weights!r}"
        )
    losses = torch.stack([F.cross_entropy(logits[j], target) for j in range(n_exits)])
    return (losses * (w / w.sum()).to(losses.dtype)).sum()


class Calibration(NamedTuple):
    """What :func:`calibrate_threshold` found."""

    threshold: float
    """the chosen threshold"""
    accuracy: float
    """accuracy at it"""
    mean_depth: float
    """mean blocks run at it"""
    full_accuracy: float
    """accuracy of the full-depth model (every block, the deepest exit)"""
    table: tuple[tuple[float, float, float], ...]
    """``(threshold, accuracy, mean depth)`` for every candidate"""


def calibrate_threshold(
    params: fm.Params,
    x: Any,
    y: torch.Tensor,
    *,
    state: fm.State | None = None,
    max_drop: float = 0.01,
    thresholds: Sequence[float] | None = None,
) -> Calibration:
    """The threshold with the least mean depth on ``(x, y)`` whose accuracy is at most
    ``max_drop`` below the full-depth model's.

    The blocks and heads run once (eval mode) and every candidate threshold is then
    decided on their logits, as the masked path does.

    Arguments:
        params: an :class:`EarlyExit` model's params (the layer at the root).
        x: validation inputs, a batch of ``N`` examples.
        y: their class indices, an integer tensor of shape ``(N,)``.
        state: its buffers, if it has any.
        max_drop: the accuracy (a fraction) that may be given up.
        thresholds: candidates; by default 101 points over the criterion's range (for
            patience, the patience values 1 to the number of exits).

    Returns:
        a :class:`Calibration`; its ``threshold`` (for patience: the patience) goes into
            ``params.with_spec(dataclasses.replace(params.spec, threshold=...))``.

    Raises:
        TypeError: ``params`` are not an :class:`EarlyExit` model's.
        ValueError: no candidate keeps the accuracy within ``max_drop``.
    """
    spec = params.spec
    if not isinstance(spec, EarlyExit):
        raise TypeError(
            f"transforms.calibrate_threshold: expected an EarlyExit model, got {spec.type_name}"
        )

    def part(path: str, inp: Any) -> Any:
        """The layer at ``path`` alone, in eval mode."""
        return fm.apply(
            subtree(params, path), inp, state=None if state is None else subtree(state, path)
        )

    logits, h = [], x
    with torch.no_grad():
        for i in range(len(spec.blocks)):
            h = part(f"blocks.{i}", h)
            if spec.heads[i] is not None:
                logits.append(part(f"heads.{i}", h))
        logits = torch.stack(logits)
        max_depth = None
        if spec.depth_estimator is not None:
            max_depth = max_depth_of(spec, part("depth_estimator", x))
    full = (logits[-1].argmax(-1) == y).float().mean().item()
    if thresholds is None:
        if spec.criterion == "patience":
            thresholds = list(range(1, len(spec.exit_depths) + 1))
        elif spec.criterion == "max_prob":
            thresholds = [i / 100 for i in range(101)]
        else:
            c = logits.shape[-1]
            thresholds = [math.log(c) * i / 100 for i in range(101)]
    table = []
    for t in thresholds:
        candidate = (
            dataclasses.replace(spec, patience=int(t))
            if spec.criterion == "patience"
            else dataclasses.replace(spec, threshold=float(t))
        )
        out, depth, _ = decide(candidate, logits, max_depth)
        table.append(
            (float(t), (out.argmax(-1) == y).float().mean().item(), depth.float().mean().item())
        )
    ok = [row for row in table if row[1] >= full - max_drop]
    if not ok:
        raise ValueError(
            f"transforms.calibrate_threshold: no candidate keeps the accuracy within {max_drop} "
            f"of the full-depth model's {full:.4f} (the best reached "
            f"{max(row[1] for row in table):.4f}); a depth estimator may cap the depth below "
            "what that accuracy needs"
        )
    best = min(ok, key=lambda row: (row[2], -row[1]))
    return Calibration(best[0], best[1], best[2], full, tuple(table))


fm.register_layer("early_exit", EarlyExit)
