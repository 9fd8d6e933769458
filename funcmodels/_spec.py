"""The spec protocol: an immutable, hashable description of a layer.

A spec is a frozen dataclass deriving from :class:`Spec`. It holds configuration only
(sizes, flags, child specs); tensors live in :class:`~funcmodels.Params` and
:class:`~funcmodels.State`. A layer implements a few methods:

* ``children()`` -- named child specs, in parameter order (composites only);
* ``param_shapes()`` / ``init_params(key, dtype)`` -- its own trainable tensors;
* ``state_shapes()`` / ``init_state(dtype)`` -- its own buffers;
* ``forward(ctx, path, x)`` -- the computation on a *batched* input; ``ctx`` gives the
  layer's tensors by dotted path, the train flag, keys and the state to update;
* ``example_ndim`` -- the rank of one example, when the layer knows it, so that
  :func:`funcmodels.run` accepts unbatched inputs (the natural form under ``vmap``);
* ``out_shape(in_shape)`` / ``resolve(in_shape)`` -- shape inference on one example's
  shape (see :mod:`funcmodels._shapes`): the output shape, and the spec with the sizes
  named in ``inferred_fields`` (left ``None``) filled from the input.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from . import random as _random

_REGISTRY: dict[str, type[Spec]] = {}


def registered_types() -> dict[str, type[Spec]]:
    """The spec types known by name (for JSON metadata and configs)."""
    return dict(_REGISTRY)


# Names are fixed by the spec, so under torch.compile the hash is a trace-time constant
# (zlib itself is opaque to dynamo and would break the graph).
@torch.compiler.assume_constant_result
def name_hash(name: str) -> int:
    """Stable 32-bit hash of a child name (CRC32), used to fold names into keys."""
    return zlib.crc32(name.encode("utf-8"))


def layer_name(path: str) -> str:
    """Human-readable layer path for messages: ``'main_branch.0'`` or ``'<root>'``."""
    return path[:-1] if path else "<root>"


class Spec:
    """Base class of all layer specs. Subclasses are ``@dataclass(frozen=True)``."""

    #: rank of a single example (``None``: any rank, or decided by the layer itself)
    example_ndim: ClassVar[int | None] = None
    #: name under which the type is registered (defaults to the class name)
    type_name: ClassVar[str] = ""
    #: size fields that may be ``None`` and are then inferred from the input shape
    inferred_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name") or cls.__name__
        cls.type_name = name
        if not name.startswith("_"):
            _REGISTRY[name] = cls

    # -- tree structure ---------------------------------------------------------------
    def children(self) -> tuple[tuple[str, Spec], ...]:
        return ()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, key: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {}

    def state_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        """Own buffers: name -> (shape, dtype); dtype ``None`` follows the params' dtype."""
        return {}

    def init_state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {}

    # -- computation ------------------------------------------------------------------
    def forward(self, ctx: Context, path: str, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    # -- shapes -----------------------------------------------------------------------
    def out_shape(
        self, in_shape: tuple[Any, ...], path: str = "", record: dict | None = None
    ) -> tuple[Any, ...]:
        """Output shape of one example given the input shape of one example (no batch dim).

        Arguments:
            in_shape: sizes, ``None`` where unknown; a leading ``...`` stands for an
                unknown number of leading dims.
            path: the layer's path prefix, for error messages.
            record: composites add each descendant's output shape under its layer path.

        Returns:
            The output shape in the same notation. Raises ``ValueError`` naming the layer
            when the input does not fit the spec.
        """
        raise self._error(
            path,
            "defines no shape rule (out_shape), so shapes cannot be inferred through it; "
            "give every size explicitly and call fm.init without input_shape",
            TypeError,
        )

    def resolve(self, in_shape: tuple[Any, ...], path: str = "") -> Spec:
        """This spec with its omitted sizes filled from ``in_shape`` (one example's shape).

        Sizes that ``in_shape`` does not determine (``None`` entries) stay omitted.
        """
        return self

    def omitted(self) -> tuple[str, ...]:
        """The names in ``inferred_fields`` still ``None``; params need them filled."""
        return tuple(n for n in self.inferred_fields if getattr(self, n) is None)

    def to_config(self) -> list[dict[str, Any]] | dict[str, Any]:
        """This spec in the config format of :func:`funcmodels.from_config`.

        Returns:
            A list of layer entries for a :class:`~funcmodels.nn.Sequential`, one entry
            dict for any other layer; JSON- and YAML-able, and ``fm.from_config`` of it
            equals this spec. Parameters equal to their defaults are left out.
        """
        from ._config import to_config

        return to_config(self)

    # -- helpers ----------------------------------------------------------------------
    def _error(self, path: str, message: str, exc: type[Exception] = ValueError) -> Exception:
        return exc(f"layer '{layer_name(path)}' ({self.type_name}): {message}")

    def walk(self, path: str = "") -> Iterator[tuple[str, Spec]]:
        """Yield ``(prefix, spec)`` for this spec and every descendant, depth first."""
        yield path, self
        for name, child in self.children():
            yield from child.walk(f"{path}{name}.")

    def has_state(self) -> bool:
        return any(s.state_shapes() for _, s in self.walk())


def expected_entries(spec: Spec, which: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Dotted path -> (shape, dtype or None) of every param (``which='params'``) or buffer."""
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    for prefix, s in spec.walk():
        if which == "params":
            for n, shape in s.param_shapes().items():
                out[prefix + n] = (tuple(shape), None)
        else:
            for n, (shape, dtype) in s.state_shapes().items():
                out[prefix + n] = (tuple(shape), dtype)
    return out


def field_values(spec: Spec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


class Context:
    """What a layer's ``forward`` sees besides its input: tensors by path, mode, keys."""

    __slots__ = ("params", "state", "new_state", "aux", "train", "key", "_in_vmap")

    def __init__(self, params, state, train: bool, key: torch.Tensor | None):
        self.params = params
        self.state = state
        self.new_state: dict[str, torch.Tensor] = {}
        self.aux: dict[str, Any] = {}
        self.train = train
        self.key = key

    def key_for(self, path: str, spec: Spec) -> torch.Tensor:
        """The key of the layer at ``path``: the root key with each name folded in."""
        if self.key is None:
            raise spec._error(
                path,
                "needs a PRNG key in train mode; call "
                "fm.apply(params, x, key=fm.key(0), train=True) (or pass train=False)",
            )
        k = self.key
        for part in path.split(".")[:-1]:
            k = _random.fold_in(k, name_hash(part))
        return k

    def buffer(self, path: str, name: str, spec: Spec) -> torch.Tensor:
        if self.state is None:
            raise spec._error(
                path,
                "has state (buffers such as BatchNorm running statistics) but none was "
                "given; use params, state = fm.init_with_state(key, spec) and "
                "fm.apply(params, x, state=state) or fm.run(...)",
            )
        return self.state[path + name]
