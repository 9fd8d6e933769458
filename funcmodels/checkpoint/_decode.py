"""A tree back from its JSON description (see :mod:`._encode` for the nodes).

Every node is checked: an unknown kind, a malformed value, a type name that is not
registered, a spec that does not rebuild or entries that do not fit it give a
``ValueError`` naming the file and the path. Nothing named in a file is imported.
"""

from __future__ import annotations

import math
import re
import struct
from collections import OrderedDict
from typing import Any

import torch

from .. import nn
from .._encode import decode as decode_spec
from .._spec import Spec, expected_entries
from .._tree import HOLE, Params, State
from . import _registry
from ._encode import MAX_DEPTH, child, float_text, shown

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_NAN = re.compile(r"nan:0x[0-9a-f]{16}")
#: kind -> the other keys its node may hold
_KEYS: dict[str, frozenset[str]] = {
    "int": frozenset(),
    "float": frozenset(),
    "tensor": frozenset({"requires_grad", "complex"}),
    "list": frozenset(),
    "tuple": frozenset(),
    "dict": frozenset(),
    "ordered_dict": frozenset(),
    "namedtuple": frozenset({"fields"}),
    "params": frozenset({"entries"}),
    "state": frozenset({"entries"}),
    "hole": frozenset(),
}


def parse_float(text: object) -> float | None:
    """The float ``text`` stands for (as :func:`float_text` writes it), or ``None``."""
    if not isinstance(text, str):
        return None
    if text == "nan":
        return math.nan
    if _NAN.fullmatch(text):
        value = struct.unpack("<d", struct.pack("<Q", int(text[4:], 16)))[0]
        return value if math.isnan(value) else None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if float_text(value) == text else None


class Decoder:
    """Rebuilds a tree from its description; ``tensors`` are the stored tensors by name.

    :meth:`tensor` is where a tensor node becomes a tensor; the distributed path
    overrides it.
    """

    def __init__(self, where: str, specs: Any, tensors: dict[str, torch.Tensor]):
        self.where = where
        self.tensors = tensors
        self.used: set[str] = set()
        if not isinstance(specs, list):
            raise self.error("", f"'specs' must be a list, got {type(specs).__name__}")
        self.specs: list[Spec] = []
        for i, doc in enumerate(specs):
            try:
                self.specs.append(decode_spec(doc, f"{where} specs[{i}]", nn.Sequential))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: cannot rebuild the stored spec {i}: {e}") from None

    def error(self, path: str, message: str) -> ValueError:
        return ValueError(f"{self.where}: the tree description at {shown(path)}: {message}")

    def unused(self) -> list[str]:
        """Stored tensors that no node named."""
        return [n for n in self.tensors if n not in self.used]

    def node(self, node: Any, path: str, level: int) -> Any:
        if level > MAX_DEPTH:
            raise self.error(path, f"nested more than {MAX_DEPTH} levels deep")
        if node is None or type(node) in (bool, str):
            return node
        if not isinstance(node, dict):
            raise self.error(path, f"expected an object, got {type(node).__name__}")
        kinds = [k for k in node if k in _KEYS]
        if len(kinds) != 1 or set(node) - _KEYS[kinds[0]] - {kinds[0]}:
            raise self.error(path, f"not a node: keys {sorted(node)[:10]}")
        kind = kinds[0]
        value = node[kind]
        if kind == "int":
            if not isinstance(value, str) or not _INT.fullmatch(value):
                raise self.error(path, f"bad int {value!r:.60}")
            try:
                return int(value)
            except ValueError as e:
                raise self.error(path, f"int too large to read ({e})") from None
        if kind == "float":
            number = parse_float(value)
            if number is None:
                raise self.error(path, f"bad float {value!r:.60}")
            return number
        if kind == "tensor":
            return self.tensor(node, path)
        if kind == "hole":
            if value is not True:
                raise self.error(path, f"bad hole {value!r:.60}")
            return HOLE
        return self._container(kind, node, path, level)

    def _container(self, kind: str, node: dict[str, Any], path: str, level: int) -> Any:
        value = node[kind]
        if kind in ("list", "tuple"):
            if not isinstance(value, list):
                raise self.error(path, f"a {kind} holds a JSON list, got {type(value).__name__}")
            items = [self.node(v, child(path, i), level + 1) for i, v in enumerate(value)]
            return items if kind == "list" else tuple(items)
        if kind in ("dict", "ordered_dict"):
            items = self._items(value, path, level, kind)
            return items if kind == "dict" else OrderedDict(items)
        if kind == "namedtuple":
            return self._named_tuple(
                value, node["fields"] if "fields" in node else None, path, level
            )
        return self._tree(kind, value, node.get("entries"), path, level)

    def _items(self, value: Any, path: str, level: int, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"a {what} holds a JSON object, got {type(value).__name__}")
        return {k: self.node(v, child(path, k), level + 1) for k, v in value.items()}

    def _named_tuple(self, name: Any, fields: Any, path: str, level: int) -> tuple:
        cls = _registry.resolve(name) if isinstance(name, str) else None
        if cls is None:
            raise self.error(
                path,
                f"the type {name!r:.100} is not registered; a checkpoint loads only named "
                "tuple types registered with fm.checkpoint.register (nothing named in a file "
                "is imported)",
            )
        values = self._items(fields, path, level, "namedtuple's fields")
        if set(values) != set(cls._fields):
            raise self.error(
                path,
                f"{name} has the fields {list(cls._fields)}, the file gives {list(values)}",
            )
        return cls(**values)

    def _tree(self, kind: str, index: Any, entries: Any, path: str, level: int) -> Params | State:
        if type(index) is not int or not 0 <= index < len(self.specs):
            raise self.error(path, f"bad spec index {index!r:.60} ({len(self.specs)} specs)")
        spec = self.specs[index]
        values = self._items(entries, path, level, f"{kind}'s entries")
        want = list(expected_entries(spec, kind))
        if set(values) != set(want):
            missing = [k for k in want if k not in values]
            extra = [k for k in values if k not in want]
            raise self.error(
                path,
                f"{kind} of {spec.type_name} must hold its spec's entries: missing {missing}, "
                f"unexpected {extra}",
            )
        cls = Params if kind == "params" else State
        return cls._make(spec, {k: values[k] for k in want})

    def tensor(self, node: dict[str, Any], path: str) -> torch.Tensor:
        name = node["tensor"]
        if not isinstance(name, str) or name not in self.tensors:
            raise self.error(path, f"no stored tensor named {name!r:.100}")
        if name in self.used:
            raise self.error(path, f"the tensor {name!r} is named twice")
        self.used.add(name)
        return finish(self.tensors[name], node, lambda m: self.error(path, m))


def finish(t: torch.Tensor, node: dict[str, Any], error) -> torch.Tensor:
    """Apply a tensor node's flags (``complex``, ``requires_grad``) to the stored tensor."""
    if node.get("complex", False) is not False:
        if node["complex"] is not True or t.dtype not in (torch.float64, torch.float16):
            raise error(f"bad complex flag for a {t.dtype} tensor")
        if t.dim() == 0 or t.shape[-1] != 2:
            raise error(f"a complex tensor is stored as (..., 2), got {tuple(t.shape)}")
        t = torch.view_as_complex(t)
    if node.get("requires_grad", False) is not False:
        if node["requires_grad"] is not True or not (t.is_floating_point() or t.is_complex()):
            raise error(f"bad requires_grad flag for a {t.dtype} tensor")
        t.requires_grad_(True)
    return t
