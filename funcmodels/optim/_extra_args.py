"""Extra keyword arguments of ``update``: which a function takes, and how the wrappers
hand them on (optax's rules)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.utils._pytree as pytree


def extract_fns_kwargs(
    fns: tuple[Callable[..., Any], ...], kwargs: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Split ``kwargs`` by the argument names of each function of ``fns`` (optax's
    ``_extract_fns_kwargs``): ``([kwargs fns[0] takes, ...], the kwargs none takes)``."""
    names = [list(inspect.signature(fn).parameters) for fn in fns]
    per_fn = [{k: v for k, v in kwargs.items() if k in fn_names} for fn_names in names]
    every = {n for fn_names in names for n in fn_names}
    return per_fn, {k: v for k, v in kwargs.items() if k not in every}


def mask_extra_args(
    extra: dict[str, Any], updates: Any, pick: Callable[[Any], Any], enabled: bool
) -> dict[str, Any]:
    """With ``enabled`` (optax's ``mask_compatible_extra_args``), the extra arguments that
    have the structure of ``updates`` passed through ``pick`` (the wrapper's selection of
    leaves); the others as they are."""
    if not enabled:
        return extra
    spec = pytree.tree_structure(updates)
    return {k: pick(v) if pytree.tree_structure(v) == spec else v for k, v in extra.items()}
