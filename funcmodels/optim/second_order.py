"""Second-order quantities of a loss ``loss(params, inputs, targets)``, as
``optax.second_order``: a Hessian-vector product and the diagonals of the Hessian and of
the observed Fisher information.

The params are any pytree of tensors (a dict, a :class:`funcmodels.Params`); "raveled"
vectors list their leaves flattened and concatenated in the tree's leaf order (torch's
pytree order: a dict's insertion order, where JAX sorts dict keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.func import grad, jvp, vmap

__all__ = ["fisher_diag", "hessian_diag", "hvp"]

LossFn = Callable[[Any, Any, Any], torch.Tensor]


def _ravel(tree: Any) -> torch.Tensor:
    return torch.cat([leaf.reshape(-1) for leaf in pytree.tree_leaves(tree)])


def _unravel_like(vector: torch.Tensor, tree: Any) -> Any:
    leaves, spec = pytree.tree_flatten(tree)
    sizes = [leaf.numel() for leaf in leaves]
    if vector.shape != (sum(sizes),):
        raise ValueError(
            f"fm.optim.second_order: expected a vector of {sum(sizes)} entries (the "
            f"params raveled), got shape {tuple(vector.shape)}"
        )
    parts = torch.split(vector, sizes)
    out = [p.reshape(leaf.shape).to(leaf.dtype) for p, leaf in zip(parts, leaves, strict=True)]
    return pytree.tree_unflatten(out, spec)


def hvp(loss: LossFn, v: torch.Tensor, params: Any, inputs: Any, targets: Any) -> Any:
    """The product of the Hessian of ``loss`` (in the params) with ``v``, by
    forward-over-reverse differentiation, as optax's.

    Arguments:
        loss: ``loss(params, inputs, targets)`` returning a 0-dim tensor.
        v: a vector of the size of the raveled params.
        params: the params, a pytree of tensors.
        inputs: the inputs passed to ``loss``.
        targets: the targets passed to ``loss``.

    Returns:
        ``H v`` as a pytree like ``params``.
    """

    def loss_fn(p):
        return loss(p, inputs, targets)

    return jvp(grad(loss_fn), (params,), (_unravel_like(v, params),))[1]


def hessian_diag(loss: LossFn, params: Any, inputs: Any, targets: Any) -> torch.Tensor:
    """The diagonal of the Hessian of ``loss`` in the params (one Hessian-vector product
    per entry, batched with ``vmap``), as optax's.

    Arguments:
        loss: ``loss(params, inputs, targets)`` returning a 0-dim tensor.
        params: the params, a pytree of tensors.
        inputs: the inputs passed to ``loss``.
        targets: the targets passed to ``loss``.

    Returns:
        A vector of the size of the raveled params.
    """
    flat = _ravel(params)
    vs = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)

    def comp(v):
        return torch.dot(v, _ravel(hvp(loss, v, params, inputs, targets)))

    return vmap(comp)(vs)


def fisher_diag(
    negative_log_likelihood: LossFn, params: Any, inputs: Any, targets: Any
) -> torch.Tensor:
    """The diagonal of the observed Fisher information, the squared gradient of the
    negative log-likelihood, as optax's.

    Arguments:
        negative_log_likelihood: ``nll(params, inputs, targets)`` returning a 0-dim tensor.
        params: the params, a pytree of tensors.
        inputs: the inputs passed to it.
        targets: the targets passed to it.

    Returns:
        A vector of the size of the raveled params.
    """
    return torch.square(_ravel(grad(negative_log_likelihood)(params, inputs, targets)))
