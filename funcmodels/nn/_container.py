"""Containers and reshaping layers (Sequential, Flatten, Unflatten)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._registry import layer_name_problem
from .._shapes import Shape, child_shape, product, rank_known, show
from .._spec import Context, Spec
from ._check import non_negative_int
from ._stack_chain import stacked_chain


def _rank_of(children) -> int | None:
    """Example rank of a chain: the first child that knows it, past rank-preserving ones."""
    for _, child in children:
        if child.example_ndim is not None:
            return child.example_ndim
        if not child.preserves_rank:
            return None
    return None


@dataclass(frozen=True, init=False)
class Sequential(Spec):
    """Apply child layers in order.

    ``Sequential(a, b, c)`` names the children ``'0'``, ``'1'``, ``'2'`` (torch's naming);
    ``Sequential({'stem': a, 'head': b})`` names them explicitly. Parameter paths are
    ``'<child>.<param>'``, so ``params['0']['weight']`` and the state_dict key
    ``'0.weight'`` agree with :class:`torch.nn.Sequential`.

    Arguments:
        *layers: the child specs in order, or one mapping from names to specs.

    Shapes: the input of the first child; the output of the last.

    Example:
        ```python
        spec = fm.nn.Sequential({"hidden": fm.nn.Linear(3, 8), "act": fm.nn.Tanh()})
        params = fm.init(fm.key(0), spec)
        assert params["hidden.weight"].shape == (8, 3)
        assert fm.apply(params, torch.ones(2, 3)).shape == (2, 8)
        ```
    """

    layers_field: ClassVar[str | None] = "layers"

    layers: tuple[tuple[str, Spec], ...]

    def __init__(self, *layers: Spec | Mapping[str, Spec]):
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = tuple(layers[0].items())
        else:
            items = tuple((str(i), layer) for i, layer in enumerate(layers))
        for name, layer in items:
            problem = layer_name_problem(name)
            if problem is not None:
                raise (ValueError if isinstance(name, str) else TypeError)(f"Sequential: {problem}")
            if not isinstance(layer, Spec):
                raise TypeError(
                    f"Sequential: child {name!r} must be a layer spec, got {type(layer).__name__}"
                )
        # Names are unique by construction: a dict's keys, or the positions.
        object.__setattr__(self, "layers", items)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Sequential:
        layers = list(fields["layers"])
        names = [name for name, _ in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Sequential: duplicate child names {dup}")
        return cls(dict(layers))

    @property
    def example_ndim(self) -> int | None:  # type: ignore[override]
        return _rank_of(self.layers)

    def children(self):
        return self.layers

    def __getitem__(self, name: str | int) -> Spec:
        return dict(self.layers)[str(name)]

    def __len__(self) -> int:
        return len(self.layers)

    def resolve(self, in_shape: Shape, path: str = "") -> Sequential:
        items, changed, shape = [], False, in_shape
        for name, layer in self.layers:
            child_path = f"{path}{name}."
            resolved = layer.resolve(shape, child_path)
            changed = changed or resolved is not layer
            shape = resolved.out_shape(shape, child_path)
            items.append((name, resolved))
        return Sequential(dict(items)) if changed else self

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        shape = in_shape
        for name, layer in self.layers:
            shape = child_shape(layer, shape, f"{path}{name}.", record)
        return shape

    def forward(self, ctx: Context, x: Any) -> Any:
        for name, _ in self.layers:
            x = ctx.apply(name, x)
        return x

    def _stacks_directly(self) -> bool:
        return type(self).forward is Sequential.forward and all(
            layer._stacks_directly() for _, layer in self.layers
        )

    def stacked(self, ctx: Context, params, x, in_axis):
        if not self._stacks_directly():  # decided before any product is computed
            return NotImplemented
        return stacked_chain(ctx, self.layers, params, x, in_axis)


@dataclass(frozen=True)
class Flatten(Spec):
    """Flatten dims ``start_dim..end_dim`` of a batch, as :class:`torch.nn.Flatten`.

    The batch dim is dim 0 (a single example given to :func:`funcmodels.apply` is batched
    first when the model's first layer knows its example rank, e.g. a conv).

    Arguments:
        start_dim: the first dim to flatten (of the batch, so ``1`` keeps the batch dim).
        end_dim: the last dim to flatten; negative counts from the end.

    Shapes: input ``(N, *dims)``; output with dims ``start_dim..end_dim`` merged into one,
    ``(N, prod(dims))`` with the defaults.
    """

    start_dim: int = 1
    end_dim: int = -1

    def __post_init__(self):
        for field in ("start_dim", "end_dim"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Flatten: {field} must be an int, got {v!r}")
        non_negative_int("Flatten", "start_dim", self.start_dim)

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if self.start_dim == 0:
            raise self._error(
                path,
                "start_dim=0 merges the batch dim into the features, so one example's output "
                "shape depends on the batch size; use start_dim >= 1 for shape inference",
            )
        if not rank_known(in_shape):
            # The leading dims are unknown, so only a flatten to the end has a known rank.
            return (None,) * self.start_dim if self.end_dim == -1 else (...,)
        rank = len(in_shape) + 1
        end = self.end_dim if self.end_dim >= 0 else rank + self.end_dim
        if not (self.start_dim < rank and 0 <= end < rank and self.start_dim <= end):
            raise self._error(
                path,
                f"start_dim={self.start_dim}, end_dim={self.end_dim} do not fit a batch of "
                f"examples of shape {show(in_shape)} (batch rank {rank})",
            )
        lo, hi = self.start_dim - 1, end
        return (*in_shape[:lo], product(in_shape[lo:hi]), *in_shape[hi:])

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        rank = max(x.dim(), 1)
        end = self.end_dim if self.end_dim >= 0 else rank + self.end_dim
        if not (self.start_dim < rank and 0 <= end < rank and self.start_dim <= end):
            raise ValueError(
                f"start_dim={self.start_dim}, end_dim={self.end_dim} are out of range for an "
                f"input of shape {tuple(x.shape)}"
            )
        return torch.flatten(x, self.start_dim, self.end_dim)


@dataclass(frozen=True)
class Unflatten(Spec):
    """Split dim ``dim`` of a batch into ``unflattened_size``, as :class:`torch.nn.Unflatten`.

    Arguments:
        dim: the dim to split, counted on the batch as torch does (dim 0 is the batch
            dim, negative dims count from the end). torch's named-tensor form (a ``str``
            dim with named sizes) is not supported.
        unflattened_size: the sizes it becomes, positive ints (stored as a tuple), one of
            which may be ``-1`` to be inferred; their product must equal the dim's size.

    Shapes: a batch ``(N, *)`` with ``*`` of any rank: dim ``dim`` is replaced by
    ``unflattened_size``. Shape inference needs ``dim != 0`` (the batch dim itself).
    """

    dim: int
    unflattened_size: tuple[int, ...]

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(
                f"Unflatten: dim must be an int (named-tensor dims are not supported), got "
                f"{type(self.dim).__name__} {self.dim!r}"
            )
        sizes = self.unflattened_size
        if not isinstance(sizes, (list, tuple, torch.Size)):
            raise TypeError(
                f"Unflatten: unflattened_size must be a tuple or list of ints, got "
                f"{type(sizes).__name__} {sizes!r}"
            )
        sizes = tuple(sizes)
        if not sizes:
            raise ValueError("Unflatten: unflattened_size must not be empty")
        for v in sizes:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Unflatten: unflattened_size must hold ints, got {sizes!r}")
            if v < 1 and v != -1:
                raise ValueError(
                    f"Unflatten: unflattened_size must hold positive ints (or one -1), got "
                    f"{sizes!r}"
                )
        if sizes.count(-1) > 1:
            raise ValueError(f"Unflatten: at most one size may be -1, got {sizes!r}")
        object.__setattr__(self, "unflattened_size", sizes)
        # Derived once (forward checks the input against it; no generator there either,
        # which torch.compile could not trace)
        object.__setattr__(self, "_known", math.prod(v for v in sizes if v != -1))

    def _split(self, size: int | None) -> tuple[int | None, ...] | None:
        """The sizes ``size`` splits into; ``None`` when it cannot."""
        sizes, known = self.unflattened_size, self._known
        if size is None:
            return tuple(None if v == -1 else v for v in sizes)
        if -1 in sizes:
            if size % known:
                return None
            return tuple(size // known if v == -1 else v for v in sizes)
        return sizes if known == size else None

    def _problem(self, size: int) -> str:
        return (
            f"cannot split dim {self.dim} of size {size} into {self.unflattened_size} "
            f"(the product of the sizes must equal it)"
        )

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Shape:
        if not rank_known(in_shape):
            if self.dim >= 0 or -self.dim >= len(in_shape):
                # counted from the front, or reaching into the unknown dims
                return (...,)
            i = len(in_shape) + self.dim
        else:
            rank = len(in_shape) + 1
            if not -rank <= self.dim < rank:
                raise self._error(
                    path,
                    f"dim={self.dim} is out of range for a batch of examples of shape "
                    f"{show(in_shape)} (batch rank {rank})",
                )
            d = self.dim % rank
            if d == 0:
                raise self._error(
                    path,
                    "dim 0 is the batch dim, so one example's output shape depends on the "
                    "batch size; use dim >= 1 (or a negative dim) for shape inference",
                )
            i = d - 1
        size = in_shape[i]
        split = self._split(size)
        if split is None:
            raise self._error(path, self._problem(size))
        return (*in_shape[:i], *split, *in_shape[i + 1 :])

    def forward(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if not -x.dim() <= self.dim < x.dim():
            raise ValueError(
                f"dim={self.dim} is out of range for an input of shape {tuple(x.shape)}"
            )
        size = x.shape[self.dim]
        if self._split(size) is None:
            raise ValueError(f"{self._problem(size)}; got input shape {tuple(x.shape)}")
        return x.unflatten(self.dim, self.unflattened_size)
