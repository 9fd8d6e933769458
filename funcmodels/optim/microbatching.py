"""optax's ``microbatching``: :func:`microbatch`, a microbatched ``vmap``
(:func:`micro_vmap`) and per-example gradients summed over microbatches
(:func:`micro_grad`), over ``torch.func.vmap`` and ``torch.func.grad_and_value``.

``Accumulator``, ``AccumulationType`` and ``microbatch`` are the objects of
``fm.optim`` itself. Microbatch ``i`` of ``n`` holds the rows ``i, i + n, i + 2n, ...``
(optax's column-major split, :func:`reshape_batch_axis`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from ._microbatch import AccumulationType, Accumulator, _canonical, microbatch

__all__ = [
    "AccumulationType",
    "Accumulator",
    "micro_grad",
    "micro_vmap",
    "microbatch",
    "reshape_batch_axis",
]


class IndividualOutputs(NamedTuple):
    """The per-example outputs of :func:`micro_grad`'s function (optax's), each with the
    batch on dim 0."""

    values: Any
    """the function's value for each example"""
    metrics: Any
    """``metrics_fn`` of each example's gradient"""
    aux: Any
    """the function's auxiliary output for each example (``None`` without ``has_aux``)"""


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Each leaf's batch axis split into ``(num_microbatches, microbatch_size)`` at the
    same place, in column-major order (optax's): new ``[i, j]`` is old ``i + j * n``, so
    ``[i]`` is microbatch ``i`` of :func:`microbatch`.

    Arguments:
        tree: a pytree of tensors, each with a batch axis ``axis`` of size ``B``.
        microbatch_size: rows per microbatch, dividing ``B``.
        axis: the batch axis (non-negative).

    Returns:
        The tree with each leaf of shape ``(..., B, ...)`` as ``(..., B // microbatch_size,
            microbatch_size, ...)`` (views of the leaves).

    Raises:
        ValueError: a negative axis, a leaf without that axis, or a batch size that
            ``microbatch_size`` does not divide.
    """
    where = "fm.optim.microbatching.reshape_batch_axis"
    if axis < 0:
        raise ValueError(f"{where}: axis must be non-negative, got {axis}")

    def leaf(x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= axis or x.shape[axis] % microbatch_size:
            raise ValueError(
                f"{where}: expected a batch axis {axis} divisible by "
                f"microbatch_size={microbatch_size}, got a leaf of shape {tuple(x.shape)}"
            )
        return x.unflatten(axis, (microbatch_size, -1)).transpose(axis, axis + 1)

    return pytree.tree_map(leaf, tree)


def _tensors_only(fun: Callable[..., Any], shape: list[Any]) -> Callable[..., Any]:
    """``fun`` taking its keyword arguments as a last positional dict (which optax maps on
    dim 0; torch's vmap would not map keyword arguments) and returning its output's
    tensors, the output's structure and ``None`` places put in ``shape`` (torch's vmap
    refuses ``None`` outputs, optax's ``micro_grad`` gives them without ``metrics_fn``)."""

    def run(*args: Any) -> tuple[torch.Tensor, ...]:
        leaves, spec = pytree.tree_flatten(fun(*args[:-1], **args[-1]), is_leaf=_is_none)
        shape[:] = [spec, [leaf is None for leaf in leaves]]
        return tuple(leaf for leaf in leaves if leaf is not None)

    return run


def _is_none(x: Any) -> bool:
    return x is None


def _with_nones(tensors: tuple[torch.Tensor, ...], shape: list[Any]) -> Any:
    spec, nones = shape
    it = iter(tensors)
    return pytree.tree_unflatten([None if none else next(it) for none in nones], spec)


def micro_vmap(
    fun: Callable[..., Any],
    in_axes: int | Sequence[int | None] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Any] = torch.func.vmap,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.CONCAT,
    num_real_microbatches: int | torch.Tensor | None = None,
) -> Callable[..., Any]:
    """``vmap(fun)`` evaluated microbatch by microbatch and the outputs combined (optax's):
    with the default ``CONCAT`` it equals ``vmap(fun)``, with ``SUM``/``MEAN`` it reduces
    over the batch without holding every example's output at once.

    Keyword arguments of the returned function are mapped over their dim 0, as optax's.

    Arguments:
        fun: the function mapped over the batch.
        in_axes: the mapped dim of each positional argument (``None``: not mapped), or one
            int for all, as ``vmap``'s ``in_dims``.
        out_axes: must be 0 (as optax).
        microbatch_size: examples per microbatch (dividing the batch size), or ``None``
            for one call over the whole batch.
        vmap_fn: a function with ``torch.func.vmap``'s ``(func, in_dims, out_dims)``.
        accumulator: how outputs combine (see :func:`microbatch`); its ``aggregate``
            reduces each microbatch's mapped outputs.
        num_real_microbatches: stop after this many microbatches.

    Returns:
        A function with ``fun``'s arguments, each mapped one with a batch dim, returning
            the combined output (``CONCAT``: batch on dim 0).

    Raises:
        NotImplementedError: ``out_axes`` other than 0.
    """
    if out_axes != 0:
        raise NotImplementedError("fm.optim.micro_vmap: out_axes != 0 is not supported")
    axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def vmap_reduce_fn(*args: Any, kwargs: dict[str, Any]) -> Any:
        shape: list[Any] = []
        # kwargs travel as one positional dict mapped on dim 0, as optax's (torch's vmap
        # would not map keyword arguments)
        output = vmap_fn(_tensors_only(fun, shape), (*axes, 0), out_axes)(*args, kwargs)
        output = _with_nones(output, shape)
        size = pytree.tree_leaves(output)[0].shape[0]
        return _canonical(accumulator, size).aggregate(output)

    micro_vmap_fn = microbatch(
        vmap_reduce_fn,
        argnums=tuple(i for i, ax in enumerate(axes) if ax is not None),
        argnames="kwargs",
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        in_axes=tuple(ax for ax in axes if ax is not None) + (0,),
        num_real_microbatches=num_real_microbatches,
    )

    def wrapped_fn(*args: Any, **kwargs: Any) -> Any:
        return micro_vmap_fn(*args, kwargs=kwargs)

    return wrapped_fn


def _with_extra_batch_axis(fun: Callable[..., Any], batch_argnums: Sequence[int]):
    def wrapped_fun(*args: Any, **kwargs: Any) -> Any:
        args = list(args)
        for i in batch_argnums:
            args[i] = pytree.tree_map(lambda x: x.unsqueeze(1), args[i])
        return fun(*args, **kwargs)

    return wrapped_fun


def micro_grad(
    fun: Callable[..., Any],
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | torch.Tensor | None = None,
) -> Callable[..., Any]:
    """Per-example gradients of ``fun``, transformed and combined over the batch,
    microbatch by microbatch (optax's): ``transform_fn(grad_i)`` summed (by default) over
    examples ``i``, with each example's value, ``metrics_fn(grad_i)`` and aux.

    A per-example clipped gradient sum (DP-SGD's) is ``micro_grad(loss,
    transform_fn=lambda g: clip(g))``.

    Arguments:
        fun: ``fun(params, batch, ...)`` returning a scalar (``(scalar, aux)`` with
            ``has_aux``).
        has_aux: whether ``fun`` returns ``(value, aux)``.
        argnums: the argument(s) differentiated.
        batch_argnums: the argument(s) with a batch on dim 0.
        keep_batch_dim: whether ``fun`` gets each example with a batch dim of 1 (``True``)
            or without it.
        microbatch_size: examples per microbatch, or ``None`` for the whole batch at once.
        accumulator: how the transformed gradients combine over the batch.
        transform_fn: applied to each example's gradient before combining.
        metrics_fn: applied to each example's gradient, returned per example.
        num_real_microbatches: stop after this many microbatches.

    Returns:
        A function with ``fun``'s arguments returning ``(combined, outputs)``:
            ``outputs`` an ``IndividualOutputs`` of ``values``, ``metrics`` and ``aux``,
            each with the batch on dim 0.
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    grad_and_value = torch.func.grad_and_value(fun, argnums, has_aux=has_aux)

    def grad_fn(*args: Any, **kwargs: Any) -> Any:
        # torch's grad refuses a None aux, so without has_aux the aux is set here
        grad, value_and_aux = grad_and_value(*args, **kwargs)
        value, aux = value_and_aux if has_aux else (value_and_aux, None)
        return transform_fn(grad), IndividualOutputs(value, metrics_fn(grad), aux)

    in_axes = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    micro_fun = micro_vmap(
        grad_fn,
        in_axes=in_axes,
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if keep_batch_dim:
        micro_fun = _with_extra_batch_axis(micro_fun, batch_argnums)
    return micro_fun
