"""Containers and reshaping layers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._registry import layer_name_problem
from .._shapes import Shape, child_shape, product, rank_known, show
from .._spec import Context, Spec
from ._check import non_negative_int


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


@dataclass(frozen=True)
class Flatten(Spec):
    """Flatten dims ``start_dim..end_dim`` of a batch, as :class:`torch.nn.Flatten`.

    The batch dim is dim 0 (a single example given to :func:`funcmodels.apply` is batched
    first when the model's first layer knows its example rank, e.g. a conv).
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
