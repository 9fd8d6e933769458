"""optax.tree's functions over torch pytrees: ``fm.optim.tree.add``, ``norm``, ``get``, ...
with optax's names, argument names, order and defaults and its arithmetic (``fm.optim``'s
dtype rule aside: a hyperparameter held as a tensor is cast to each leaf's dtype).

A tree is any pytree of tensors: dicts, lists, tuples, NamedTuples (the optimiser states)
and :class:`funcmodels.Params`. dtype arguments take torch dtypes; the random functions take
:mod:`funcmodels.random` keys. Not to be confused with :mod:`funcmodels.tree`, the
structural tools (``at``, ``partition``, ...).
"""

from ._tree_cast import cast, cast_like, dtype, random_like, split_key_like, unwrap_random_key_data
from ._tree_math import (
    add,
    add_scale,
    allclose,
    batch_shape,
    clip,
    conj,
    div,
    full_like,
    max,
    min,
    mul,
    norm,
    ones_like,
    real,
    scale,
    size,
    sub,
    sum,
    vdot,
    where,
    zeros_like,
)
from ._tree_paths import get, get_all_with_path, set
from ._utilities import (
    bias_correction,
    update_infinity_moment,
    update_moment,
    update_moment_per_elem_norm,
)
from ._utilities import tree_map_params as map_params

__all__ = [
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "map_params",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]
