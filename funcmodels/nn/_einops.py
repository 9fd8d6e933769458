"""einops layers: :class:`Rearrange` and :class:`Reduce`, as in :mod:`einops.layers.torch`.

Both take an einops pattern (``"b c h w -> b (h w) c"``) and sizes for the axes the input
alone does not determine (``h=4``). Neither has parameters. The pattern is parsed and
checked by einops itself when the spec is made, and ``forward`` calls
:func:`einops.rearrange` / :func:`einops.reduce`, so the layers compute exactly what
einops computes (under ``vmap``, ``grad`` and ``torch.compile`` too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import einops
import torch
from einops.layers import RearrangeMixin, ReduceMixin
from einops.parsing import AnonymousAxis, ParsedExpression, _ellipsis

from .._context import Context, cached
from .._shapes import Shape, product, rank_known, show
from .._spec import Spec

#: the reductions that :class:`einops.layers.torch.Reduce` computes with torch
REDUCTIONS = ("min", "max", "sum", "mean", "prod")

#: how a parsed pattern marks its ellipsis (einops' own token)
ELLIPSIS = _ellipsis

# A parsed side of a pattern: one entry per dim, either ELLIPSIS (a bare ``...``) or a
# group of elementary axes, each a name (str), a known size (int, an anonymous axis such
# as the ``2`` in ``(c 2)``) or ELLIPSIS (``(...)`` on the right).
Group = tuple[Any, ...]


def _axes_pairs(layer: str, axes_lengths: object, axes: dict[str, object]) -> tuple:
    """Sorted ``(name, size)`` pairs from ``axes_lengths`` (pairs or a dict) and ``axes``."""
    if isinstance(axes_lengths, Mapping):
        items = list(axes_lengths.items())
    elif isinstance(axes_lengths, (list, tuple)):
        items = []
        for item in axes_lengths:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise TypeError(
                    f"{layer}: axes_lengths must be [name, size] pairs such as "
                    f"[['h', 4]], got the entry {item!r}"
                )
            items.append(tuple(item))
    else:
        raise TypeError(
            f"{layer}: axes_lengths must be [name, size] pairs or a dict of axis sizes, got "
            f"{type(axes_lengths).__name__} {axes_lengths!r}"
        )
    items += list(axes.items())
    seen: set[str] = set()
    for name, size in items:
        if not isinstance(name, str):
            raise TypeError(
                f"{layer}: axis names must be strings, got {type(name).__name__} {name!r}"
            )
        if name in seen:
            raise ValueError(f"{layer}: the size of axis {name!r} is given twice")
        seen.add(name)
        valid, reason = ParsedExpression.check_axis_name_return_reason(name)
        if not valid:
            raise ValueError(f"{layer}: {name!r} is not a valid axis name ({reason})")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(
                f"{layer}: the size of axis {name!r} must be an int, got "
                f"{type(size).__name__} {size!r}"
            )
        if size < 1:
            raise ValueError(f"{layer}: the size of axis {name!r} must be positive, got {size}")
    return tuple(sorted(items))


def _check_pattern(layer: str, pattern: object) -> str:
    if not isinstance(pattern, str):
        raise TypeError(
            f"{layer}: pattern must be a string such as 'b c h w -> b (h w) c', got "
            f"{type(pattern).__name__} {pattern!r}"
        )
    if pattern.count("->") != 1:
        raise ValueError(
            f"{layer}: pattern must have one '->' between the input and the output axes, "
            f"such as 'b c h w -> b (h w) c', got {pattern!r}"
        )
    return pattern


def _side(expression: str) -> tuple[Group | str, ...]:
    """One side of a pattern, by einops' parser, in the notation of ``Group``."""
    out: list[Group | str] = []
    for entry in ParsedExpression(expression).composition:
        if entry == ELLIPSIS:
            out.append(ELLIPSIS)
        else:
            out.append(tuple(a.value if isinstance(a, AnonymousAxis) else a for a in entry))
    return tuple(out)


