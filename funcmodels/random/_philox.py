"""The generator: keys and Philox4x32-10 in integer array ops (see the package docstring).

Three implementations of the same rounds give the same bits: out of place in torch ops
(under vmap, grad and compile, which need them traced or batched), in place in torch ops
(eager draws off the CPU) and in place in numpy's ``uint64`` ufuncs (eager draws on the
CPU: far less overhead per call; a large draw's blocks split over torch's thread count,
:mod:`._threads`).

Counter-based pseudo-random numbers from explicit keys.

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every draw is a
pure function of the key: the bits come from Philox4x32-10 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC'11) written in integer tensor ops, so

* the same key gives the same bits on every run, process and device;
* a batch of keys of shape ``(n, 2)`` works under :func:`torch.func.vmap`;
* the functions trace under :func:`torch.compile`;
* torch's global generator is never read or advanced.

Only integer arithmetic makes the bits, and float samples are built from them with exact
operations, so integer and ``[0, 1)`` uniform draws are bit-identical across devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import _threads
from ._constants import _M0, _M1, _MASK, _ROUNDS, _W0, _W1
from ._philox_np import _philox_numpy

# Counter word 1 separates the streams drawn from one key, so that splitting, folding in
# and sampling never reuse a counter.
_STREAM_BITS, _STREAM_SPLIT, _STREAM_FOLD = 0, 1, 2
# Chunk of counters processed at a time on the eager fast path: four int64 lanes of this
# length stay in the L2 cache, which makes the generator several times faster.
_CHUNK = 1 << 17
# Below this many blocks (off the CPU) the fixed cost of the in-place path does not pay.
_SMALL = 256

Shape = int | Sequence[int] | torch.Size


def key(seed: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Make a PRNG key from an integer seed.

    Arguments:
        seed: any Python integer in ``[-2**63, 2**64)``; its 64 bits become the key.
        device: where the key lives (default CPU).

    Returns:
        ``int64`` tensor of shape ``(2,)``.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` does not fit in 64 bits.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"fm.key(seed): expected an int seed, got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"fm.key(seed): seed must fit in 64 bits, got {seed}")
    seed &= (1 << 64) - 1
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64, device=device)


def check_key(k: object, where: str = "key") -> torch.Tensor:
    """Raise a clear error unless ``k`` is a PRNG key; return it.

    Under :func:`torch.func.vmap` a batch of keys looks like a single key, so the check is
    the same inside and outside transforms.

    Arguments:
        k: the object to check.
        where: what to name in the error message (the function and argument).

    Returns:
        ``k`` itself.

    Raises:
        TypeError: ``k`` is not an ``int64`` tensor of shape ``(2,)``.
    """
    if not isinstance(k, torch.Tensor):
        raise TypeError(
            f"{where}: expected a PRNG key made by fm.key(seed) (an int64 tensor of shape "
            f"(2,)), got {type(k).__name__}"
        )
    if k.dtype != torch.int64 or k.shape != (2,):
        raise TypeError(
            f"{where}: expected a PRNG key made by fm.key(seed) (an int64 tensor of shape "
            f"(2,)), got a {k.dtype} tensor of shape {tuple(k.shape)}; for a batch of keys "
            f"use torch.func.vmap over the leading dimension"
        )
    return k


def is_plain(t: torch.Tensor) -> bool:
    """True for an ordinary eager tensor (not under vmap/grad wrappers or compilation).

    Arguments:
        t: a tensor.

    Returns:
        Whether its values can be read here (``.item()``, ``.tolist()``).
    """
    if torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _philox_py(k0: int, k1: int, c0: int, c1: int, c2: int = 0, c3: int = 0):
    """Philox4x32-10 of one counter in Python ints: the cheap path for deriving keys."""
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


def _philox_functional(k0, k1, c0, c1, c2=None, c3=None):
    """Philox4x32-10 on counters ``(c0, c1, c2, c3)`` (missing words are 0), out of place.

    This is the path under vmap, grad and torch.compile; the tensors broadcast.
    """
    if c2 is None:
        c2 = torch.zeros_like(c0)
    if c3 is None:
        c3 = torch.zeros_like(c0)
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = c0 * _M0  # 32x32 -> 64-bit product; int64 wrap-around keeps the low 64 bits
        p1 = c2 * _M1
        c0, c1, c2, c3 = (
            ((p1 >> 32) & _MASK) ^ c1 ^ k0,
            p1 & _MASK,
            ((p0 >> 32) & _MASK) ^ c3 ^ k1,
            p0 & _MASK,
        )
    return torch.stack((c0, c1, c2, c3), dim=-1)


# The Weyl increments of rounds 0-9, added to the key for each round's key.
_KEY_STEPS = tuple((r * _W0, r * _W1) for r in range(_ROUNDS))


def _round_keys(k0: int, k1: int) -> list[tuple[int, int]]:
    """The ten Philox round keys as Python ints (no 0-d tensor ops per round)."""
    return [((k0 + w0) & _MASK, (k1 + w1) & _MASK) for w0, w1 in _KEY_STEPS]


def _philox_inplace(keys, start: int, stream: int, out: torch.Tensor, scratch) -> None:
    """Philox of counters ``(start + i, stream, 0, 0)`` into ``out`` (shape ``(m, 4)``).

    In-place ops on ``scratch`` (six ``int64`` buffers of length ``>= m``), with three
    savings over the textbook rounds, all exact:

    * rounds 0 and 1 know that counter words 1-3 start as constants, so their products
      and XORs with those words are Python ints, not tensor ops;
    * low product words are carried unmasked from round to round: they only meet the next
      round in an XOR whose result is masked, so one mask suffices;
    * the last round writes its four words straight into ``out``'s columns.
    """
    m = out.shape[0]
    c0, c1, c2, c3, p0, p1 = (t[:m] for t in scratch)
    (k0, k1), (k0b, k1b) = keys[0], keys[1]
    # Round 0 on (c0, stream, 0, 0): the second product is 0, so the new word 0 is the
    # constant stream ^ k0, word 1 is 0, and word 3 is the first product (kept in p0).
    torch.arange(start, start + m, out=c0)
    torch.mul(c0, _M0, out=p0)
    torch.bitwise_right_shift(p0, 32, out=c2).bitwise_xor_(k1).bitwise_and_(_MASK)
    # Round 1 on (stream ^ k0, 0, c2, p0): the first product is a constant.
    q0 = (stream ^ k0) * _M0
    torch.mul(c2, _M1, out=p1)
    torch.bitwise_right_shift(p1, 32, out=c0).bitwise_xor_(k0b).bitwise_and_(_MASK)
    torch.bitwise_xor(p0, (q0 >> 32) ^ k1b, out=c2).bitwise_and_(_MASK)
    c1, p1 = p1, c1
    c3.fill_(q0 & _MASK)
    for r, (k0, k1) in enumerate(keys[2:], start=2):
        last = r == len(keys) - 1
        torch.mul(c0, _M0, out=p0)
        torch.mul(c2, _M1, out=p1)
        n0, n2 = (out[:, 0], out[:, 2]) if last else (c0, c2)
        torch.bitwise_right_shift(p1, 32, out=n0).bitwise_xor_(c1).bitwise_xor_(k0)
        n0.bitwise_and_(_MASK)
        torch.bitwise_right_shift(p0, 32, out=n2).bitwise_xor_(c3).bitwise_xor_(k1)
        n2.bitwise_and_(_MASK)
        if last:
            torch.bitwise_and(p1, _MASK, out=out[:, 1])
            torch.bitwise_and(p0, _MASK, out=out[:, 3])
        c1, p1 = p1, c1
        c3, p0 = p0, c3


def _blocks(k: torch.Tensor, stream: int, n_blocks: int, device=None) -> torch.Tensor:
    """``n_blocks`` Philox outputs of four 32-bit words for counters ``(i, stream)``.

    The functional path, for vmap/grad/compile and small draws. Returns an ``int64``
    tensor of shape ``(n_blocks, 4)`` with values in ``[0, 2**32)``.
    """
    device = k.device if device is None else torch.device(device)
    k = k.to(device)
    stream_t = torch.tensor(stream, dtype=torch.int64, device=device)
    c0 = torch.arange(n_blocks, dtype=torch.int64, device=device)
    return _philox_functional(k[0], k[1], c0, stream_t)


def _draw(k: torch.Tensor, n: int, group: int, convert, device) -> torch.Tensor:
    """``n`` values, each made by ``convert`` from ``group`` (1 or 2) consecutive words.

    ``convert`` maps a flat ``int64`` tensor of words (a multiple of four long) to one value
    per ``group`` words, elementwise. See :func:`generate`.
    """
    return generate(k, n, 4 // group, lambda w: convert(w.reshape(-1)), device)


def generate(k: torch.Tensor, n: int, per_block: int, convert, device) -> torch.Tensor:
    """``n`` values, ``per_block`` (1, 2, 4 or 8) of them from each Philox block.

    ``convert`` maps an ``(m, 4)`` ``int64`` tensor of words (block ``i``'s four words in
    row ``i``, values in ``[0, 2**32)``) to ``m * per_block`` values, block by block. For
    a plain key (eager, outside vmap and compile) the words are made and converted chunk
    by chunk while they are in cache, in numpy on the CPU (:func:`_philox_numpy`) and in
    torch's in-place ops elsewhere (:func:`_philox_inplace`); otherwise out of place, all
    at once (:func:`_philox_functional`). All give the same values, since Philox and
    ``convert`` are the same functions of the counter.
    """
    n_blocks = -(-n // per_block)
    device = k.device if device is None else torch.device(device)
    if device.type == "meta" or (k.device.type == "meta" and is_plain(k)):
        # Shapes only: nothing is sampled (the rounds would cost ~100 meta ops, each
        # slower than on the CPU); ``convert`` of one CPU block tells the dtype.
        probe = convert(torch.zeros(1, 4, dtype=torch.int64, device="cpu"))
        return torch.empty(n, dtype=probe.dtype, device="meta")
    numpy = is_plain(k) and _numpy_path(device)
    if n_blocks == 0 or not (numpy or (is_plain(k) and n_blocks > _SMALL)):
        return convert(_blocks(k, _STREAM_BITS, n_blocks, device))[:n]
    keys = _round_keys(*k.tolist())
    if numpy:
        return _numpy_draw(keys, n, per_block, convert)
    # Off the CPU one chunk; on the CPU this path runs only where the numpy path is
    # switched off (the tests do, to check these rounds' chunking against the others).
    chunk = _CHUNK if device.type == "cpu" else n_blocks
    out = None
    with _threads.scratch_mode():
        rounds = _torch_rounds(keys, min(chunk, n_blocks), device)
        for start in range(0, n_blocks, chunk):
            stop = min(n_blocks, start + chunk)
            values = convert(rounds(start, stop - start))
            if out is None:
                # The result is an ordinary tensor, whatever the scratch is.
                with torch.inference_mode(False):
                    out = torch.empty(n_blocks * per_block, dtype=values.dtype, device=device)
            out[start * per_block : stop * per_block] = values
    return out[:n]


def _numpy_path(device: torch.device) -> bool:
    """Whether a plain draw makes its words in numpy's rounds: on the CPU, on
    ``torch.get_num_threads()`` threads where the draw is large (:mod:`._threads`)."""
    return device.type == "cpu"


def _numpy_draw(keys, n: int, per_block: int, convert) -> torch.Tensor:
    """:func:`generate` on the CPU: the words in numpy, chunk by chunk, converted while
    they are in cache; the chunks of a large draw on several threads."""
    n_blocks = -(-n // per_block)
    work = _threads.spans(n_blocks, _CHUNK)
    rounds = _numpy_rounds(keys)
    if len(work) == 1 and len(work[0]) == 1:  # one chunk, as every small draw
        with _threads.scratch_mode():
            values = convert(rounds(0, n_blocks))
        # The result is an ordinary tensor, whatever the scratch is.
        return values.clone()[:n]
    # ``convert`` of one block tells the dtype before any thread writes.
    dtype = convert(torch.zeros(1, 4, dtype=torch.int64, device="cpu")).dtype
    # On the CPU whatever torch's default device is.
    out = torch.empty(n_blocks * per_block, dtype=dtype, device="cpu")

    def each(start: int, m: int) -> None:
        out[start * per_block : (start + m) * per_block] = convert(rounds(start, m))

    _threads.run_spans(work, each)
    return out[:n]


def _numpy_rounds(keys):
    """``(start, m) -> words``: the ``(m, 4)`` ``int64`` words of blocks ``start + i``."""

    def rounds(start: int, m: int) -> torch.Tensor:
        return torch.from_numpy(_philox_numpy(keys, start, _STREAM_BITS, m).view(np.int64))

    return rounds


def _torch_rounds(keys, m: int, device: torch.device):
    """As :func:`_numpy_rounds`, in torch's in-place ops on buffers for ``m`` blocks."""
    # One allocation for the six lanes and the (m, 4) words: fewer pages to fault in.
    buf = torch.empty(10, m, dtype=torch.int64, device=device)
    scratch = list(buf[:6])
    words = buf[6:].view(m, 4)

    def rounds(start: int, m: int) -> torch.Tensor:
        _philox_inplace(keys, start, _STREAM_BITS, words[:m], scratch)
        return words[:m]

    return rounds


