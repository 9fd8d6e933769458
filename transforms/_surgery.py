"""The common start of a transform that turns one model into another on ``(params,
state)`` (pruning, compression, expert parallelism): the model's checked, editable
entries. The edited entries and :func:`funcmodels.extend.replace_layers` of the spec then
make the new model with ``fm.from_state_dict``."""

from __future__ import annotations

import torch

import funcmodels as fm


def model_entries(params: fm.Params, state: fm.State | None, where: str) -> dict[str, torch.Tensor]:
    """The entries of ``fm.to_state_dict(params, state)`` as a new dict to edit.

    Arguments:
        params: the model's params.
        state: its state; may be ``None`` only for a model that keeps none.
        where: the transform's name, the start of every message
            (``'transforms.sparsify'``).

    Returns:
        ``{dotted path: tensor}``, params and buffers (the tensors themselves, not copies).

    Raises:
        TypeError: ``params`` is not Params, or ``state`` neither a State nor ``None``.
        ValueError: the model keeps state but none was given.
    """
    if not isinstance(params, fm.Params):
        raise TypeError(f"{where}: expected Params, got {type(params).__name__}")
    if state is not None and not isinstance(state, fm.State):
        raise TypeError(f"{where}: expected a State or None, got {type(state).__name__}")
    if state is None and params.spec.has_state():
        raise ValueError(f"{where}: the model keeps state (buffers or masks); pass it as well")
    return dict(fm.to_state_dict(params, state))
