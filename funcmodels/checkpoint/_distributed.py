"""Checkpoints of a ``torch.distributed`` job through ``torch.distributed.checkpoint`` (DCP).

Each rank writes its own shard: DTensors (an FSDP2 model's parameters, its optimiser's
moments) are saved piece by piece and loaded back resharded to the world size and
placements of the targets, so a run saved by 2 processes resumes on 1 or 4. Plain tensors
are taken as replicated (written once). The tree's other leaves and its structure are
written by rank 0 as ``tree.json`` (the description of :mod:`._encode`, tensors named by
their DCP keys): nothing of the tree itself is pickled.

DCP itself pickles: its ``.metadata`` file is read with ``pickle.load``, and non-tensor
values inside a module's or optimiser's state dict (learning rates, betas) are saved with
``torch.save`` and loaded with ``weights_only=False``. Restore distributed checkpoints from
trusted sources only.

``torch.distributed.checkpoint`` is imported when a distributed checkpoint is written or
read, not with ``funcmodels``.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

from .. import _safetensors
from .._tree import Params, State
from ._decode import Decoder, finish
from ._encode import Encoder, child, shown

_TREE = "tree.json"


def active() -> bool:
    """Whether this process is one of a ``torch.distributed`` job (a default group exists)."""
    return dist.is_available() and dist.is_initialized()


def is_leader() -> bool:
    """Rank 0 of a job, or a process on its own."""
    return not active() or dist.get_rank() == 0


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a string or ``None``)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ModuleState:
    """A torch module (and its optimiser) as one entry of a distributed checkpoint.

    ``Manager.save(step, {"model": fm.checkpoint.ModuleState(model, opt), "step": step})``
    saves each rank's shard of an FSDP2 (``fully_shard``) model and of its optimiser's
    state, by the parameters' canonical names; ``Manager.restore(like={...})`` with a
    ``ModuleState`` at the same place loads them back into that module and optimiser,
    resharded to the current world size.

    Arguments:
        module: the model (FSDP2, DDP or plain).
        optimizer: its ``torch.optim`` optimiser, if its state is to be kept.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"fm.checkpoint.ModuleState: expected a torch.nn.Module, got {module!r}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"fm.checkpoint.ModuleState: expected a torch.optim.Optimizer, got {optimizer!r}"
            )
        self.module = module
        self.optimizer = optimizer

    def __repr__(self) -> str:
        return f"fm.checkpoint.ModuleState({type(self.module).__name__}, {self.optimizer!r})"

    def state_dict(self) -> dict[str, Any]:
        """The module's (and optimiser's) state by canonical names, sharded as they are."""
        from torch.distributed.checkpoint import state_dict as sd

        if self.optimizer is None:
            return {"model": sd.get_model_state_dict(self.module)}
        model, optim = sd.get_state_dict(self.module, self.optimizer)
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` gave (after DCP filled it) into the module."""
        from torch.distributed.checkpoint import state_dict as sd

        if self.optimizer is None:
            sd.set_model_state_dict(self.module, state["model"])
        else:
            sd.set_state_dict(
                self.module,
                self.optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optim"],
            )


class _Encoder(Encoder):
    """Tensors and :class:`ModuleState` entries go to DCP under ``t:<path>`` / ``m:<path>``;
    the rest stays in the description."""

    def __init__(self, where: str):
        super().__init__(where)
        self.entries: dict[str, Any] = {}

    def tensor(self, t: torch.Tensor, path: str) -> dict[str, Any]:
        if t.is_meta:
            _safetensors.check_tensor(t, self.where, path or "<root>")  # the clear refusal
        key = "t:" + self.name(path)
        self.tensors[key[2:]] = t  # the names taken, for self.name
        self.entries[key] = t.detach()
        return {"tensor": key, "requires_grad": True} if t.requires_grad else {"tensor": key}

    def other(self, obj: Any, path: str) -> Any:
        if isinstance(obj, ModuleState):
            key = "m:" + (path or "<root>")
            self.entries[key] = obj
            return {"module_state": key}
        if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
            raise TypeError(
                f"{self.where}: {shown(path)} is a {type(obj).__name__}; wrap a model and its "
                "optimiser as fm.checkpoint.ModuleState(model, optimizer)"
            )
        return super().other(obj, path)


def save(tmp: str, tree: Any, where: str) -> dict[str, Any]:
    """Every rank: write the tensors and module states of ``tree`` into the directory
    ``tmp`` through DCP, synced to disk (collective). Returns the tree's description, which
    rank 0 writes with :func:`write_description`."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.api import CheckpointException

    encoder = _Encoder(where)
    doc = encoder.encode(tree)
    try:
        dcp_save(encoder.entries, storage_writer=FileSystemWriter(tmp, sync_files=True))
    except (OSError, CheckpointException) as e:
        raise OSError(f"{where}: could not write the checkpoint in {tmp!r}: {e}") from None
    return doc


def write_description(tmp: str, doc: dict[str, Any]) -> None:
    """Write ``tree.json`` into ``tmp``, synced to disk."""
    with open(os.path.join(tmp, _TREE), "x") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


class _Decoder(Decoder):
    def __init__(self, where: str, doc: Any, loaded: dict[str, Any]):
        if not isinstance(doc, dict) or set(doc) != {"specs", "tree"}:
            raise ValueError(f"{where}: {_TREE} must hold 'specs' and 'tree'")
        super().__init__(where, doc["specs"], {})
        self.loaded = loaded

    def node(self, node: Any, path: str, level: int) -> Any:
        if isinstance(node, dict) and set(node) == {"module_state"}:
            return self.loaded[node["module_state"]]
        return super().node(node, path, level)

    def tensor(self, node: dict[str, Any], path: str) -> torch.Tensor:
        key = node["tensor"]
        if not isinstance(key, str) or key not in self.loaded:
            raise self.error(path, f"no stored tensor named {key!r:.100}")
        return finish(self.loaded[key], node, lambda m: self.error(path, m))


def _children(node: dict[str, Any], like: Any, path: str) -> list[tuple[Any, Any, str]]:
    """(child node, the matching part of ``like`` or ``None``, path) of a description node."""
    out = []
    for kind, value in node.items():
        if kind in ("list", "tuple") and isinstance(value, list):
            seq = like if isinstance(like, (list, tuple)) else ()
            for i, v in enumerate(value):
                out.append((v, seq[i] if i < len(seq) else None, child(path, i)))
        elif kind in ("dict", "ordered_dict", "fields", "entries") and isinstance(value, dict):
            if hasattr(type(like), "_fields"):
                like = like._asdict()
            elif isinstance(like, (Params, State)):
                like = like.flat()
            for k, v in value.items():
                out.append((v, like.get(k) if isinstance(like, dict) else None, child(path, k)))
    return out


def _references(node: Any, like: Any, path: str, out: dict) -> dict[str, tuple[str, Any]]:
    """DCP key -> (tree path, what ``like`` has there) of every tensor and module state."""
    if isinstance(node, dict):
        key = node.get("tensor", node.get("module_state"))
        if isinstance(key, str):
            out[key] = (path, like)
        for v, w, p in _children(node, like, path):
            _references(v, w, p, out)
    return out


def _targets(doc: Any, metadata: Any, like: Any, where: str) -> dict[str, Any]:
    """What DCP loads into: fresh tensors (shaped as saved, or like ``like``'s DTensors)
    and ``like``'s :class:`ModuleState` objects."""
    from torch.distributed.tensor import DTensor

    targets: dict[str, Any] = {}
    for key, (path, want) in _references(doc.get("tree"), like, "", {}).items():
        if key.startswith("m:"):
            if not isinstance(want, ModuleState):
                raise ValueError(
                    f"{where}: {shown(path)} holds a module's state; pass like= with an "
                    "fm.checkpoint.ModuleState(model, optimizer) there to load it into"
                )
            targets[key] = want
        elif isinstance(want, DTensor):
            targets[key] = torch.empty_like(want)
        elif key in metadata.state_dict_metadata:
            info = metadata.state_dict_metadata[key]
            targets[key] = torch.empty(info.size, dtype=info.properties.dtype)
        else:
            raise ValueError(f"{where}: the checkpoint has no tensor {key!r}")
    return targets


def load(path: str, like: Any, where: str) -> Any:
    """The tree of the distributed checkpoint in ``path`` (collective in a job; a process
    on its own reads it whole)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with open(os.path.join(path, _TREE)) as f:
            doc = json.load(f)
        reader = FileSystemReader(path)
        targets = _targets(doc, reader.read_metadata(), like, where)
        with warnings.catch_warnings():  # reading alone is what was asked for
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp_load(targets, storage_reader=reader, no_dist=not active())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: not a whole checkpoint ({e})") from None
    except (OSError, CheckpointException) as e:
        raise OSError(f"{where}: could not read the checkpoint in {path!r}: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: {_TREE} is not valid JSON ({e})") from None
    decoder = _Decoder(where, doc, targets)
    return decoder.node(doc["tree"], "", 0)
