"""Randomness for data: permutations, choices, categorical draws and shuffled batches."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch

from ._philox import Shape, _numel, bits, check_key
from ._samplers import gumbel, randint, uniform


def _sort_keys(k: torch.Tensor, n: int, device) -> torch.Tensor:
    """``n`` random 63-bit sort keys (two 32-bit words each): ties are rare enough
    (``n**2 / 2**64``) that the stable sort's tie rule does not bias the permutation."""
    w = bits(k, (n, 2), device=device)
    return (w[:, 0] << 31) | (w[:, 1] >> 1)


def permutation(
    k: torch.Tensor, x: int | torch.Tensor, *, dim: int = 0, device=None
) -> torch.Tensor:
    """A random permutation of ``range(x)``, or of ``x`` along ``dim``.

    Arguments:
        k: a key.
        x: an int ``n`` (permute ``range(n)``) or a tensor (permute its slices along
            ``dim``).
        dim: the dim of ``x`` to shuffle.
        device (torch.device | str | None): for an int ``x``, where the result goes
            (default the key's device).

    Returns:
        ``(n,)`` int64 indices, or ``x`` with its slices along ``dim`` reordered. The order
            comes from integer draws only, so it is the same on every device and under
            ``vmap`` over keys.

    Raises:
        TypeError: ``x`` is neither a non-negative int nor a tensor.
        ValueError: ``x`` is a 0-d tensor.
    """
    check_key(k, "fm.random.permutation")
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            raise ValueError("fm.random.permutation: x must have at least one dim, got a scalar")
        n = x.shape[dim]
        order = torch.argsort(_sort_keys(k, n, x.device), stable=True)
        return x.index_select(dim, order)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0:
        raise TypeError(
            f"fm.random.permutation: x must be a non-negative int or a tensor, got {x!r}"
        )
    return torch.argsort(_sort_keys(k, int(x), device), stable=True)


def _check_p(p: torch.Tensor, n: int, where: str) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or not p.dtype.is_floating_point or p.dim() != 1:
        raise TypeError(f"{where}: p must be a 1-d floating tensor of probabilities")
    if p.shape[0] != n:
        raise ValueError(f"{where}: p has {p.shape[0]} entries, expected {n} (one per choice)")
    return p


