"""save / load: params and state as a safetensors file with the spec as JSON metadata.

The tensor names are the ``state_dict`` paths (``'0.weight'``), so a file written here
loads into the torch twin with ``safetensors.torch.load_file`` and ``load_state_dict``,
and a safetensors file of a torch ``state_dict`` loads here given the spec. Nothing is
unpickled and nothing in the file is evaluated.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from . import _documents, _safetensors, nn
from ._core import as_device, describe_mismatch
from ._encode import MAX_DEPTH, decode
from ._spec import Spec, depth, expected_entries
from ._state_dict import adapted, to_state_dict, validate_entries
from ._tree import Params, State

_FORMAT = "funcmodels"
# Version 2 stores the spec as Spec.to_config(defaults=True); version 1 stored the older
# {"type", "params"} form, which is a subset of it and decodes the same way.
_VERSION = "2"
_READS = ("1", "2")


def save(
    path: str | os.PathLike[str],
    params: Params,
    state: State | None = None,
) -> None:
    """Write ``params`` (and ``state``) to a safetensors file.

    Keys are the dotted ``state_dict`` paths; the metadata holds ``format``, ``version``
    and ``spec`` (the JSON of ``spec.to_config(defaults=True)``, the config format with
    every field written). Tensors are written as they are (dtype kept, moved to CPU); the
    inputs are not modified. The file is replaced atomically (written under a temporary
    name, synced, renamed): a crash or a full disk leaves an older file whole. A new file
    gets the mode the umask gives, a replaced one keeps its mode.

    Arguments:
        path: destination file; its directory must exist.
        params: from :func:`funcmodels.init` or :func:`funcmodels.load`.
        state: the model's :class:`State`, if it has one to keep.

    Raises:
        TypeError: ``params`` are not :class:`Params`.
        OSError: the directory is missing, ``path`` is a directory, or the write failed
            (a full disk, no permission); the message names the path.
        ValueError: tensors that do not fit the spec, tensors on the meta device (refused
            before anything is allocated), or a spec nested more than 100 levels.
    """
    if not isinstance(params, Params):
        raise TypeError(f"fm.save: expected Params, got {type(params).__name__}")
    where = f"fm.save({os.fspath(path)!r})"
    if depth(params.spec) > MAX_DEPTH:
        raise ValueError(
            f"{where}: the spec is nested {depth(params.spec)} levels deep; files hold at most "
            f"{MAX_DEPTH}"
        )
    sd = to_state_dict(params, state)
    spec = params.spec
    validate_entries(spec, sd, "fm.save", require_state=state is not None)
    metadata = {
        "format": _FORMAT,
        "version": _VERSION,
        "spec": json.dumps(spec.to_config(defaults=True)),
    }
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory, expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{where}: the directory {parent!r} does not exist")
    tensors = {k: _safetensors.check_tensor(t, where, k) for k, t in sd.items()}
    try:
        _safetensors.write(path, tensors, metadata)
    except OSError as e:
        raise _safetensors.file_error(e, f"{where}: could not write the file: {e}") from e


def load(
    path: str | os.PathLike[str],
    spec: Spec | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[Params, State | None]:
    """Read a file written by :func:`save` (or any safetensors ``state_dict``, given ``spec``).

    Arguments:
        path: the safetensors file.
        spec: the expected spec. Required for files without funcmodels metadata; for files
            with it, the stored spec must equal this one (the message says where they
            differ).
        device: where to put the tensors (``'meta'`` gives shapes without data).

    Returns:
        ``(params, state)``, each tensor a fresh 64-byte-aligned allocation (not a view
            into a file buffer), so outputs equal those before the save bitwise. ``state`` is
            ``None`` when the spec has buffers but the file holds none (saved without state);
            otherwise a :class:`State` (empty for models without buffers). Names, shapes and
            dtypes are checked against the spec, every problem listed. A stored spec nested
            more than 100 levels deep, or holding more than 100,000 layers, is refused with a
            ``ValueError`` (see :mod:`funcmodels._encode`), as is metadata too deeply nested
            for JSON to read, and a malformed or truncated file (before anything is
            allocated).

    Raises:
        TypeError: ``spec`` is not a spec.
        OSError: the file is missing, is a directory, or cannot be read.
        ValueError: the file holds another spec, its entries do not fit the spec, or it
            is malformed, truncated or beyond the limits above.
    """
    if spec is not None and not isinstance(spec, Spec):
        raise TypeError(f"fm.load: spec must be a layer spec, got {type(spec).__name__}")
    where = f"fm.load({os.fspath(path)!r})"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory, expected a safetensors file")
    device = as_device(device, where)
    # Read on the CPU and move afterwards, every tensor a fresh aligned allocation.
    try:
        tensors, metadata = _safetensors.read(os.fspath(path), where)
    except OSError as e:
        raise _safetensors.file_error(e, f"{where}: cannot read the file: {e}") from e
    if device.type != "cpu":
        tensors = {k: t.to(device) for k, t in tensors.items()}
    stored = _stored_spec(metadata, where, required=spec is None)
    if spec is None:
        spec = stored
    elif stored is not None and stored != spec:
        raise ValueError(
            f"{where}: the file was saved for a different spec: " + describe_mismatch(spec, stored)
        )
    tensors = adapted(spec, tensors)
    want_state = expected_entries(spec, "state")
    has_state = not want_state or any(k in tensors for k in want_state)
    validate_entries(spec, tensors, where, require_state=has_state)
    params = Params._make(spec, {k: tensors[k] for k in expected_entries(spec, "params")})
    state = State._make(spec, {k: tensors[k] for k in want_state}) if has_state else None
    return params, state


def _stored_spec(metadata: dict[str, str], where: str, *, required: bool) -> Spec | None:
    fmt = metadata.get("format")
    if fmt != _FORMAT:
        if required:
            raise ValueError(
                f"{where}: the file has no funcmodels metadata (format {fmt!r}), so the "
                "architecture is unknown; pass it: fm.load(path, spec)"
            )
        return None
    version = metadata.get("version")
    if version not in _READS:
        raise ValueError(
            f"{where}: unsupported funcmodels file version {version!r} (this version reads "
            f"{', '.join(repr(v) for v in _READS)})"
        )
    if "spec" not in metadata:
        raise ValueError(f"{where}: funcmodels metadata without a 'spec' entry")
    try:
        doc: Any = _documents.parse_json(metadata["spec"], f"{where}: the stored spec", "spec")
    except RecursionError as e:
        raise ValueError(f"{where}: the stored spec is nested too deeply to read") from e
    try:
        return decode(doc, "spec", nn.Sequential)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot rebuild the stored spec: {e}") from e
