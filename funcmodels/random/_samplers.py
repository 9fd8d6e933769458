"""Samplers of continuous and Bernoulli/integer values, made from Philox words."""

from __future__ import annotations

import math

import torch

from ._host import uniform_host
from ._masks import keep_mask, scaled_keep_mask  # noqa: F401 (dropout's masks live there)
from ._philox import Shape, _draw, _numel, check_key, is_plain


def _float_dtype(dtype: torch.dtype, where: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{where}: dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _precision(dtype: torch.dtype) -> int:
    """Significand bits of a floating dtype: 53, 24, 11 (float16) or 8 (bfloat16)."""
    return 1 - int(math.log2(torch.finfo(dtype).eps))


def _lattice(p: int):
    """``(group, convert)`` for :func:`_draw`: uniform integers in ``[0, 2**p)``, ``p <= 53``."""
    if p > 32:
        hi_bits, lo_bits = p - p // 2, p // 2

        def convert(w):
            pairs = w.view(-1, 2)
            return (pairs[:, 0] >> (32 - hi_bits)) * (1 << lo_bits) + (
                pairs[:, 1] >> (32 - lo_bits)
            )

        return 2, convert
    # In place: the words are the generator's own fresh buffer, used once.
    return 1, lambda w: w.bitwise_right_shift_(32 - p)


def _work(dtype: torch.dtype) -> torch.dtype:
    """Dtype the float samples are computed in: float64 stays, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _symmetric(work: torch.dtype, then):
    """``(group, convert)``: ``then(s)`` of uniform ``s`` in the open interval ``(-1, 1)``.

    ``s = m * 2**-p`` for odd ``|m| < 2**p``, built in integers so that every point is exact
    in ``work`` (a float ``(u + eps/2) * 2 - 1`` rounds the top point to 1, where
    ``erfinv`` is infinite).
    """
    p = _precision(work)
    group, lattice = _lattice(p)
    offset = 1 - (1 << p)
    return group, lambda w: then((2 * lattice(w) + offset).to(work) * 2.0**-p)


# The bounds are Python numbers, so under torch.compile this is a trace-time constant (a
# tensor's .item() would otherwise break the graph).
@torch.compiler.assume_constant_result
def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value``, as a Python float."""
    t = torch.tensor(value, dtype=dtype)
    return t.nextafter(torch.tensor(-math.inf, dtype=dtype)).item()


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

    The default ``[0, 1)`` draws are exact multiples of ``2**-p``, ``p`` the precision of
    ``dtype`` (24 for float32, 53 for float64, 11 for float16, 8 for bfloat16), so they are
    identical on every device and never round up to 1. Other intervals are computed in
    float32 (float64 for ``dtype=torch.float64``), cast to ``dtype`` and kept below
    ``maxval``.

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        shape: the shape of the result, an int or a sequence of ints.
        dtype: a floating dtype.
        device (torch.device | str | None): where the result goes (default the key's
            device).
        minval: the lower bound, included.
        maxval: the upper bound, excluded.

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, ``dtype`` not floating, or ``shape`` not ints.
        ValueError: ``minval >= maxval`` (with a non-empty ``shape``), or a negative size.

    Example:
        ```python
        u = fm.random.uniform(fm.key(0), (2, 3), minval=-1.0, maxval=1.0)
        assert u.shape == (2, 3) and bool(((u >= -1) & (u < 1)).all())
        ```
    """
    check_key(k, "fm.random.uniform")
    _float_dtype(dtype, "fm.random.uniform")
    shape, n = _numel(shape, "fm.random.uniform")
    if n and not minval < maxval:
        raise ValueError(f"fm.random.uniform: need minval < maxval, got {minval}, {maxval}")
    work = _work(dtype)
    default = minval == 0.0 and maxval == 1.0
    p = _precision(dtype if default else work)
    group, lattice = _lattice(p)
    # m * 2**-p is exact, so scaling by (maxval - minval) * 2**-p in one multiply
    # rounds exactly as (m * 2**-p) * (maxval - minval) does.
    scale = 2.0**-p if default else (maxval - minval) * 2.0**-p
    # Rounding (in the product or the cast) can land on maxval: clamp below it.
    top = None if default else _below(float(maxval), dtype)
    if dtype == torch.float32:
        host = uniform_host(k, n, 32 - p, scale, None if default else (minval, top), device)
        if host is not None:
            return host.reshape(shape)
    if default:
        convert = lambda w: lattice(w).to(work).mul_(scale).to(dtype)
    else:
        convert = lambda w: lattice(w).to(work).mul_(scale).add_(minval).to(dtype).clamp_(max=top)
    return _draw(k, n, group, convert, device).reshape(shape)


def normal(
    k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """Standard normal floats, by the inverse CDF ``sqrt(2) * erfinv(u)``, ``u`` in (-1, 1).

    Computed in float32 (float64 for ``dtype=torch.float64``) and cast to ``dtype``; always
    finite.

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        shape: the shape of the result, an int or a sequence of ints.
        dtype: a floating dtype.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, ``dtype`` not floating, or ``shape`` not ints.
        ValueError: a negative size in ``shape``.
    """
    check_key(k, "fm.random.normal")
    _float_dtype(dtype, "fm.random.normal")
    shape, n = _numel(shape, "fm.random.normal")
    group, convert = _symmetric(
        _work(dtype), lambda s: (math.sqrt(2.0) * torch.erfinv(s)).to(dtype)
    )
    return _draw(k, n, group, convert, device).reshape(shape)


def truncated_normal(
    k: torch.Tensor,
    lower: float,
    upper: float,
    shape: Shape = (),
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Standard normal floats truncated to ``[lower, upper]``, by the inverse CDF.

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        lower: the lower bound.
        upper: the upper bound, above ``lower``.
        shape: the shape of the result, an int or a sequence of ints.
        dtype: a floating dtype.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        A tensor of ``shape`` and ``dtype``, values in ``[lower, upper]``.

    Raises:
        TypeError: ``k`` is not a key, ``dtype`` not floating, or ``shape`` not ints.
        ValueError: ``lower >= upper``, or a negative size.
    """
    check_key(k, "fm.random.truncated_normal")
    _float_dtype(dtype, "fm.random.truncated_normal")
    if not lower < upper:
        raise ValueError(f"fm.random.truncated_normal: need lower < upper, got {lower}, {upper}")
    shape, n = _numel(shape, "fm.random.truncated_normal")
    a = math.erf(lower / math.sqrt(2.0))
    b = math.erf(upper / math.sqrt(2.0))
    group, convert = _symmetric(
        _work(dtype),
        lambda s: (
            (math.sqrt(2.0) * torch.erfinv((a + b) / 2 + (b - a) / 2 * s))
            .clamp(lower, upper)
            .to(dtype)
        ),
    )
    return _draw(k, n, group, convert, device).reshape(shape)


def bernoulli(
    k: torch.Tensor,
    p: float | torch.Tensor = 0.5,
    shape: Shape | None = None,
    device=None,
) -> torch.Tensor:
    """Boolean draws, ``True`` with probability ``p``.

    Arguments:
        k: a key.
        p: a probability in ``[0, 1]``, or a floating tensor of them (one per draw).
        shape: shape of the result (default ``p``'s shape); a tensor ``p`` must broadcast
            to it.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        ``bool`` tensor of ``shape``. ``p`` is resolved to a multiple of ``2**-32``: a draw
            is ``True`` when its 32-bit word is below ``round(p * 2**32)``.

    Raises:
        TypeError: ``k`` is not a key, or ``p`` neither a float nor a floating tensor.
        ValueError: ``p`` outside ``[0, 1]``, or a tensor ``p`` that does not broadcast to
            ``shape``.
    """
    check_key(k, "fm.random.bernoulli")
    where = "fm.random.bernoulli"
    if isinstance(p, torch.Tensor):
        if not p.dtype.is_floating_point:
            raise TypeError(f"{where}: p must be a floating tensor, got {p.dtype}")
        if is_plain(p) and not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(
                f"{where}: p must be in [0, 1], got values in [{p.min().item()}, {p.max().item()}]"
            )
        shape, n = _numel(tuple(p.shape) if shape is None else shape, where)
        try:
            fits = torch.broadcast_shapes(p.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{where}: p of shape {tuple(p.shape)} does not broadcast to shape {shape}"
            )
        threshold = (p.to(torch.float64) * 2.0**32).round().to(torch.int64)
    else:
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"{where}: p must be a float or a tensor, got {type(p).__name__}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{where}: p must be in [0, 1], got {p}")
        shape, n = _numel(() if shape is None else shape, where)
        threshold = round(p * 2.0**32)
    if isinstance(threshold, int):
        return _draw(k, n, 1, lambda w: w < threshold, device).reshape(shape)
    return _draw(k, n, 1, lambda w: w, device).reshape(shape) < threshold