def _numel(shape: Shape, where: str) -> tuple[tuple[int, ...], int]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in shape
    ):
        raise TypeError(f"{where}: shape must be an int or a sequence of ints, got {shape!r}")
    shape = tuple(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{where}: shape must be non-negative, got {shape}")
    return shape, math.prod(shape)


def bits(k: torch.Tensor, shape: Shape, *, device=None) -> torch.Tensor:
    """Uniform random 32-bit words.

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        shape: the shape of the result, an int or a sequence of ints.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        ``int64`` tensor of ``shape`` with values in ``[0, 2**32)``.
    """
    check_key(k, "fm.random.bits")
    shape, n = _numel(shape, "fm.random.bits")
    return _draw(k, n, 1, lambda w: w, device).reshape(shape)


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """Split a key into ``num`` new, independent keys.

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)``.
        num: how many keys to make, a positive int.

    Returns:
        ``int64`` tensor of shape ``(num, 2)``; ``k1, k2 = fm.split(key)`` unpacks it.

    Raises:
        TypeError: ``k`` is not a key.
        ValueError: ``num`` is not a positive int.

    Example:
        ```python
        k1, k2 = fm.split(fm.key(0))
        assert fm.split(fm.key(0), 4).shape == (4, 2)
        ```
    """
    check_key(k, "fm.split")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"fm.split(key, num): num must be a positive int, got {num!r}")
    if k.device.type == "meta" and is_plain(k):
        return torch.empty(num, 2, dtype=torch.int64, device="meta")
    if is_plain(k) and k.device.type == "cpu" and num <= 64:
        k0, k1 = k.tolist()
        words = [w for i in range((num + 1) // 2) for w in _philox_py(k0, k1, i, _STREAM_SPLIT)]
        return torch.tensor(words[: 2 * num], dtype=torch.int64).reshape(num, 2)
    return _blocks(k, _STREAM_SPLIT, (num + 1) // 2).reshape(-1, 2)[:num]


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """Derive a new key from ``k`` and an integer (a step, a layer id, a sample index).

    Arguments:
        k: a key.
        data: an int in ``[0, 2**32)`` or an integer tensor of shape ``()`` (which may be
            batched under vmap).

    Returns:
        a new key, an ``int64`` tensor of shape ``(2,)``, independent of ``k``'s other
            derived keys.

    Raises:
        TypeError: ``k`` is not a key, or ``data`` is not an integer.
        ValueError: ``data`` is out of ``[0, 2**32)``, or a tensor that is not 0-d.
    """
    check_key(k, "fm.fold_in")
    if isinstance(data, torch.Tensor):
        if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
            raise TypeError(f"fm.fold_in: data must be an integer, got a {data.dtype} tensor")
        if data.dim() != 0:
            raise ValueError(f"fm.fold_in: data must be a scalar, got shape {tuple(data.shape)}")
        d = data.to(device=k.device, dtype=torch.int64) & _MASK
    else:
        if isinstance(data, bool) or not isinstance(data, int):
            raise TypeError(f"fm.fold_in: data must be an int, got {type(data).__name__}")
        if not 0 <= data < 2**32:
            raise ValueError(f"fm.fold_in: data must be in [0, 2**32), got {data}")
        if torch.compiler.is_compiling() and k.device.type == "cpu":
            # One opaque call (``_ops.py``), not ten traced Philox rounds: inductor would
            # generate a C++ kernel of them for every layer key (a second of g++ each).
            # Off the CPU the rounds stay traced (fused, no read of the key to the host).
            return torch.ops.funcmodels.fold_in.default(k, data)
        if is_plain(k) and k.device.type == "cpu":
            k0, k1 = k.tolist()
            # From a numpy array: a third of torch.tensor's cost for two Python ints, and
            # every layer's key comes through here.
            words = np.array(_philox_py(k0, k1, data, _STREAM_FOLD)[:2], dtype=np.int64)
            return torch.from_numpy(words)
        d = torch.tensor(data, dtype=torch.int64, device=k.device)
    if k.device.type == "meta" and is_plain(k):
        return torch.empty(2, dtype=torch.int64, device="meta")
    stream = torch.tensor(_STREAM_FOLD, dtype=torch.int64, device=k.device)
    return _philox_functional(k[0], k[1], d, stream)[..., :2]
