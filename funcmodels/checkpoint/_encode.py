"""A tree as a JSON description whose tensor leaves name entries of a safetensors file.

The description (``{"specs": [...], "tree": node}``) has one node per tree node:

=====================================  ===============================================
``null``, ``true``/``false``, ``"s"``   None, a bool, a string
``{"int": "123"}``                      an int, in decimal (any size)
``{"float": "0.1"}``                    a float: ``repr`` (exact), ``"inf"``, ``"-inf"``,
                                        ``"nan"`` or ``"nan:0x7ff8..."`` (other NaN bits)
``{"tensor": "name"}``                  a tensor, stored under ``name``; optional
                                        ``"requires_grad": true``, and ``"complex": true``
                                        for a complex dtype stored as its real view
``{"list": [...]}``, ``{"tuple": [...]}``  a list, a tuple
``{"dict": {...}}``                     a dict (str keys); ``"ordered_dict"`` likewise
``{"namedtuple": "name", "fields":      an instance of a registered named tuple
{...}}``
``{"params": i, "entries": {...}}``     :class:`~funcmodels.Params` of ``specs[i]`` (the
                                        spec's config), entries by dotted name;
                                        ``"state"`` likewise
``{"hole": true}``                      ``fm.tree.HOLE``
=====================================  ===============================================
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from typing import Any

import torch

from .. import _safetensors
from .._encode import MAX_DEPTH as MAX_SPEC_DEPTH
from .._spec import Spec, depth
from .._tree import HOLE, Params, State
from . import _registry

FORMAT = "funcmodels.checkpoint"
VERSION = "1"
#: trees nested deeper than this are refused (saving and loading)
MAX_DEPTH = 100
_NAN_BITS = 0x7FF8000000000000
_COMPLEX_AS_REAL = (torch.complex128, torch.complex32)
HELD = (
    "tensors, Params, State, registered named tuples, dicts with str keys, lists, tuples, "
    "int, float, bool, str and None"
)


def float_text(x: float) -> str:
    """``x`` as text that reads back to the same bits."""
    if math.isnan(x):
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        return "nan" if bits == _NAN_BITS else f"nan:{bits:#018x}"
    return repr(x)


def child(path: str, key: object) -> str:
    """The dotted path of ``key`` inside ``path`` (as ``fm.tree`` names paths)."""
    return f"{path}.{key}" if path else str(key)


def shown(path: str) -> str:
    return f"'{path}'" if path else "the root"


class Encoder:
    """Walks a tree once, building its description; tensors collect in ``tensors``.

    :meth:`tensor` and :meth:`other` decide how leaves are kept; the distributed path
    overrides them to hand tensors and torch objects to ``torch.distributed.checkpoint``.
    """

    def __init__(self, where: str):
        self.where = where
        self.specs: list[Any] = []
        self._spec_index: dict[Spec, int] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, tree: Any) -> dict[str, Any]:
        """The description of ``tree``: ``{"specs": [...], "tree": node}``."""
        node = self.node(tree, "", 0)
        return {"specs": self.specs, "tree": node}

    def name(self, path: str) -> str:
        """A tensor name for ``path``, unique in this file."""
        base = path or "<root>"
        name, n = base, 1
        while name in self.tensors:
            n += 1
            name = f"{base}~{n}"
        return name

    def tensor(self, t: torch.Tensor, path: str) -> dict[str, Any]:
        name = self.name(path)
        node: dict[str, Any] = {"tensor": name}
        if t.dtype in _COMPLEX_AS_REAL and not t.is_meta:
            t = torch.view_as_real(t.detach().resolve_conj())
            node["complex"] = True
        self.tensors[name] = _safetensors.check_tensor(t, self.where, path or "<root>")
        if t.requires_grad:
            node["requires_grad"] = True
        return node

    def other(self, obj: Any, path: str) -> Any:
        hint = ""
        if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
            hint = (
                "; a torch module and its optimiser go into a Manager checkpoint of a "
                "torch.distributed job as fm.checkpoint.ModuleState(model, optimizer), or "
                "convert them with transforms.from_module"
            )
        raise TypeError(
            f"{self.where}: {shown(path)} is a {type(obj).__name__}; checkpoints hold {HELD}{hint}"
        )

    def node(self, obj: Any, path: str, level: int) -> Any:
        if level > MAX_DEPTH:
            raise ValueError(
                f"{self.where}: the tree is nested more than {MAX_DEPTH} levels deep at "
                f"{shown(path)}"
            )
        kind = type(obj)
        if obj is None or kind in (bool, str):
            return obj
        if kind is int:
            return {"int": self._int(obj, path)}
        if kind is float:
            return {"float": float_text(obj)}
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if obj is HOLE:
            return {"hole": True}
        if kind in (Params, State):
            return self._tree(obj, path, level)
        if kind in (dict, OrderedDict):
            return self._dict(obj, path, level)
        if kind in (list, tuple):
            items = [self.node(v, child(path, i), level + 1) for i, v in enumerate(obj)]
            return {kind.__name__: items}
        if isinstance(obj, tuple) and hasattr(kind, "_fields"):
            return self._named_tuple(obj, path, level)
        return self.other(obj, path)

    def _int(self, value: int, path: str) -> str:
        try:
            return str(value)
        except ValueError as e:  # more digits than Python converts (sys.set_int_max_str_digits)
            raise ValueError(f"{self.where}: the int at {shown(path)} is too large ({e})") from None

    def _dict(self, obj: dict, path: str, level: int) -> dict[str, Any]:
        bad = next((k for k in obj if type(k) is not str), None)
        if bad is not None:
            raise TypeError(
                f"{self.where}: the dict at {shown(path)} has the key {bad!r} "
                f"({type(bad).__name__}); checkpoint dicts take str keys only (JSON's rule), "
                "so convert keys with str() or keep such entries in a list of pairs"
            )
        items = {k: self.node(v, child(path, k), level + 1) for k, v in obj.items()}
        return {"dict" if type(obj) is dict else "ordered_dict": items}

    def _named_tuple(self, obj: tuple, path: str, level: int) -> dict[str, Any]:
        name = _registry.name_of(type(obj))
        if name is None:
            raise TypeError(
                f"{self.where}: {shown(path)} is a {type(obj).__qualname__}, a named tuple "
                f"type that is not registered; register it first: "
                f"fm.checkpoint.register({type(obj).__qualname__})"
            )
        fields = {
            f: self.node(getattr(obj, f), child(path, f), level + 1) for f in type(obj)._fields
        }
        return {"namedtuple": name, "fields": fields}

    def _tree(self, obj: Params | State, path: str, level: int) -> dict[str, Any]:
        spec = obj.spec
        index = self._spec_index.get(spec)
        if index is None:
            if depth(spec) > MAX_SPEC_DEPTH:
                raise ValueError(
                    f"{self.where}: the spec at {shown(path)} is nested {depth(spec)} levels "
                    f"deep; files hold at most {MAX_SPEC_DEPTH}"
                )
            index = self._spec_index[spec] = len(self.specs)
            self.specs.append(spec.to_config(defaults=True))
        entries = {k: self.node(v, child(path, k), level + 1) for k, v in obj.flat().items()}
        return {type(obj).__name__.lower(): index, "entries": entries}