def randint(
    k: torch.Tensor,
    shape: Shape,
    minval: int,
    maxval: int,
    dtype: torch.dtype = torch.int64,
    device=None,
) -> torch.Tensor:
    """Integers in ``[minval, maxval)``, from 64 random bits each (bias below 2**-32).

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        shape: the shape of the result, an int or a sequence of ints.
        minval: the lower bound, included.
        maxval: the upper bound, excluded; at most ``minval + 2**31``.
        dtype: an integer dtype that holds the range.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, ``dtype`` not an integer dtype, or a bound not an
            int.
        ValueError: an empty range, one wider than ``2**31``, or one ``dtype`` cannot hold.
    """
    check_key(k, "fm.random.randint")
    where = "fm.random.randint"
    integer = isinstance(dtype, torch.dtype) and not (
        dtype.is_floating_point or dtype.is_complex or dtype == torch.bool
    )
    if not integer:
        raise TypeError(f"{where}: dtype must be an integer dtype, got {dtype!r}")
    for name, v in (("minval", minval), ("maxval", maxval)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{where}: {name} must be an int, got {type(v).__name__} {v!r}")
    span = maxval - minval
    if not 0 < span <= 2**31:
        raise ValueError(
            f"{where}: need minval < maxval <= minval + 2**31, got [{minval}, {maxval})"
        )
    info = torch.iinfo(dtype)
    if minval < info.min or maxval - 1 > info.max:
        raise ValueError(f"{where}: [{minval}, {maxval}) does not fit in {dtype}")
    shape, n = _numel(shape, where)

    def convert(w):
        hi, lo = w.view(-1, 2).unbind(1)
        # (hi * 2**32 + lo) mod span, without overflowing int64 (all factors are below 2**31).
        r = ((hi % span) * ((1 << 32) % span) + lo % span) % span
        return (r + minval).to(dtype)

    return _draw(k, n, 2, convert, device).reshape(shape)


def gumbel(
    k: torch.Tensor, shape: Shape = (), dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """Standard Gumbel floats, ``-log(-log(u))`` for uniform ``u`` in the open ``(0, 1)``.

    Computed in float32 (float64 for ``dtype=torch.float64``) from the centred lattice of
    :func:`normal` (so never infinite) and cast to ``dtype``. Adding them to logits and
    taking the argmax draws from the softmax (the Gumbel-max trick of :func:`categorical`).

    Arguments:
        k: a key, an ``int64`` tensor of shape ``(2,)`` (see :func:`key`).
        shape: the shape of the result, an int or a sequence of ints.
        dtype: a floating dtype.
        device (torch.device | str | None): where the result goes (default the key's
            device).

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, ``dtype`` not floating, or ``shape`` not ints.
        ValueError: a negative size in ``shape``.
    """
    check_key(k, "fm.random.gumbel")
    _float_dtype(dtype, "fm.random.gumbel")
    shape, n = _numel(shape, "fm.random.gumbel")
    work = _work(dtype)
    # (s + 1) / 2 of s in (-1, 1) can round up to 1 in float32: keep it below.
    top = 1.0 - torch.finfo(work).eps / 2
    group, convert = _symmetric(
        work, lambda s: (-torch.log(-torch.log(((s + 1) * 0.5).clamp(max=top)))).to(dtype)
    )
    return _draw(k, n, group, convert, device).reshape(shape)
