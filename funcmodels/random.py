"""Counter-based pseudo-random numbers from explicit keys.

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

import torch

__all__ = [
    "key",
    "split",
    "fold_in",
    "bits",
    "uniform",
    "normal",
    "truncated_normal",
    "bernoulli",
    "randint",
    "check_key",
]

_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
# Counter word 1 separates the streams drawn from one key, so that splitting, folding in
# and sampling never reuse a counter.
_STREAM_BITS, _STREAM_SPLIT, _STREAM_FOLD = 0, 1, 2
# Chunk of counters processed at a time on the eager fast path: four int64 lanes of this
# length stay in the L2 cache, which makes the generator several times faster.
_CHUNK = 1 << 17

Shape = int | Sequence[int] | torch.Size


def key(seed: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Make a PRNG key from an integer seed.

    Arguments:
        seed: any Python integer in ``[-2**63, 2**64)``; its 64 bits become the key.
        device: where the key lives (default CPU).

    Returns:
        ``int64`` tensor of shape ``(2,)``.
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


def _plain(t: torch.Tensor) -> bool:
    """True for an ordinary eager tensor (not under vmap/grad wrappers or compilation)."""
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


def _philox_inplace(k0, k1, c0, c1, out):
    """Same as :func:`_philox_functional`, writing into ``out`` (shape ``(n, 4)``) in place."""
    c1 = c1.expand_as(c0).clone()
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    p0 = torch.empty_like(c0)
    p1 = torch.empty_like(c0)
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        torch.mul(c0, _M0, out=p0)
        torch.mul(c2, _M1, out=p1)
        torch.bitwise_right_shift(p1, 32, out=c0)
        c0.bitwise_and_(_MASK).bitwise_xor_(c1).bitwise_xor_(k0)
        torch.bitwise_right_shift(p0, 32, out=c2)
        c2.bitwise_and_(_MASK).bitwise_xor_(c3).bitwise_xor_(k1)
        torch.bitwise_and(p1, _MASK, out=c1)
        torch.bitwise_and(p0, _MASK, out=c3)
    torch.stack((c0, c1, c2, c3), dim=-1, out=out)


def _blocks(k: torch.Tensor, stream: int, n_blocks: int, device=None) -> torch.Tensor:
    """``n_blocks`` Philox outputs of four 32-bit words for counters ``(i, stream)``.

    Returns an ``int64`` tensor of shape ``(n_blocks, 4)`` with values in ``[0, 2**32)``.
    """
    device = k.device if device is None else torch.device(device)
    k = k.to(device)
    k0, k1 = k[0], k[1]
    stream_t = torch.tensor(stream, dtype=torch.int64, device=device)
    if not _plain(k) or n_blocks <= _CHUNK // 8:
        c0 = torch.arange(n_blocks, dtype=torch.int64, device=device)
        return _philox_functional(k0, k1, c0, stream_t)
    out = torch.empty(n_blocks, 4, dtype=torch.int64, device=device)
    chunk = _CHUNK if device.type == "cpu" else n_blocks
    for start in range(0, n_blocks, chunk):
        stop = min(n_blocks, start + chunk)
        c0 = torch.arange(start, stop, dtype=torch.int64, device=device)
        _philox_inplace(k0, k1, c0, stream_t, out[start:stop])
    return out


def _numel(shape: Shape) -> tuple[tuple[int, ...], int]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"random: shape must be non-negative ints, got {shape}")
    return shape, math.prod(shape)


def bits(k: torch.Tensor, shape: Shape, *, device=None) -> torch.Tensor:
    """Uniform random 32-bit words.

    Returns:
        ``int64`` tensor of ``shape`` with values in ``[0, 2**32)``.
    """
    check_key(k, "fm.random.bits")
    shape, n = _numel(shape)
    words = _blocks(k, _STREAM_BITS, (n + 3) // 4, device).reshape(-1)
    return words[:n].reshape(shape)


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """Split a key into ``num`` new, independent keys.

    Returns:
        ``int64`` tensor of shape ``(num, 2)``; ``k1, k2 = fm.split(key)`` unpacks it.
    """
    check_key(k, "fm.split")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"fm.split(key, num): num must be a positive int, got {num!r}")
    if _plain(k) and k.device.type == "cpu" and num <= 64:
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
        a new key, independent of ``k``'s other derived keys.
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
        if _plain(k) and k.device.type == "cpu":
            k0, k1 = k.tolist()
            return torch.tensor(_philox_py(k0, k1, data, _STREAM_FOLD)[:2], dtype=torch.int64)
        d = torch.tensor(data, dtype=torch.int64, device=k.device)
    stream = torch.tensor(_STREAM_FOLD, dtype=torch.int64, device=k.device)
    return _philox_functional(k[0], k[1], d, stream)[..., :2]


def _float_dtype(dtype: torch.dtype, where: str) -> torch.dtype:
    if not dtype.is_floating_point:
        raise TypeError(f"{where}: dtype must be a floating dtype, got {dtype}")
    return dtype


def _unit(k: torch.Tensor, shape: tuple[int, ...], n: int, dtype, device) -> torch.Tensor:
    """Uniform floats in ``[0, 1)``, exact multiples of 2**-24 (2**-53 for float64)."""
    if dtype == torch.float64:
        w = _blocks(k, _STREAM_BITS, (2 * n + 3) // 4, device).reshape(-1)[: 2 * n]
        hi, lo = w[0::2] >> 5, w[1::2] >> 6  # 27 + 26 = 53 bits
        u = (hi * (1 << 26) + lo).to(torch.float64) * 2.0**-53
    else:
        w = _blocks(k, _STREAM_BITS, (n + 3) // 4, device).reshape(-1)[:n]
        u = (w >> 8).to(torch.float32) * 2.0**-24
    return u.reshape(shape)


def uniform(
    k: torch.Tensor,
    shape: Shape = (),
    dtype: torch.dtype = torch.float32,
    device=None,
    *,
    minval: float = 0.0,
    maxval: float = 1.0,
) -> torch.Tensor:
    """Uniform floats in ``[minval, maxval)``.

    Computed in float32 (float64 for ``dtype=torch.float64``) and cast to ``dtype``; the
    default ``[0, 1)`` draws are exact multiples of ``2**-24`` and identical on every device.
    """
    check_key(k, "fm.random.uniform")
    _float_dtype(dtype, "fm.random.uniform")
    shape, n = _numel(shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = _unit(k, shape, n, work, device)
    if minval != 0.0 or maxval != 1.0:
        u = u * (maxval - minval) + minval
        # Rounding can land on maxval; keep the interval half-open.
        u = torch.minimum(u, torch.tensor(maxval, dtype=work).nextafter(torch.tensor(-math.inf)))
    return u.to(dtype)


def normal(k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32, device=None):
    """Standard normal floats, by the inverse CDF: ``sqrt(2) * erfinv(u)``, ``u`` in (-1, 1)."""
    check_key(k, "fm.random.normal")
    _float_dtype(dtype, "fm.random.normal")
    shape, n = _numel(shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = _unit(k, shape, n, work, device)
    eps = 2.0**-53 if work == torch.float64 else 2.0**-24
    u = (u + eps / 2) * 2 - 1  # centre each lattice point so -1 and 1 are never reached
    return (math.sqrt(2.0) * torch.erfinv(u)).to(dtype)


def truncated_normal(
    k: torch.Tensor,
    lower: float,
    upper: float,
    shape: Shape = (),
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Standard normal floats truncated to ``[lower, upper]``, by the inverse CDF."""
    check_key(k, "fm.random.truncated_normal")
    _float_dtype(dtype, "fm.random.truncated_normal")
    if not lower < upper:
        raise ValueError(f"fm.random.truncated_normal: need lower < upper, got {lower}, {upper}")
    shape, n = _numel(shape)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a = math.erf(lower / math.sqrt(2.0))
    b = math.erf(upper / math.sqrt(2.0))
    u = _unit(k, shape, n, work, device)
    eps = 2.0**-53 if work == torch.float64 else 2.0**-24
    u = a + (b - a) * (u + eps / 2)
    x = math.sqrt(2.0) * torch.erfinv(u)
    return x.clamp(lower, upper).to(dtype)


