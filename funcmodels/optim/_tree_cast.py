"""optax.tree's dtype and randomness helpers over torch pytrees: casting, a tree's dtype,
keys split along a tree and random trees (with :mod:`funcmodels.random`'s keys and
samplers)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from .. import random as fm_random


def cast_like(tree: Any, other_tree: Any) -> Any:
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``other_tree``
    (leaves of ``other_tree`` without a dtype leave theirs unchanged).

    Arguments:
        tree: the tree to cast.
        other_tree: a tree of the same structure giving the dtypes.

    Returns:
        A tree like ``tree``.
    """
    return pytree.tree_map(
        lambda t, o: t.to(o.dtype) if hasattr(o, "dtype") else t, tree, other_tree
    )


def cast(tree: Any, dtype: torch.dtype | None) -> Any:
    """Cast every leaf to ``dtype``; ``None`` returns ``tree`` itself.

    Arguments:
        tree: the tree to cast.
        dtype: a torch dtype, or ``None``.

    Returns:
        A tree like ``tree``.

    Raises:
        TypeError: if ``dtype`` is neither a torch dtype nor ``None``.
    """
    if dtype is None:
        return tree
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"fm.optim.tree.cast: dtype must be a torch.dtype or None, got {dtype!r}")
    return pytree.tree_map(lambda t: t.to(dtype), tree)


def _lower(d1: torch.dtype, d2: torch.dtype) -> torch.dtype:
    promoted = torch.promote_types(d1, d2)
    if promoted == d1:
        return d2
    if promoted == d2:
        return d1
    raise ValueError(
        f"fm.optim.tree.dtype: cannot order {d1} and {d2}: neither promotes to the other"
    )


def _higher(d1: torch.dtype, d2: torch.dtype) -> torch.dtype:
    return d2 if _lower(d1, d2) == d1 else d1


def dtype(tree: Any, mixed_dtype_handler: str | None = None) -> torch.dtype:
    """The dtype of a tree's leaves.

    Arguments:
        tree: a tree of tensors (numbers count as the tensors they make).
        mixed_dtype_handler: ``None``: all leaves must share one dtype; ``"promote"``: the
            promotion of the leaves' dtypes; ``"highest"``/``"lowest"``: the highest/lowest
            dtype, ``d1 <= d2`` when ``d1`` promotes to ``d2``.

    Returns:
        A torch dtype; torch's default dtype for a tree without leaves.

    Raises:
        ValueError: if ``mixed_dtype_handler`` is ``None`` and the dtypes differ (naming the
            paths), if ``"highest"``/``"lowest"`` meets two dtypes neither of which promotes
            to the other, or for another ``mixed_dtype_handler``.
    """
    with_path = pytree.tree_flatten_with_path(tree)[0]
    dtypes = [torch.as_tensor(x).dtype for _, x in with_path]
    if not dtypes:
        return torch.get_default_dtype()
    if mixed_dtype_handler is None:
        wrong = [
            f"expected dtype={dtypes[0]} for {pytree.keystr(p)} but got {d}"
            for (p, _), d in zip(with_path, dtypes, strict=True)
            if d != dtypes[0]
        ]
        if wrong:
            raise ValueError("fm.optim.tree.dtype: " + "; ".join(wrong))
        return dtypes[0]
    reducers = {"promote": torch.promote_types, "highest": _higher, "lowest": _lower}
    if mixed_dtype_handler not in reducers:
        raise ValueError(
            "fm.optim.tree.dtype: mixed_dtype_handler must be None, 'promote', 'highest' or "
            f"'lowest', got {mixed_dtype_handler!r}"
        )
    return functools.reduce(reducers[mixed_dtype_handler], dtypes)


def split_key_like(rng_key: torch.Tensor, target_tree: Any) -> Any:
    """Split a key into one key per leaf of ``target_tree``.

    Arguments:
        rng_key: a :mod:`funcmodels.random` key (an ``int64`` tensor of shape ``(2,)``).
        target_tree: the tree whose structure to take.

    Returns:
        A tree of the structure of ``target_tree`` whose leaves are keys, shape ``(2,)``.
    """
    leaves, spec = pytree.tree_flatten(target_tree)
    rng_key = fm_random.check_key(rng_key, "fm.optim.tree.split_key_like: rng_key")
    keys = list(fm_random.split(rng_key, len(leaves))) if leaves else []
    return pytree.tree_unflatten(keys, spec)


def random_like(
    rng_key: torch.Tensor,
    target_tree: Any,
    sampler: Callable[..., torch.Tensor] = fm_random.normal,
    dtype: torch.dtype | None = None,
) -> Any:
    """A tree of random tensors of the shapes of ``target_tree``'s leaves, each leaf drawn
    from its own key (:func:`split_key_like`).

    Arguments:
        rng_key: a :mod:`funcmodels.random` key.
        target_tree: the tree whose structure and shapes to take; leaves are tensors.
        sampler: called as ``sampler(key, shape, dtype)``, e.g. :func:`funcmodels.random.normal`
            or :func:`funcmodels.random.uniform`.
        dtype: the dtype passed to ``sampler``; ``None``: each leaf's own.

    Returns:
        A tree like ``target_tree``, each leaf on its leaf's device.
    """
    keys = split_key_like(rng_key, target_tree)
    return pytree.tree_map(
        lambda leaf, k: sampler(k, tuple(leaf.shape), dtype or leaf.dtype).to(leaf.device),
        target_tree,
        keys,
    )


def unwrap_random_key_data(input_tree: Any) -> Any:
    """The tree with its keys as plain data. :mod:`funcmodels.random`'s keys are already
    plain ``int64`` tensors (JAX's typed keys are what optax unwraps), so the leaves come
    back as they are.

    Arguments:
        input_tree: a tree of tensors and keys.

    Returns:
        A tree of the same structure and leaves.
    """
    return pytree.tree_map(lambda x: x, input_tree)
