"""Checkpoints of a whole training run: any pytree, atomic, resumable bit for bit.

``save(path, tree)`` / ``load(path, like=None)`` write and read one file: safetensors for
the tensors plus a JSON description of the tree, nothing pickled. :class:`Manager` keeps
numbered checkpoints in a directory, each written atomically, and in a
``torch.distributed`` job writes each rank's shard through
``torch.distributed.checkpoint`` (:class:`ModuleState` holds a torch module and its
optimiser there).
"""

from ._distributed import ModuleState
from ._file import load, save
from ._manager import Manager
from ._registry import register

__all__ = ["Manager", "ModuleState", "load", "register", "save"]