def choice(
    k: torch.Tensor,
    a: int | torch.Tensor,
    shape: Shape = (),
    *,
    replace: bool = True,
    p: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Random picks from ``range(a)`` or from the rows (dim 0) of ``a``.

    Arguments:
        k: a key.
        a: an int ``n`` or a tensor whose dim-0 slices are the choices.
        shape: the shape of the picks.
        replace: with replacement (independent picks) or without (distinct picks; the
            number of picks must not exceed ``n``).
        p: optional ``(n,)`` probabilities (non-negative; normalised here).
        device (torch.device | str | None): for an int ``a``, where the result goes
            (default the key's device).

    Returns:
        int64 indices of ``shape`` for an int ``a``; else ``a``'s rows at those indices,
            of shape ``(*shape, *a.shape[1:])``. Without ``p`` the indices come from integer
            draws (the same on every device); with ``p`` from floats (Gumbel top-k without
            replacement, the inverse CDF with it), equal across devices up to rounding.

    Raises:
        TypeError: ``a`` is neither a positive int nor a tensor, ``replace`` not a bool, or ``p``
            not a 1-d floating tensor.
        ValueError: ``a`` is a 0-d tensor, more distinct picks than choices, or ``p`` of the wrong
            length.
    """
    where = "fm.random.choice"
    check_key(k, where)
    if isinstance(a, torch.Tensor):
        if a.dim() == 0:
            raise ValueError(f"{where}: a must have at least one dim, got a scalar")
        n, device = a.shape[0], a.device
    elif isinstance(a, bool) or not isinstance(a, numbers.Integral) or a < 1:
        raise TypeError(f"{where}: a must be a positive int or a tensor, got {a!r}")
    else:
        n = int(a)
    shape, m = _numel(shape, where)
    if not isinstance(replace, bool):
        raise TypeError(f"{where}: replace must be a bool, got {replace!r}")
    if not replace and m > n:
        raise ValueError(f"{where}: cannot take {m} distinct picks from {n} choices")
    if p is None:
        if replace:
            idx = randint(k, shape, 0, n, device=device)
        else:
            idx = permutation(k, n, device=device)[:m].reshape(shape)
    else:
        p = _check_p(p, n, where)
        if replace:
            cdf = torch.cumsum(p.to(torch.float64), 0)
            u = uniform(k, (m,), torch.float64, p.device) * cdf[-1]
            idx = torch.searchsorted(cdf, u, right=True).clamp(max=n - 1).reshape(shape)
        else:
            scores = torch.log(p.to(torch.float64)) + gumbel(k, (n,), torch.float64, p.device)
            idx = torch.topk(scores, m).indices.reshape(shape)
    if isinstance(a, torch.Tensor):
        return a[idx]
    return idx


def categorical(
    k: torch.Tensor, logits: torch.Tensor, *, dim: int = -1, shape: Shape | None = None
) -> torch.Tensor:
    """Draws from ``softmax(logits)`` along ``dim`` (the Gumbel-max trick).

    Arguments:
        k: a key.
        logits: unnormalised log-probabilities; ``-inf`` excludes a category.
        dim: the categories' dim.
        shape: the batch shape of the draws (default ``logits``' shape without ``dim``);
            ``logits`` without ``dim`` must broadcast to it.

    Returns:
        int64 category indices of ``shape``.

    Raises:
        TypeError: ``logits`` is not a floating tensor.
        ValueError: ``logits`` is 0-d.
    """
    where = "fm.random.categorical"
    check_key(k, where)
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"{where}: logits must be a floating tensor")
    if logits.dim() == 0:
        raise ValueError(f"{where}: logits must have a categories dim, got a scalar")
    moved = logits.movedim(dim, -1)
    batch = tuple(moved.shape[:-1]) if shape is None else _numel(shape, where)[0]
    full = (*batch, moved.shape[-1])
    noise = gumbel(k, full, moved.dtype, moved.device)
    return torch.argmax(moved + noise, dim=-1)


def batches(
    k: torch.Tensor,
    *arrays: torch.Tensor,
    batch_size: int,
    drop_last: bool = True,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffle ``arrays`` together (along dim 0) with ``k`` and yield them in batches.

    Arguments:
        k: a key; one key per epoch, e.g. ``fm.fold_in(key, epoch)``.
        arrays: tensors with the same size of dim 0.
        batch_size: examples per batch.
        drop_last: drop the last, smaller batch (every step then has the same batch size,
            which DP-SGD's noise scale and compiled steps want).

    Yields:
        tuples of ``len(arrays)`` tensors of ``batch_size`` examples each.

    Raises:
        TypeError: no arrays, or one that is not a tensor with a batch dim.
        ValueError: arrays of different sizes, or ``batch_size`` not a positive int.

    Example:
        ```python
        x, y = torch.arange(10.0), torch.arange(10)
        sizes = [len(bx) for bx, by in fm.random.batches(fm.key(0), x, y, batch_size=4)]
        assert sizes == [4, 4]
        ```
    """
    where = "fm.random.batches"
    if not arrays or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in arrays):
        raise TypeError(f"{where}: expected one or more tensors with a batch dim")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        sizes = [a.shape[0] for a in arrays]
        raise ValueError(f"{where}: the arrays have different sizes of dim 0: {sizes}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive int, got {batch_size!r}")
    order = permutation(k, n, device=arrays[0].device)
    stop = n - batch_size + 1 if drop_last else n
    for start in range(0, max(stop, 0), batch_size):
        idx = order[start : start + batch_size]
        yield tuple(a[idx] for a in arrays)
