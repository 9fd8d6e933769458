"""safetensors files read into fresh aligned tensors and written atomically.

Both :func:`funcmodels.save` / :func:`funcmodels.load` and :mod:`funcmodels.checkpoint`
read and write through this module. The files are plain safetensors (an 8-byte little-endian
header size, a JSON header, the tensors' bytes back to back), readable by
``safetensors.torch.load_file``; files written by safetensors are read here.

Reading: ``safetensors`` hands out tensors that are views into its own buffer or a memory
map, at addresses set by the header's length, usually not 64-byte aligned, and a batched
matmul then rounds differently (a ``Linear-GELU-Linear`` at batch 1 differed by 3e-8 after a
load). Here every tensor is its own fresh allocation (torch's CPU allocator aligns to 64
bytes) and the file's bytes are read straight into it with ``readinto``: no intermediate
buffer, no mapping kept alive. The header is checked whole (sizes, offsets, dtypes, the file
length) before anything is allocated, so a truncated or hostile file fails at once.

Writing: a temporary file in the target's directory is written from the tensors' own memory,
flushed to disk (``fsync``) and renamed over the target, and the directory is synced: a crash
at any point leaves the old file whole. A new file gets the mode the umask gives; a replaced
file keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
import struct
import sys
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import torch

#: torch dtype -> safetensors dtype name (the names safetensors itself writes)
DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.int64: "I64",
    torch.uint64: "U64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_BY_NAME = {v: k for k, v in DTYPES.items()}
#: the largest header read, as safetensors' own limit
MAX_HEADER = 100_000_000
_ALIGN = 64
_MAX_DIMS = 64


def check_tensor(t: object, where: str, name: str) -> torch.Tensor:
    """``t`` as a dense CPU tensor safetensors can hold; refuses what cannot be written.

    Meta tensors are refused before anything is allocated (a model initialised on
    ``'meta'`` has no values to write). Tensors on other devices are copied to the CPU.

    Raises:
        TypeError: not a plain dense tensor, or a dtype safetensors has no name for.
        ValueError: a tensor on the meta device.
    """
    if not isinstance(t, torch.Tensor) or type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise TypeError(f"{where}: entry '{name}' is {type(t).__name__}, expected a plain tensor")
    if t.is_meta:
        raise ValueError(
            f"{where}: entry '{name}' is on the meta device and holds no values; initialise "
            "the model on a real device (fm.init(key, spec, device='cpu')) before saving"
        )
    if t.layout != torch.strided or t.is_quantized or t.is_nested:
        raise TypeError(
            f"{where}: entry '{name}' is a {t.layout} tensor; only dense ones are saved"
        )
    if t.dtype not in DTYPES:
        raise TypeError(
            f"{where}: entry '{name}' has dtype {t.dtype}, which safetensors cannot hold"
        )
    return t.detach().cpu().resolve_conj().resolve_neg().contiguous()


def file_error(e: OSError, message: str) -> OSError:
    """An error of ``e``'s kind and errno (``FileNotFoundError``, ``ENOSPC``, ...) saying
    ``message``, for callers that name the file and what they were doing."""
    try:
        return type(e)(e.errno, message) if e.errno is not None else type(e)(message)
    except TypeError:
        return OSError(e.errno, message)


def _byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (writable: ``readinto`` fills it)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        end = offset + t.numel() * t.element_size()
        entries[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    # Spaces after the JSON (allowed by the format) start the data 64-byte aligned in the file.
    text += b" " * (-(8 + len(text)) % _ALIGN)
    return struct.pack("<Q", len(text)) + text


def _ordered(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Widest dtypes first, as safetensors orders them, so each tensor sits at an offset
    that is a multiple of its element size (readers that map the file need that)."""
    names = sorted(tensors, key=lambda n: -tensors[n].element_size())
    return {n: tensors[n] for n in names}