def _text(group: Group | str) -> str:
    """A group as the pattern writes it: ``(h w)``, ``c``, ``...``, ``1``."""
    if group == ELLIPSIS:
        return "..."
    if not group:
        return "1"
    parts = ["..." if a == ELLIPSIS else str(a) for a in group]
    if len(parts) == 1:
        return parts[0]
    return f"({' '.join(parts)})"


class _Einops(Spec):
    """What Rearrange and Reduce share: parsing, the batch axis, shapes and the input check."""

    pattern: str
    axes_lengths: tuple[tuple[str, int], ...]

    def _setup(self, pattern: object, operation: str | None, axes_lengths, axes) -> None:
        layer = type(self).__name__
        pattern = _check_pattern(layer, pattern)
        pairs = _axes_pairs(layer, axes_lengths, axes)
        try:
            # einops' own layers parse and check the pattern, the axes and the reduction
            # for every input rank the pattern allows.
            if operation is None:
                RearrangeMixin(pattern, **dict(pairs))
            else:
                ReduceMixin(pattern, operation, **dict(pairs))
        except einops.EinopsError as e:
            reason = " ".join(str(e).split("\n")[1:]).strip() or str(e).strip()
            given = f" with {', '.join(f'{k}={v}' for k, v in pairs)}" if pairs else ""
            raise ValueError(f"{layer}: invalid pattern {pattern!r}{given}: {reason}") from None
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "axes_lengths", pairs)

    # -- the parsed pattern -------------------------------------------------------------
    def _parsed(self) -> tuple[tuple[Group | str, ...], tuple[Group | str, ...]]:
        def make():
            left, right = self.pattern.split("->")
            return _side(left), _side(right)

        return cached(self, "_fm_parsed", make)

    def _batch_problem(self) -> str | None:
        """Why the first input axis is not kept as the first output axis, or ``None``."""
        return cached(self, "_fm_batch_problem", lambda: (self._find_batch_problem(),))[0]

    def _find_batch_problem(self) -> str | None:
        left, right = self._parsed()
        first = left[0] if left else None
        if first == ELLIPSIS:
            if right and right[0] == ELLIPSIS:
                return None
            kept = any(g == ELLIPSIS or ELLIPSIS in g for g in right)
            return "moves or merges the leading '...'" if kept else "reduces the leading '...'"
        if first is None or len(first) != 1 or not isinstance(first[0], str):
            shown = "nothing" if first is None else _text(first)
            return f"starts with {shown}, not a single named batch axis"
        name = first[0]
        if right and right[0] == first:
            return None
        groups = [g for g in right if g != ELLIPSIS]
        holder = next((g for g in groups if name in g), None)
        if holder is None:
            return f"reduces the batch axis '{name}'"
        if len(holder) > 1:
            return f"merges the batch axis '{name}' into {_text(holder)}"
        return f"moves the batch axis '{name}' from the front"

    @property
    def example_ndim(self) -> int | None:  # type: ignore[override]
        left, right = self._parsed()
        if ELLIPSIS in left or self._batch_problem() is not None:
            return None
        return len(left) - 1

    # -- shapes -------------------------------------------------------------------------
    def _output(self, full: tuple[Any, ...], what: str, fail, per_example: bool) -> tuple[Any, ...]:
        """Output shape of an input of shape ``full`` (batch dim included, sizes or None).

        ``fail(message)`` makes the exception to raise; ``what`` names the input in it;
        ``per_example``: count dims in messages as one example's (``full`` has the batch
        dim added to it).
        """
        left, right = self._parsed()
        known: dict[Any, Any] = dict(self.axes_lengths)
        fixed = [g for g in left if g != ELLIPSIS]
        if ELLIPSIS not in left:
            least, exact = len(fixed), True
        elif left[0] == ELLIPSIS and per_example:
            least, exact = len(fixed) + 1, False  # the leading '...' holds the batch dim
        else:
            least, exact = len(fixed), False
        if len(full) < least or (exact and len(full) != least):
            n = least - 1 if per_example else least
            how = "" if exact else "at least "
            unit = "dim" if n == 1 else "dims"
            whose = " per example" if per_example else ""
            raise fail(
                f"the pattern's input '{self._left_text()}' needs {how}{n} {unit}{whose}, "
                f"got {what}"
            )
        n_ell = len(full) - len(fixed)
        ell_sizes: tuple[Any, ...] = ()
        dims = iter(full)
        for group in left:
            if group == ELLIPSIS:
                ell_sizes = tuple(next(dims) for _ in range(n_ell))
                continue
            size = next(dims)
            names = [a for a in group if isinstance(a, str) and a not in known]
            sizes = [known[a] if isinstance(a, str) else a for a in group if a not in names]
            part = math.prod(sizes)
            given = ", ".join(f"{a}={known[a]}" for a in group if isinstance(a, str) and a in known)
            note = f" ({given})" if given else ""
            if not names:
                if size is not None and size != part:
                    raise fail(
                        f"input axis '{_text(group)}'{note} must have size {part}, got {what}"
                    )
            elif size is None:
                known[names[0]] = None
            elif size % part:
                raise fail(
                    f"input axis '{_text(group)}'{note} needs a size divisible by {part}, "
                    f"got {what}"
                )
            else:
                known[names[0]] = size // part
        out: list[Any] = []
        for group in right:
            if group == ELLIPSIS:
                out.extend(ell_sizes)
            else:
                out.append(
                    product([product(ell_sizes) if a == ELLIPSIS else known[a] for a in group])
                )
        return tuple(out)

    def _left_text(self) -> str:
        return " ".join(_text(g) for g in self._parsed()[0])

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        problem = self._batch_problem()
        if problem is not None:
            raise self._error(
                path,
                f"the pattern {self.pattern!r} {problem}, so one example's output shape "
                "depends on the batch; for shape inference keep the first input axis first "
                "and alone in the output (as in 'b c h w -> b (h w) c')",
            )
        left, right = self._parsed()
        if rank_known(in_shape):
            full = (None, *in_shape)
        elif ELLIPSIS in left:
            if ELLIPSIS in right:
                return (...,)  # the output rank follows the unknown input rank
            # The '...' is reduced or merged into one dim: the output rank is known, and
            # so are the sizes of groups made of given sizes only.
            known = dict(self.axes_lengths)
            return tuple(
                product([known.get(a) if a != ELLIPSIS else None for a in g]) for g in right[1:]
            )
        else:
            tail = in_shape[1:]
            if len(tail) >= len(left):
                raise self._error(
                    path,
                    f"the pattern's input '{self._left_text()}' needs {len(left) - 1} dims "
                    f"per example, got one example of shape {show(in_shape)}",
                )
            full = (None,) * (len(left) - len(tail)) + tuple(tail)

        def fail(message: str) -> Exception:
            return self._error(path, message)

        return self._output(full, f"one example of shape {show(in_shape)}", fail, True)[1:]

    def _check_input(self, x: object) -> torch.Tensor:
        """Raise ``TypeError``/``ValueError`` unless the pattern fits the input."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        shape = tuple(x.shape)
        self._output(shape, f"an input of shape {shape}", ValueError, False)
        return x


@dataclass(frozen=True, init=False)
class Rearrange(_Einops):
    """Reorder, split and merge axes with an einops pattern, as
    :class:`einops.layers.torch.Rearrange`.

    ``Rearrange("b c h w -> b (h w) c")`` turns a batch of feature maps into a batch of
    token sequences; ``Rearrange("b (h w) c -> b h w c", h=4)`` splits an axis, the size
    of ``h`` given and that of ``w`` inferred.

    Arguments:
        pattern: an einops pattern ``"<input axes> -> <output axes>"``: names, groups in
            parentheses, ``1`` and ``...``. It is parsed and checked by einops when the
            spec is made.
        axes: the sizes of axes the input does not determine (``h=4``), positive ints.
            They are stored as ``axes_lengths``, ``(name, size)`` pairs sorted by name,
            which may also be given directly (``axes_lengths=[('h', 4)]``, as configs
            write them). No axis may be called ``pattern`` or ``axes_lengths``.
        axes_lengths: the same sizes as ``(name, size)`` pairs or a mapping, instead of
            (or with) ``**axes``.

    Returns (from ``forward``): ``einops.rearrange(x, pattern, **axes)``, the input's
    values moved to the output axes.

    Shapes: the input has the pattern's input axes, the output its output axes; dim 0 is
    the batch. A single example given to :func:`funcmodels.apply` is batched first when
    ``example_ndim`` is known: that is when the pattern has no ``...`` and its first input
    axis is a single named axis that is also, unchanged, its first output axis (the batch
    axis, as ``b`` in ``"b c h w -> b (h w) c"``); ``example_ndim`` is then the number of
    input axes less one. Otherwise it is ``None`` and inputs pass through as given. Shape
    inference (:func:`funcmodels.shapes`, ``fm.init(..., input_shape=...)``) works when
    the first input axis (or a leading ``...``) stays first and alone in the output;
    sizes that depend on unknown input sizes are ``None``.
    """

    pattern: str
    axes_lengths: tuple[tuple[str, int], ...] = ()

    def __init__(
        self,
        pattern: str,
        *,
        axes_lengths: tuple[tuple[str, int], ...] | Mapping[str, int] = (),
        **axes: int,
    ):
        self._setup(pattern, None, axes_lengths, axes)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Rearrange:
        return cls(fields["pattern"], axes_lengths=fields.get("axes_lengths", ()))

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        return einops.rearrange(x, self.pattern, **dict(self.axes_lengths))


@dataclass(frozen=True, init=False)
class Reduce(_Einops):
    """Reduce and rearrange axes with an einops pattern, as :class:`einops.layers.torch.Reduce`.

    ``Reduce("b c h w -> b c", "mean")`` is global average pooling;
    ``Reduce("b c (h 2) (w 2) -> b c h w", "max")`` is 2x2 max pooling. Axes of the input
    missing from the output are reduced.

    Arguments:
        pattern: an einops pattern ``"<input axes> -> <output axes>"``, checked by einops
            when the spec is made.
        reduction: ``'min'``, ``'max'``, ``'sum'``, ``'mean'`` or ``'prod'`` (the
            reductions of einops' torch layer).
        axes: the sizes of axes the input does not determine, positive ints; stored as
            ``axes_lengths`` (sorted ``(name, size)`` pairs), as for :class:`Rearrange`.
            No axis may be called ``pattern``, ``reduction`` or ``axes_lengths``.
        axes_lengths: the same sizes as ``(name, size)`` pairs or a mapping, instead of
            (or with) ``**axes``.

    Returns (from ``forward``): ``einops.reduce(x, pattern, reduction, **axes)``.

    Shapes: as for :class:`Rearrange`: the input has the pattern's input axes, the output
    its output axes, dim 0 is the batch; ``example_ndim`` is the number of input axes less
    one when the pattern has no ``...`` and keeps its first input axis, a single named
    axis, as its first output axis; otherwise ``None`` (inputs pass through as given, and
    a pattern that reduces the batch axis has no per-example shape).
    """

    pattern: str
    reduction: str
    axes_lengths: tuple[tuple[str, int], ...] = ()

    def __init__(
        self,
        pattern: str,
        reduction: str,
        *,
        axes_lengths: tuple[tuple[str, int], ...] | Mapping[str, int] = (),
        **axes: int,
    ):
        if not isinstance(reduction, str):
            raise TypeError(
                f"Reduce: reduction must be a string, one of {list(REDUCTIONS)}, got "
                f"{type(reduction).__name__} {reduction!r}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"Reduce: reduction must be one of {list(REDUCTIONS)} (those of einops' torch "
                f"layer), got {reduction!r}"
            )
        self._setup(pattern, reduction, axes_lengths, axes)
        object.__setattr__(self, "reduction", reduction)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Reduce:
        return cls(
            fields["pattern"], fields["reduction"], axes_lengths=fields.get("axes_lengths", ())
        )

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        return einops.reduce(x, self.pattern, self.reduction, **dict(self.axes_lengths))
