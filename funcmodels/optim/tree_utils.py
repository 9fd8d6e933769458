"""optax.tree_utils' names that fm.optim has, the same objects as ``fm.optim``'s: only
``tree_map_params`` (optax's tree arithmetic, ``tree_add``, ``tree_norm``, ..., is not
here; ``fm.tree`` has the structural operations)."""

from . import (
    tree_map_params,
)

__all__ = [
    "tree_map_params",
]