def write_to(f: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file to the open binary file ``f`` (tensors from
    :func:`check_tensor`), straight from the tensors' memory."""
    if sys.byteorder != "little":
        raise OSError("safetensors files are little-endian; this machine is not")
    tensors = _ordered(tensors)
    f.write(_header(tensors, metadata))
    for t in tensors.values():
        if t.numel():
            f.write(_byte_view(t))


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error.

    Written under a temporary name in the same directory, synced to disk, renamed over
    ``path``, and the directory synced. The mode of a replaced file is kept; a new file gets
    the default mode the umask leaves. On an error the temporary file is removed and ``path``
    is untouched.
    """
    directory, base = os.path.split(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = os.path.join(directory, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
            f.flush()
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically replace ``path`` by a safetensors file of ``tensors`` (see
    :func:`atomic_file`)."""
    with atomic_file(path) as f:
        write_to(f, tensors, metadata)


# -- reading ---------------------------------------------------------------------------------


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the header lists {k!r} twice")
        out[k] = v
    return out


def _read_header(f: BinaryIO, size: int) -> tuple[dict[str, Any], int]:
    """The parsed header and the offset where the data start; every size checked against
    the file's ``size``."""
    if size < 8:
        raise ValueError(f"{size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(MAX_HEADER, size - 8):
        raise ValueError(
            f"the header claims {n} bytes; the file has {size - 8} after the size field "
            f"(headers hold at most {MAX_HEADER})"
        )
    text = f.read(n)
    if len(text) != n:
        raise ValueError("the file ends inside its header")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_repeats)
    except UnicodeDecodeError as e:
        raise ValueError(f"the header is not UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"the header is not valid JSON ({e})") from e
    except RecursionError as e:
        raise ValueError("the header is nested too deeply to read") from e
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, expected an object")
    return header, 8 + n


def _entry(name: str, info: Any) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(
            f"tensor {name!r}: expected dtype, shape and data_offsets, got {info!r:.200}"
        )
    dtype = _BY_NAME.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unsupported dtype {info['dtype']!r:.50}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (
        isinstance(shape, list)
        and len(shape) <= _MAX_DIMS
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ValueError(f"tensor {name!r}: bad shape {shape!r:.200}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise ValueError(f"tensor {name!r}: bad data_offsets {offsets!r:.200}")
    begin, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise ValueError(
            f"tensor {name!r}: data_offsets {offsets} hold {end - begin} bytes; dtype "
            f"{info['dtype']} and shape {shape} need {nbytes}"
        )
    return dtype, tuple(shape), begin, end


def _layout(header: dict[str, Any], data_bytes: int) -> dict[str, tuple]:
    """Name -> (dtype, shape, begin, end), in file order; the entries must tile the data."""
    entries = {n: _entry(n, info) for n, info in header.items() if n != "__metadata__"}
    entries = dict(sorted(entries.items(), key=lambda item: item[1][2:]))
    at = 0
    for name, (_, _, begin, end) in entries.items():
        if begin != at:
            raise ValueError(
                f"tensor {name!r} starts at byte {begin}, expected {at} (holes or overlaps)"
            )
        at = end
    if at != data_bytes:
        raise ValueError(f"the tensors hold {at} bytes; the file has {data_bytes} after the header")
    return entries


def _metadata(header: dict[str, Any]) -> dict[str, str]:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ValueError("__metadata__ must map strings to strings")
    return meta


def _fill(f: BinaryIO, t: torch.Tensor) -> None:
    view = _byte_view(t)
    while view:
        got = f.readinto(view)
        if not got:
            raise ValueError("the file ended while reading tensor data")
        view = view[got:]


def read(path: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into fresh, 64-byte-aligned CPU tensors.

    Arguments:
        path: the file.
        where: the caller, for messages (they also name the file).

    Returns:
        ``(tensors, metadata)``: name -> tensor in the file's order, and the header's
        ``__metadata__`` (empty when absent).

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: not a well-formed safetensors file (sizes, offsets, dtypes, repeated
            names or a truncated file), found before any tensor is allocated.
    """
    if sys.byteorder != "little":
        raise OSError(f"{where}: safetensors files are little-endian; this machine is not")
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            header, start = _read_header(f, size)
            layout = _layout(header, size - start)
            metadata = _metadata(header)
            tensors = {}
            for name, (dtype, shape, _, _) in layout.items():
                t = torch.empty(shape, dtype=dtype)
                if t.numel():
                    _fill(f, t)
                tensors[name] = t
        except ValueError as e:
            raise ValueError(f"{where}: not a readable safetensors file: {e}") from None
    return tensors, metadata
