"""A model's table: every layer's path, type, output shape and parameter count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._shapes import MemberFirst, Shape, check_input_shape, require_complete, show
from ._spec import Spec, layer_name
from ._tree import Params


@dataclass(frozen=True)
class Row:
    """One layer of a :class:`Summary`."""

    path: str
    """dotted layer path, ``''`` for the whole model"""
    type: str
    """the spec's type name"""
    out_shape: Shape | None
    """output shape of one example (``None`` without an input shape)"""
    params: int
    """trainable values in this layer and its children"""
    state: int
    """buffer values (running statistics, ...) in this layer and its children"""


@dataclass(frozen=True)
class Summary:
    """What :func:`summary` returns; ``str()`` (and ``repr()``) is the table."""

    rows: tuple[Row, ...]
    input_shape: Shape | None
    trainable: int
    """number of trainable values"""
    state: int
    """number of buffer values"""
    param_bytes: int
    state_bytes: int

    @property
    def bytes(self) -> int:
        """Memory of params and state together."""
        return self.param_bytes + self.state_bytes

    def __str__(self) -> str:
        def shape_text(shape: Shape | None) -> str:
            if shape is None:
                return ""
            if isinstance(shape, MemberFirst):  # a Stack's output: (n, N, *M)
                return show((shape[0], "N", *shape[1:]))
            return show(("N", *shape))

        table = [("layer", "type", "output shape", "params")]
        if self.input_shape is not None:
            table.append(("<input>", "", shape_text(self.input_shape), ""))
        for r in self.rows:
            indent = "  " * (r.path.count(".") + 1) if r.path else ""
            table.append(
                (
                    indent + layer_name(f"{r.path}." if r.path else ""),
                    r.type,
                    shape_text(r.out_shape),
                    f"{r.params:,}",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines = [
            "  ".join(
                (cell.rjust(w) if i == 3 else cell.ljust(w))
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in table
        ]
        rule = "-" * len(max(lines, key=len))
        return "\n".join(
            [
                lines[0],
                rule,
                *lines[1:],
                rule.replace("-", "="),
                f"trainable parameters: {self.trainable:,} ({_size(self.param_bytes)})",
                f"state (buffers):      {self.state:,} ({_size(self.state_bytes)})",
                f"total:                {_size(self.bytes)}",
                "shapes are per example; N is the batch size",
            ]
        )

    __repr__ = __str__


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def summary(
    spec_or_params: Spec | Params,
    input_shape: Sequence[int | None] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Summary:
    """Tabulate a model: per layer its path, type, output shape and parameter count.

    Nothing is allocated: counts come from the spec's parameter and buffer shapes.

    Arguments:
        spec_or_params: a spec, or Params (then byte counts use their tensors' dtypes).
        input_shape: the shape of **one example**, without the batch dim; it gives the
            output shapes and fills sizes the spec omits. Without it the shape column is
            empty, and the spec must give every size.
        dtype: the parameters' dtype for the byte counts of a spec.

    Returns:
        A :class:`Summary`: ``print(fm.summary(spec, (1, 8, 8)))`` shows the table with
            totals (trainable parameters, state values, bytes); its ``rows`` hold the numbers.

    Raises:
        TypeError: ``spec_or_params`` is neither a spec nor Params.
        ValueError: ``input_shape`` does not fit the spec, or the spec leaves a size out
            and no ``input_shape`` is given.
    """
    if isinstance(spec_or_params, Params):
        spec = spec_or_params.spec
        leaves = list(spec_or_params.flat().values())
        dtype = leaves[0].dtype if leaves else dtype
        param_bytes = sum(t.numel() * t.element_size() for t in leaves)
    elif isinstance(spec_or_params, Spec):
        spec, param_bytes = spec_or_params, None
    else:
        raise TypeError(
            f"fm.summary: expected a layer spec or Params, got {type(spec_or_params).__name__}"
        )
    shape = None
    record: dict[str, Shape] = {}
    if input_shape is not None:
        shape = check_input_shape(input_shape, "fm.summary")
        spec = spec.resolve(shape, "")
        record[""] = spec.out_shape(shape, "", record)
    require_complete(spec, "fm.summary", shape)

    own: dict[str, tuple[int, int, int, int]] = {}
    for prefix, s in spec.walk():
        p_shapes = s.param_shapes().values()
        s_shapes = s.state_shapes().values()
        own[prefix[:-1]] = (
            sum(math.prod(sh) for sh in p_shapes),
            sum(math.prod(sh) for sh, _ in s_shapes),
            sum(math.prod(sh) * dtype.itemsize for sh in p_shapes),
            sum(math.prod(sh) * (dt or dtype).itemsize for sh, dt in s_shapes),
        )
    rows = []
    for path, s in ((prefix[:-1], s) for prefix, s in spec.walk()):
        inside = [v for k, v in own.items() if k == path or k.startswith(path + ".") or not path]
        rows.append(
            Row(
                path,
                s.type_name,
                record.get(path),
                sum(v[0] for v in inside),
                sum(v[1] for v in inside),
            )
        )
    totals = [sum(v[i] for v in own.values()) for i in range(4)]
    return Summary(
        rows=tuple(rows),
        input_shape=shape,
        trainable=totals[0],
        state=totals[1],
        param_bytes=totals[2] if param_bytes is None else param_bytes,
        state_bytes=totals[3],
    )