def bernoulli(
    k: torch.Tensor, p: float | torch.Tensor = 0.5, shape: Shape = (), device=None
) -> torch.Tensor:
    """Boolean draws, ``True`` with probability ``p``.

    ``p`` is resolved to a multiple of ``2**-32``: a draw is ``True`` when its 32-bit word is
    below ``round(p * 2**32)``.
    """
    check_key(k, "fm.random.bernoulli")
    if not isinstance(p, torch.Tensor) and not 0.0 <= p <= 1.0:
        raise ValueError(f"fm.random.bernoulli: p must be in [0, 1], got {p}")
    shape, n = _numel(shape)
    words = _blocks(k, _STREAM_BITS, (n + 3) // 4, device).reshape(-1)[:n].reshape(shape)
    if isinstance(p, torch.Tensor):
        threshold = (p.to(torch.float64) * 2.0**32).round().to(torch.int64)
    else:
        threshold = round(p * 2.0**32)
    return words < threshold


def randint(
    k: torch.Tensor,
    shape: Shape,
    minval: int,
    maxval: int,
    dtype: torch.dtype = torch.int64,
    device=None,
) -> torch.Tensor:
    """Integers in ``[minval, maxval)``, from 64 random bits each (bias below 2**-32)."""
    check_key(k, "fm.random.randint")
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"fm.random.randint: dtype must be an integer dtype, got {dtype}")
    span = maxval - minval
    if not 0 < span <= 2**31:
        raise ValueError(
            f"fm.random.randint: need minval < maxval <= minval + 2**31, got [{minval}, {maxval})"
        )
    shape, n = _numel(shape)
    w = _blocks(k, _STREAM_BITS, (2 * n + 3) // 4, device).reshape(-1)[: 2 * n]
    hi, lo = w[0::2], w[1::2]
    # (hi * 2**32 + lo) mod span, without overflowing int64 (all factors are below 2**31).
    r = ((hi % span) * ((1 << 32) % span) + lo % span) % span
    return (r + minval).to(dtype).reshape(shape)
