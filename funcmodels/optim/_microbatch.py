"""optax's ``microbatch``: evaluate a function on slices of a batch, one after another,
and combine the results (sum, mean, running mean or concatenation), to bound memory.

The slices are optax's: microbatch ``i`` of ``n`` holds the rows ``i, i + n, i + 2n, ...``
(optax reshapes the batch axis to ``(n, microbatch_size)`` in column-major order), so
sums are formed in the same order and a concatenation restores the batch's order.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How :func:`microbatch` combines the outputs of the microbatches, as optax's:
    ``carry = init(x_0); carry = update(carry, x_i, i)`` for each output ``x_i`` (``i``
    from 0), then ``finalize(carry)``. ``init`` gets the first microbatch's output (a
    tensor or tree of them, for its shapes and dtypes; optax gives its abstract shape).

    Attributes:
        init: the first output -> the initial carry.
        update: ``(carry, output, index) -> carry``.
        finalize: the last carry -> the result.
        aggregate: the outputs stacked on a new dim 0 -> one value (optax's
            ``micro_vmap`` reduction).
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, int], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in ways to combine microbatch outputs (optax's).

    Arguments:
        value (int): a member's value, to look the member up (``AccumulationType(2)``).
        names (None): part of Enum's functional API, not used by this enum.
        module (None): as ``names``.
        qualname (None): as ``names``.
        type (None): as ``names``.
        start (int): as ``names``.
        boundary (None): as ``names``.
    """

    MEAN = enum.auto()
    """the mean of the outputs (floating outputs only)"""
    SUM = enum.auto()
    """the sum of the outputs"""
    RUNNING_MEAN = enum.auto()
    """the mean of the outputs computed so far (with ``num_real_microbatches``)"""
    CONCAT = enum.auto()
    """the outputs concatenated along dim 0, in the batch's order"""


