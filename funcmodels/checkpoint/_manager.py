"""``Manager``: numbered checkpoints in a directory, each saved atomically, the newest kept.

Layout: ``<directory>/step_<n>/`` holds one checkpoint, either ``checkpoint.safetensors``
(see :mod:`._file`) or, from a ``torch.distributed`` job, the files of
``torch.distributed.checkpoint`` plus ``tree.json`` (see :mod:`._distributed`).

Atomicity: a save writes everything under a hidden temporary name
(``.tmp~step_<n>~<host>~<pid>~<token>``), syncs the files and the temporary directory to
disk, renames it to ``step_<n>`` (one atomic step) and syncs the directory. A crash at any
moment leaves either no ``step_<n>`` or a whole one; only ``step_<n>`` names are listed.
Old checkpoints are dropped the same way in reverse: renamed to a hidden ``.trash~...`` name
first, then deleted. Hidden leftovers of a crashed process on this host (its pid no longer
running) are deleted when a manager opens the directory; others are left alone, since
another process may be writing them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from typing import Any

from .. import _safetensors
from . import _distributed, _file

_STEP = re.compile(r"step_(0|[1-9][0-9]*)")
_FILE = "checkpoint.safetensors"
_HIDDEN = (".tmp~", ".trash~")


def _check_keep(keep: object) -> int | None:
    if keep is None:
        return None
    if type(keep) is not int or keep < 1:
        raise ValueError(f"fm.checkpoint.Manager: keep must be an int >= 1 or None, got {keep!r}")
    return keep


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


class Manager:
    """Numbered checkpoints of a training run in one directory.

    ``save(step, tree)`` writes atomically (a crash leaves the previous checkpoints whole
    and no partial one listed) and then keeps the newest ``keep``; ``latest_step()`` and
    ``restore()`` resume a run. In a ``torch.distributed`` job every rank calls ``save`` and
    ``restore`` together and each writes its own shard through
    ``torch.distributed.checkpoint`` (see :class:`ModuleState`).

    Arguments:
        directory: where the checkpoints live; created if missing.
        keep: how many of the newest checkpoints to keep (``None``: all).

    Raises:
        OSError: the directory cannot be created or is not a directory (named).
        ValueError: ``keep`` is not a positive int or ``None``.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int | None = 3):
        self.keep = _check_keep(keep)
        self.directory = os.path.abspath(os.fspath(directory))
        where = f"fm.checkpoint.Manager({self.directory!r})"
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise _safetensors.file_error(e, f"{where}: cannot create the directory: {e}") from e
        if _distributed.is_leader():
            self._clean()

    def __repr__(self) -> str:
        return f"fm.checkpoint.Manager({self.directory!r}, keep={self.keep})"

    def _where(self, what: str) -> str:
        return f"fm.checkpoint.Manager({self.directory!r}).{what}"

    def path(self, step: int) -> str:
        """The directory of checkpoint ``step`` (it may not exist)."""
        return os.path.join(self.directory, f"step_{step}")

    def all_steps(self) -> list[int]:
        """The steps of the whole checkpoints in the directory, ascending."""
        try:
            names = os.listdir(self.directory)
        except OSError as e:
            raise _safetensors.file_error(e, f"{self._where('all_steps()')}: {e}") from e
        return sorted(int(m.group(1)) for m in map(_STEP.fullmatch, names) if m)

    def latest_step(self) -> int | None:
        """The newest step saved, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _clean(self) -> None:
        """Delete hidden leftovers of crashed processes on this host."""
        host = socket.gethostname()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.directory):
                parts = name.split("~")
                if not name.startswith(_HIDDEN) or len(parts) != 5 or not parts[3].isdigit():
                    continue
                if parts[2] == host and not _alive(int(parts[3])):
                    _remove(os.path.join(self.directory, name))

    def _hidden(self, kind: str, step: int) -> str:
        token = f"{kind}~step_{step}~{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(4)}"
        return os.path.join(self.directory, token)

    def save(self, step: int, tree: Any) -> str:
        """Save ``tree`` as checkpoint ``step``, atomically, then keep the newest ``keep``.

        Arguments:
            step: the training step, an int after every step saved in the directory.
            tree: what :func:`funcmodels.checkpoint.save` takes; in a distributed job
                also DTensors and :class:`ModuleState` entries.

        Returns:
            The checkpoint's directory.

        Raises:
            ValueError: ``step`` is not an int >= 0 or not after the latest step saved.
            TypeError: a leaf the format cannot hold (nothing is written).
            OSError: writing failed (a full disk, a read-only directory; the message names
                the directory); no partial checkpoint remains and the earlier ones are
                unchanged.
        """
        where = self._where(f"save(step={step!r})")
        if type(step) is not int or step < 0:
            raise ValueError(f"{where}: step must be an int >= 0, got {step!r}")
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"{where}: the directory holds step {latest} already; steps must increase "
                "(start a new run in another directory, or delete the later checkpoints)"
            )
        if _distributed.active():
            self._save_distributed(step, tree, where)
        else:
            tensors, metadata = _file.encode(tree, where)  # refuses bad trees before any write
            tmp = self._hidden(".tmp", step)
            self._commit(tmp, step, where, lambda: self._write(tmp, tensors, metadata))
        return self.path(step)

    def _save_distributed(self, step: int, tree: Any, where: str) -> None:
        leader = _distributed.is_leader()
        tmp = _distributed.agree(self._hidden(".tmp", step) if leader else None)
        try:
            doc = _distributed.save(tmp, tree, where)
        except OSError:
            if leader:
                _remove(tmp)
            raise
        error = None
        if leader:  # one writer for the description, the rename and the pruning
            try:
                self._commit(tmp, step, where, lambda: _distributed.write_description(tmp, doc))
            except OSError as e:
                error = str(e)
        error = _distributed.agree(error)
        if error is not None:
            raise OSError(error)

    @staticmethod
    def _write(tmp: str, tensors: dict, metadata: dict[str, str]) -> None:
        os.mkdir(tmp)
        with open(os.path.join(tmp, _FILE), "xb") as f:
            _safetensors.write_to(f, tensors, metadata)
            f.flush()
            os.fsync(f.fileno())

    def _commit(self, tmp: str, step: int, where: str, write: Callable[[], None]) -> None:
        """``write()`` into ``tmp``, sync it, rename it to ``step_<step>``, sync the
        directory, prune; on an error remove ``tmp`` and raise ``OSError``."""
        try:
            write()
            _safetensors.fsync_dir(tmp)
            os.rename(tmp, self.path(step))
            _safetensors.fsync_dir(self.directory)
        except OSError as e:
            _remove(tmp)
            message = (
                f"{where}: could not write the checkpoint in {self.directory!r}: {e}; the "
                "checkpoints saved before are unchanged"
            )
            raise _safetensors.file_error(e, message) from e
        self._prune()

    def _prune(self) -> None:
        if self.keep is None:
            return
        for old in self.all_steps()[: -self.keep]:
            trash = self._hidden(".trash", old)
            try:
                os.rename(self.path(old), trash)
            except OSError:
                continue  # gone already, or not ours to delete: the new checkpoint stands
            _remove(trash)

    def restore(self, step: int | None = None, like: Any = None) -> Any:
        """The tree saved as ``step`` (the latest when ``None``).

        Arguments:
            step: which checkpoint.
            like: an optional tree of the expected structure (see
                :func:`funcmodels.checkpoint.load`). For a distributed checkpoint it also
                gives the targets: :class:`ModuleState` entries are loaded into their
                module and optimiser (resharded to the current world size), and DTensor
                leaves keep their placement.

        Returns:
            The tree, every tensor a fresh allocation.

        Raises:
            FileNotFoundError: no checkpoint (or no checkpoint ``step``) in the directory.
            ValueError: a malformed checkpoint, or one that differs from ``like`` (the
                first differing path named).
        """
        where = self._where(f"restore(step={step!r})")
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"{where}: no checkpoint in {self.directory!r}")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"{where}: no checkpoint of that step; steps saved: {steps}")
        path = self.path(step)
        if os.path.exists(os.path.join(path, _FILE)):
            tree = _file.read(os.path.join(path, _FILE), where)
        else:
            tree = _distributed.load(path, like, where)
        if like is not None:
            _file.check_like(tree, like, where)
        return tree
