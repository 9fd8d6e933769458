"""``like=``: the first place where a loaded tree differs in structure from an expected one.

Structure is what a training loop relies on: container types, dict keys, lengths, named
tuple types, Params/State specs and entries, the type of each leaf, and each tensor's dtype
and shape. Values are not compared.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from .._core import describe_mismatch
from .._tree import Params, State
from ._encode import child


def _kind(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, (Params, State)):
        return f"{type(x).__name__} of {x.spec.type_name}"
    if x is None:
        return "None"
    return f"a {type(x).__name__}"


def _keys(got: Any, want: Any, path: str) -> tuple[str, str] | None:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        return path, f"keys missing from the file {missing}, keys only in the file {extra}"
    return None


def difference(got: Any, want: Any, path: str = "") -> tuple[str, str] | None:
    """``(path, what differs)`` at the first difference, or ``None`` when the structures
    match (dict keys are matched by name; their order is not compared)."""
    if type(got) is not type(want):
        return path, f"the file has {_kind(got)}, like= has {_kind(want)}"
    if isinstance(got, torch.Tensor):
        if got.dtype != want.dtype or got.shape != want.shape:
            return path, f"the file has {_kind(got)}, like= has {_kind(want)}"
        return None
    if isinstance(got, (Params, State)):
        if got.spec != want.spec:
            return path, "the specs differ: " + describe_mismatch(want.spec, got.spec)
        got, want = got.flat(), want.flat()
    if isinstance(got, (dict, OrderedDict)):
        found = _keys(got, want, path)
        pairs = [(child(path, k), got[k], want[k]) for k in want] if found is None else []
    elif isinstance(got, (list, tuple)):
        if len(got) != len(want):
            return path, f"the file has {len(got)} items, like= has {len(want)}"
        names = type(got)._fields if hasattr(type(got), "_fields") else range(len(got))
        pairs = [(child(path, n), g, w) for n, g, w in zip(names, got, want, strict=True)]
        found = None
    else:
        return None
    for p, g, w in pairs:
        found = difference(g, w, p)
        if found is not None:
            return found
    return found
