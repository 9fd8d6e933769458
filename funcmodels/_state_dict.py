"""``state_dict`` interop: torch's names and order out (:func:`to_state_dict`), checked
entries in (:func:`from_state_dict`), and the checks ``fm.load`` shares with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._context import layer_name
from ._core import _check_spec, describe_mismatch
from ._spec import Spec, expected_entries, state_dict_order
from ._tree import Params, State, check_fits


def to_state_dict(params: Params, state: State | None = None) -> dict[str, torch.Tensor]:
    """Flat ``{dotted path: tensor}`` with torch's ``state_dict`` naming and order.

    The tensors are the same objects as in ``params``/``state`` (no copy). Trees of other
    shapes than the spec's (per-sample gradients, say) convert too.

    Arguments:
        params: :class:`Params` (or a tree of the same structure, such as gradients).
        state: the model's :class:`State`, to include the buffers; ``None`` for params
            only.

    Returns:
        A dict from dotted names (``'0.weight'``) to tensors, in the order of the
            ``state_dict()`` of the matching ``torch.nn`` module.

    Raises:
        TypeError: ``params`` are not :class:`Params` or ``state`` not a :class:`State`.
        ValueError: ``state`` belongs to another spec than ``params``, or an entry is
            missing.
    """
    if not isinstance(params, Params):
        raise TypeError(f"fm.to_state_dict: expected Params, got {type(params).__name__}")
    if state is not None and not isinstance(state, State):
        raise TypeError(f"fm.to_state_dict: expected State, got {type(state).__name__}")
    if state is not None and state.spec is not params.spec and state.spec != params.spec:
        raise ValueError(
            "fm.to_state_dict: state belongs to a different spec than params: "
            + describe_mismatch(params.spec, state.spec)
        )
    # Shapes are not checked: per-sample gradients and stacked trees convert too.
    check_fits(params, "fm.to_state_dict", shapes=False)
    if state is not None:
        check_fits(state, "fm.to_state_dict", shapes=False)
    both = params._flat if state is None else {**params._flat, **state._flat}
    return {k: both[k] for k in state_dict_order(params.spec, with_state=state is not None)}


def validate_entries(
    spec: Spec, entries: Mapping[str, Any], where: str, *, require_state: bool = True
) -> None:
    """Check names, shapes and dtypes of a flat dict against ``spec``; list every problem."""
    want = expected_entries(spec, "params")
    want_state = expected_entries(spec, "state")
    problems: list[str] = []
    missing = [k for k in want if k not in entries]
    if require_state:
        missing += [k for k in want_state if k not in entries]
    extra = [k for k in entries if k not in want and k not in want_state]
    if missing:
        problems.append(f"missing entries: {missing}")
    if extra:
        problems.append(f"unexpected entries: {extra}")
    for k, (shape, dtype) in {**want, **want_state}.items():
        if k not in entries:
            continue
        t = entries[k]
        if not isinstance(t, torch.Tensor):
            problems.append(f"'{k}': expected a tensor, got {type(t).__name__}")
            continue
        if tuple(t.shape) != shape:
            problems.append(f"'{k}': expected shape {shape}, got {tuple(t.shape)}")
        if k in want and not t.dtype.is_floating_point:
            problems.append(f"'{k}': expected a floating dtype, got {t.dtype}")
        if dtype is not None and t.dtype != dtype:
            problems.append(f"'{k}': expected dtype {dtype}, got {t.dtype}")
        if dtype is None and k in want_state and not t.dtype.is_floating_point:
            problems.append(f"'{k}': expected a floating dtype (the params'), got {t.dtype}")
    problems += _mixed_dtypes(spec, entries)
    if problems:
        raise ValueError(
            f"{where}: entries do not match the spec {spec.type_name}: " + "; ".join(problems)
        )


def _mixed_dtypes(spec: Spec, entries: Mapping[str, Any]) -> list[str]:
    """One problem per layer whose params and param-typed buffers hold more than one
    floating dtype (a float32 weight with a float64 bias fails only at the first apply)."""
    problems = []
    for prefix, s in spec.walk():
        names = list(s.param_shapes())
        names += [n for n, (_, dtype) in s.state_shapes().items() if dtype is None]
        found = {
            prefix + n: entries[prefix + n].dtype
            for n in names
            if isinstance(entries.get(prefix + n), torch.Tensor)
            and entries[prefix + n].dtype.is_floating_point
        }
        if len(set(found.values())) > 1:
            shown = ", ".join(f"'{k}' {d}" for k, d in found.items())
            problems.append(
                f"layer '{layer_name(prefix)}' mixes floating dtypes ({shown}); a layer's "
                "params and buffers share one dtype (convert with params.to(dtype))"
            )
    return problems


def from_state_dict(spec: Spec, state_dict: Mapping[str, torch.Tensor]) -> tuple[Params, State]:
    """Build ``(params, state)`` for ``spec`` from a torch-style ``state_dict``.

    Names, shapes and dtypes are checked against the spec and every difference is
    reported. Layers that know another layout convert it first (a
    :class:`~funcmodels.nn.Stack` loads its members unstacked, ``'{i}.<name>'``, as an
    ``nn.ModuleList`` of them has them). Tensors are detached copies: later changes to
    ``state_dict`` (an optimizer step on the torch module, say) do not leak into the
    returned params.

    Arguments:
        spec: the model's spec, with every size given (as after :func:`init`).
        state_dict: a mapping of dotted names to tensors, as ``module.state_dict()``
            returns; buffers included when the spec has state.

    Returns:
        ``(params, state)``: :class:`Params` and :class:`State` holding copies of the
            tensors.

    Raises:
        TypeError: ``spec`` is not a spec or ``state_dict`` not a mapping.
        ValueError: names, shapes or dtypes do not match the spec; every difference is
            listed.
    """
    _check_spec(spec, "fm.from_state_dict(spec, state_dict)")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"fm.from_state_dict: expected a mapping of names to tensors, got "
            f"{type(state_dict).__name__}"
        )
    entries = adapted(spec, state_dict)
    validate_entries(spec, entries, "fm.from_state_dict")
    want = expected_entries(spec, "params")
    want_state = expected_entries(spec, "state")
    params = {k: entries[k].detach().clone() for k in want}
    state = {k: entries[k].detach().clone() for k in want_state}
    return Params._make(spec, params), State._make(spec, state)


def adapted(spec: Spec, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` with every layer's other layouts rewritten into its own
    (``Spec.adapt_state_dict``: the unstacked ``'{i}.<name>'`` entries of a Stack, say)."""
    entries = dict(state_dict)
    for prefix, s in spec.walk():
        s.adapt_state_dict(entries, prefix)
    return entries
