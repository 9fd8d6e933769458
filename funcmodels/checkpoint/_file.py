"""One checkpoint file: ``save(path, tree)`` and ``load(path, like=None)``.

A checkpoint is a safetensors file. Its tensors are the tree's tensor leaves, named by
their dotted paths; its metadata holds ``format`` (``funcmodels.checkpoint``),
``version``, ``specs`` (a JSON list of the configs of the specs of the tree's Params and
State, each once) and ``tree`` (the JSON description of the tree, see :mod:`._encode`).
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from .. import _safetensors
from ._compare import difference
from ._decode import Decoder
from ._encode import FORMAT, VERSION, Encoder, shown


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def encode(tree: Any, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the file holding ``tree`` (nothing written yet)."""
    encoder = Encoder(where)
    doc = encoder.encode(tree)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "specs": json.dumps(doc["specs"], separators=(",", ":")),
        "tree": json.dumps(doc["tree"], separators=(",", ":")),
    }
    return encoder.tensors, metadata


def parse(metadata: dict[str, str], where: str, key: str) -> Any:
    """A JSON entry of the metadata; ``ValueError`` naming the file when it does not parse."""
    if key not in metadata:
        raise ValueError(f"{where}: the checkpoint has no {key!r} entry")
    try:
        return json.loads(metadata[key], object_pairs_hook=_refuse_duplicates)
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{where}: the {key!r} entry is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{where}: the {key!r} entry is nested too deeply to read") from None


def check_format(metadata: dict[str, str], where: str) -> None:
    fmt = metadata.get("format")
    if fmt == "funcmodels":
        raise ValueError(
            f"{where}: this is a model file written by fm.save; read it with fm.load(path)"
        )
    if fmt != FORMAT:
        raise ValueError(
            f"{where}: not a funcmodels checkpoint (format {fmt!r}, expected {FORMAT!r})"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"{where}: unsupported checkpoint version {metadata.get('version')!r} (this "
            f"version reads {VERSION!r})"
        )


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str], where: str) -> Any:
    """The tree a file's tensors and metadata describe."""
    check_format(metadata, where)
    decoder = Decoder(where, parse(metadata, where, "specs"), tensors)
    tree = decoder.node(parse(metadata, where, "tree"), "", 0)
    if decoder.unused():
        raise ValueError(
            f"{where}: the file holds tensors the tree does not name: {decoder.unused()[:10]}"
        )
    return tree


def check_like(tree: Any, like: Any, where: str) -> None:
    found = difference(tree, like)
    if found is not None:
        path, what = found
        raise ValueError(f"{where}: the checkpoint differs from like= at {shown(path)}: {what}")


def _writable(path: str, where: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory, expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{where}: the directory {parent!r} does not exist")


def save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write ``tree`` to a checkpoint file (safetensors plus a JSON description).

    ``tree`` may nest dicts (str keys), lists, tuples and registered named tuples (the
    optimiser states of ``fm.optim``; see :func:`register`), with Params, State, tensors
    of any dtype safetensors holds (complex too), keys, ints of any size, floats (NaN and
    infinities exactly), bools, strings and None. Tensors are written as they are (views
    and non-contiguous tensors by value; tensors shared between leaves are written once
    per leaf). The file is replaced atomically: a crash during the save leaves an older
    file whole. Inputs are not modified.

    Arguments:
        path: the file; its directory must exist.
        tree: what to save.

    Raises:
        TypeError: a leaf or container of another type (the message names its path), a
            dict key that is not a str, an unregistered named tuple.
        ValueError: a tensor on the meta device, a tree nested more than 100 levels.
        OSError: the file cannot be written (the message names it); an older file stays.
    """
    path = os.fspath(path)
    where = f"fm.checkpoint.save({path!r})"
    tensors, metadata = encode(tree, where)
    _writable(path, where)
    try:
        _safetensors.write(path, tensors, metadata)
    except OSError as e:
        raise _safetensors.file_error(e, f"{where}: could not write the file: {e}") from e


def read(path: str, where: str) -> Any:
    """The tree stored in the checkpoint file ``path``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: is a directory, expected a checkpoint file")
    try:
        tensors, metadata = _safetensors.read(path, where)
    except OSError as e:
        raise _safetensors.file_error(e, f"{where}: cannot read the file: {e}") from e
    return decode(tensors, metadata, where)


def load(path: str | os.PathLike[str], like: Any = None) -> Any:
    """Read a tree written by :func:`save`.

    Every tensor is a fresh CPU allocation, 64-byte aligned (not a view into a file
    buffer), so a model gives bitwise the outputs it gave before the save. Params and
    State come back with their spec, named tuples as their registered class.

    Arguments:
        path: the checkpoint file.
        like: an optional tree of the expected structure (for example the freshly
            initialised training state); the loaded tree must match it in containers,
            keys, named tuple types, specs, leaf types and tensor dtypes and shapes.

    Returns:
        The tree, with the structure and leaf types that were saved.

    Raises:
        OSError: the file is missing or unreadable (named in the message).
        ValueError: the file is not a well-formed checkpoint (truncated, a bad header,
            sizes that do not add up, a type name that is not registered), or it differs
            from ``like`` (the message names the first path that differs).
    """
    path = os.fspath(path)
    where = f"fm.checkpoint.load({path!r})"
    tree = read(path, where)
    if like is not None:
        check_like(tree, like, where)
    return tree
