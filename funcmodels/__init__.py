"""funcmodels: JAX-style functional models for PyTorch.

A model is a spec (immutable, hashable) plus a pytree of parameters; ``init`` and
``apply`` are pure functions, so every :mod:`torch.func` transform composes with them.
"""

from . import checkpoint, extend, nn, optim, random, tree
from ._config import from_config, load_config
from ._context import Context
from ._core import (
    Output,
    apply,
    check_params,
    init,
    init_with_state,
    run,
)
from ._grad import grad, jit, value_and_grad
from ._io import load, save
from ._registry import register_layer
from ._shapes import shapes
from ._spec import Spec
from ._state_dict import from_state_dict, to_state_dict
from ._summary import summary
from ._tree import Params, State
from .random import fold_in, key, split

__version__ = "0.1.0"

__all__ = [
    "Context",
    "Output",
    "Params",
    "Spec",
    "State",
    "apply",
    "check_params",
    "checkpoint",
    "extend",
    "fold_in",
    "from_config",
    "from_state_dict",
    "grad",
    "init",
    "init_with_state",
    "jit",
    "key",
    "load",
    "load_config",
    "nn",
    "optim",
    "random",
    "register_layer",
    "run",
    "save",
    "shapes",
    "split",
    "summary",
    "to_state_dict",
    "tree",
    "value_and_grad",
]
