"""Shape inference: the output shape of every layer, and sizes filled in from the input.

Shapes here are those of **one example**, without the batch dim: ``(1, 8, 8)`` for an
8x8 grey image, ``(20,)`` for a feature vector. A layer's ``forward`` sees a batch, so a
spec's ``out_shape(in_shape)`` answers "what does one example become". Entries may be
``None`` (a size not known yet, such as the spatial size of a config checked without an
input shape), and a shape may start with ``...`` (an unknown number of leading dims, as
after a ``Linear`` whose input rank is unknown). No tensor is allocated.

Specs take part through three methods of :class:`~funcmodels.Spec`: ``out_shape``,
``resolve`` (fill the sizes listed in ``inferred_fields`` from the input shape) and
``omitted`` (the inferable sizes still missing).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ._spec import Spec
from ._tree import Params, State

#: one example's shape: sizes (``None`` when unknown), optionally led by ``...``
Shape = tuple[Any, ...]


class MemberFirst(tuple):
    """A per-example shape whose leading axis is a ``Stack``'s members: in the tensor the
    batch dim comes second, ``(n, N, *M)``. A plain tuple to every layer; the summary
    shows the batch dim where it is."""

    __slots__ = ()


def show(shape: Shape) -> str:
    """``(64, ?, ?)`` or ``(..., 10)``: a shape for messages, unknown sizes as ``?``."""
    parts = ["..." if d is ... else "?" if d is None else str(d) for d in shape]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def rank_known(shape: Shape) -> bool:
    return not (shape and shape[0] is ...)


def check_input_shape(input_shape: object, where: str) -> tuple[int | None, ...]:
    """Validate a user's ``input_shape``: a sequence of positive ints (or ``None``)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(
            f"{where}: input_shape must be the shape of one example (no batch dim) as a "
            f"tuple of ints, such as (1, 28, 28), got {type(input_shape).__name__} "
            f"{input_shape!r}"
        )
    for d in input_shape:
        if d is None:
            continue
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(
                f"{where}: input_shape must hold ints (or None for an unknown size), "
                f"got {input_shape!r}"
            )
        if d < 1:
            raise ValueError(f"{where}: input_shape sizes must be positive, got {input_shape!r}")
    return tuple(input_shape)


def fit_rank(spec: Spec, path: str, shape: Shape, rank: int, dims: str) -> Shape:
    """``shape`` as exactly ``rank`` dims; unknown leading dims become ``None`` sizes.

    Raises ``ValueError`` naming the layer when ``shape`` cannot have that rank.
    """
    if not rank_known(shape):
        tail = shape[1:]
        if len(tail) <= rank:
            return (None,) * (rank - len(tail)) + tuple(tail)
    elif len(shape) == rank:
        return shape
    raise spec._error(path, f"expected one example of shape ({dims}), got {show(shape)}")


def check_size(spec: Spec, path: str, field: str, expected: int | None, got: Any, shape: Shape):
    """Raise unless a known input size ``got`` equals the spec's ``field`` (when set)."""
    if expected is not None and got is not None and got is not ... and got != expected:
        raise spec._error(
            path,
            f"expected {expected} channels ({field}={expected}), got input shape "
            f"{show(shape)} with {got}",
        )


def product(sizes: Sequence[Any]) -> int | None:
    """Product of sizes, ``None`` when any is unknown."""
    if any(d is None or d is ... for d in sizes):
        return None
    return math.prod(sizes)


def fill(spec: Spec, path: str, **sizes: int) -> Spec:
    """``spec`` with inferred sizes set; the spec's own checks run again on them."""
    try:
        return dataclasses.replace(spec, **sizes)
    except (TypeError, ValueError) as e:
        given = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise spec._error(path, f"{given} (inferred from the input) is not valid: {e}") from e


def child_shape(child: Spec, shape: Shape, path: str, record: dict[str, Shape] | None) -> Shape:
    """A child's output shape, noted in ``record`` under its layer path."""
    out = child.out_shape(shape, path, record)
    if record is not None:
        record[path[:-1]] = out
    return out


def has_shape_rule(spec: Spec) -> bool:
    return type(spec).out_shape is not Spec.out_shape


def resolve_spec(spec: Spec, input_shape: Shape) -> tuple[Spec, Shape]:
    """Fill every omitted size from ``input_shape`` and check the chain; no tensors made.

    Returns:
        ``(resolved spec, output shape of one example)``.
    """
    resolved = spec.resolve(input_shape, "")
    return resolved, resolved.out_shape(input_shape, "", None)


def require_complete(spec: Spec, where: str, input_shape: Shape | None) -> None:
    """Raise ``ValueError`` naming the first layer whose inferable sizes are still missing."""
    for path, s in spec.walk():
        missing = s.omitted()
        if not missing:
            continue
        names = ", ".join(missing)
        it = "it" if len(missing) == 1 else "them"
        if input_shape is None:
            hint = (
                f"pass input_shape=... to {where} (the shape of one example, without the "
                f"batch dim) to infer {it}, or give {it} in the spec"
            )
        else:
            hint = (
                f"could not be inferred from input_shape={show(input_shape)}, where the "
                f"size needed is unknown; give {it} in the spec"
            )
        raise s._error(path, f"{names} omitted (None); {hint}")


def prepare(spec: Spec, input_shape: object, where: str) -> Spec:
    """The spec ``init`` builds: resolved from ``input_shape`` when given, and complete."""
    shape = None
    if input_shape is not None:
        shape = check_input_shape(input_shape, where)
        spec = resolve_spec(spec, shape)[0]
    require_complete(spec, where, shape)
    return spec


def shapes(spec: Spec | Params | State, input_shape: Sequence[int | None]) -> dict[str, Shape]:
    """Output shape of every layer for one input example, without allocating parameters.

    Omitted sizes (``in_features``, ``in_channels``, ``num_features``, ...) are inferred
    from ``input_shape`` on the way, and every layer's input is checked against its spec.

    Arguments:
        spec: a spec, or Params/State (their spec is used).
        input_shape: the shape of **one example**, without the batch dim, e.g.
            ``(1, 8, 8)``; an entry may be ``None`` for a size not known.

    Returns:
        ``{layer path: output shape}`` in parameter order, the whole model first under
            ``''``, then every layer by its dotted path (``'0'``, ``'block.main_branch.0'``).
            Shapes are per example; a batch of ``N`` gives ``(N, *shape)``.
    """
    spec = _spec_of(spec, "fm.shapes")
    shape = check_input_shape(input_shape, "fm.shapes")
    resolved = spec.resolve(shape, "")
    record: dict[str, Shape] = {}
    out = resolved.out_shape(shape, "", record)
    record[""] = out
    paths = [prefix[:-1] for prefix, _ in resolved.walk()]
    return {p: record[p] for p in paths if p in record}


def _spec_of(obj: object, where: str) -> Spec:
    if isinstance(obj, (Params, State)):
        return obj.spec
    if not isinstance(obj, Spec):
        raise TypeError(f"{where}: expected a layer spec (or Params), got {type(obj).__name__}")
    return obj