def _floating(where: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def zeros(x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            raise ValueError(f"{where}: MEAN and RUNNING_MEAN need floating outputs, got {x.dtype}")
        return torch.zeros_like(x)

    return zeros


def _lift(acc: Accumulator) -> Accumulator:
    """A tensor-wise Accumulator applied leaf by leaf to trees; ``None`` leaves stay
    ``None`` (optax's trees have no leaf there)."""

    def skip(f: Callable[..., Any]) -> Callable[..., Any]:
        return lambda x, *rest: None if x is None else f(x, *rest)

    return Accumulator(
        lambda value: pytree.tree_map(skip(acc.init), value),
        lambda carry, value, i: pytree.tree_map(
            skip(lambda c, v: acc.update(c, v, i)), carry, value
        ),
        lambda carry: pytree.tree_map(skip(acc.finalize), carry),
        lambda values: pytree.tree_map(skip(acc.aggregate), values),
    )


def _builtin(kind: AccumulationType, n: int) -> Accumulator:
    where = "fm.optim.microbatch"
    if kind is AccumulationType.SUM:
        acc = Accumulator(torch.zeros_like, lambda c, v, _: c + v, lambda c: c, lambda v: v.sum(0))
    elif kind is AccumulationType.MEAN:
        acc = Accumulator(
            _floating(where), lambda c, v, _: c + v, lambda c: c / n, lambda v: v.mean(0)
        )
    elif kind is AccumulationType.RUNNING_MEAN:

        def running(c, v, i):
            p = i / (i + 1)
            return c * p + v * (1 - p)

        acc = Accumulator(_floating(where), running, lambda c: c, lambda v: v.mean(0))
    else:
        acc = Accumulator(
            lambda v: v.new_zeros((n, *v.shape)),
            lambda c, v, i: c.index_copy(0, torch.tensor([i], device=c.device), v.unsqueeze(0)),
            lambda c: c.transpose(0, 1).reshape(-1, *c.shape[2:]),
            lambda v: v,
        )
    return _lift(acc)


def _canonical(tree: Any, n: int) -> Accumulator:
    """A tree of Accumulators / AccumulationTypes (a prefix of the output's tree) as one
    Accumulator."""

    def one(acc):
        if isinstance(acc, Accumulator):
            return acc
        if isinstance(acc, AccumulationType):
            return _builtin(acc, n)
        raise ValueError(f"fm.optim.microbatch: unknown accumulator {acc!r}")

    def leaf(x):
        return isinstance(x, (Accumulator, AccumulationType))

    accs = pytree.tree_map(one, tree, is_leaf=leaf)

    def each(method: str) -> Callable[..., Any]:
        def run(*trees):
            return pytree.tree_map(lambda a, *t: getattr(a, method)(*t), accs, *trees, is_leaf=leaf)

        return run

    return Accumulator(
        each("init"),
        lambda carry, value, i: pytree.tree_map(
            lambda a, c, v: a.update(c, v, i), accs, carry, value, is_leaf=leaf
        ),
        each("finalize"),
        each("aggregate"),
    )


def _batch_size(where: str, batch: list[tuple[Any, int]], microbatch_size: int) -> int:
    sizes = {leaf.shape[axis] for tree, axis in batch for leaf in pytree.tree_leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(
            f"{where}: the batch arguments must have one batch size, got {sorted(sizes)}"
        )
    size = sizes.pop()
    if size % microbatch_size:
        raise ValueError(
            f"{where}: the batch size {size} must be divisible by microbatch_size={microbatch_size}"
        )
    return size


def microbatch(
    fun: Callable[..., Any],
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | torch.Tensor | None = None,
) -> Callable[..., Any]:
    """``fun`` evaluated on microbatches one after another and the results combined, as
    optax's: for a batch of ``B`` rows, ``B // microbatch_size`` calls, microbatch ``i``
    holding the rows ``i, i + n, ...`` (``n`` microbatches, optax's column-major split).

    ``microbatch(loss_and_grad, argnums=1, microbatch_size=32,
    accumulator=AccumulationType.MEAN)(params, batch)`` bounds the memory of a large
    batch. A Python loop (optax's ``fori_loop``), so it runs in eager mode and unrolls
    under ``torch.compile``.

    Arguments:
        fun: any function of tensors (trees of them).
        argnums: the positional arguments that have a batch axis.
        microbatch_size: rows per microbatch (dividing the batch size), or ``None`` to
            return ``fun`` itself.
        accumulator: how outputs combine: an :class:`AccumulationType`, an
            :class:`Accumulator`, or a tree of them that is a prefix of ``fun``'s output.
        argnames: the keyword arguments that have a batch axis.
        in_axes: the batch axis of each of ``argnums`` then ``argnames`` (one int: all).
        num_real_microbatches: stop after this many microbatches (a partial batch).

    Returns:
        A function with ``fun``'s arguments returning the combined output.

    Raises:
        ValueError: (the returned function) batch arguments of different sizes, a size
            that ``microbatch_size`` does not divide, an unknown accumulator, MEAN over
            non-floating outputs.
    """
    if microbatch_size is None:
        return fun
    where = "fm.optim.microbatch"
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    axes = (in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, int) else in_axes
    pos_axes, kw_axes = (
        dict(zip(argnums, axes, strict=False)),
        dict(zip(argnames, axes[len(argnums) :], strict=False)),
    )

    def microbatched(*args: Any, **kwargs: Any) -> Any:
        batch = [(args[i], ax) for i, ax in pos_axes.items()]
        batch += [(kwargs[k], ax) for k, ax in kw_axes.items()]
        n = _batch_size(where, batch, microbatch_size) // microbatch_size
        acc = _canonical(accumulator, n)

        def call(i: int) -> Any:
            def part(tree, ax):
                return pytree.tree_map(
                    lambda x: x[(slice(None),) * ax + (slice(i, None, n),)], tree
                )

            a = [part(x, pos_axes[j]) if j in pos_axes else x for j, x in enumerate(args)]
            kw = {k: part(v, kw_axes[k]) if k in kw_axes else v for k, v in kwargs.items()}
            return fun(*a, **kw)

        bound = n if num_real_microbatches is None else int(num_real_microbatches)
        first = call(0)
        carry = acc.init(first)
        for i in range(bound):
            carry = acc.update(carry, first if i == 0 else call(i), i)
        return acc.finalize(carry)

    return microbatched
