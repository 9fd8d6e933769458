"""init / apply / run and torch ``state_dict`` conversion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from . import random as _random
from ._shapes import prepare
from ._spec import Context, Spec, expected_entries, layer_name, name_hash
from ._tree import Params, State


class Output(NamedTuple):
    """What :func:`run` returns."""

    out: Any
    """the model's output"""
    state: State | None
    """the updated state (``None`` when no state was given)"""
    aux: dict[str, Any]
    """auxiliary outputs by layer path (losses, statistics), empty for most models"""


def _check_spec(spec: object, where: str) -> Spec:
    if not isinstance(spec, Spec):
        raise TypeError(
            f"{where}: expected a layer spec such as fm.nn.Linear(3, 4), got {type(spec).__name__}"
        )
    return spec


def _check_dtype(dtype: object, where: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{where}: dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _init_tree(key: torch.Tensor, spec: Spec, dtype: torch.dtype, path: str, out: dict) -> None:
    own = spec.init_params(key, dtype)
    expected = spec.param_shapes()
    if set(own) != set(expected):
        raise RuntimeError(
            f"{type(spec).__name__}.init_params returned {sorted(own)}, expected {sorted(expected)}"
        )
    for name in expected:
        out[path + name] = own[name]
    for name, child in spec.children():
        _init_tree(_random.fold_in(key, name_hash(name)), child, dtype, f"{path}{name}.", out)


def _state_tree(spec: Spec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for prefix, s in spec.walk():
        for name, t in s.init_state(dtype).items():
            out[prefix + name] = t
    return out


def init(
    key: torch.Tensor,
    spec: Spec,
    *,
    dtype: torch.dtype = torch.float32,
    input_shape: tuple[int, ...] | None = None,
) -> Params:
    """Initialise the trainable parameters of ``spec`` from a PRNG key.

    Each child's key is the parent key with the child's name folded in, so adding a layer
    leaves its siblings' values unchanged. ``torch.func.vmap(fm.init, in_dims=(0, None))``
    over ``fm.split(key, n)`` makes an ensemble of ``n`` models.

    Arguments:
        key: a key from :func:`funcmodels.key`.
        spec: the model's spec.
        dtype: floating dtype of the parameters.
        input_shape: the shape of **one example**, without the batch dim (``(1, 28, 28)``
            for a grey image). Sizes left out of the spec (``in_features``,
            ``in_channels``, ``num_features``, ...) are inferred from it, and every layer's
            input is checked, before any tensor is made. Needed when the spec omits sizes.

    Returns:
        :class:`Params`, leaves in ``state_dict`` order; ``params.spec`` is the spec with
        the inferred sizes filled in.
    """
    _random.check_key(key, "fm.init(key, spec)")
    _check_spec(spec, "fm.init(key, spec)")
    _check_dtype(dtype, "fm.init")
    spec = prepare(spec, input_shape, "fm.init")
    flat: dict[str, torch.Tensor] = {}
    _init_tree(key, spec, dtype, "", flat)
    return Params(spec, flat)


def init_with_state(
    key: torch.Tensor,
    spec: Spec,
    *,
    dtype: torch.dtype = torch.float32,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[Params, State]:
    """Like :func:`init`, also returning the initial :class:`State` (buffers)."""
    params = init(key, spec, dtype=dtype, input_shape=input_shape)
    return params, State(params.spec, _state_tree(params.spec, dtype))


def _batch(spec: Spec, x: Any) -> tuple[Any, bool]:
    nd = spec.example_ndim
    if nd is None or not isinstance(x, torch.Tensor):
        return x, False
    if x.dim() == nd:
        return x.unsqueeze(0), True
    if x.dim() == nd + 1:
        return x, False
    raise spec._error(
        "",
        f"expected an input of rank {nd} (one example) or {nd + 1} (a batch), "
        f"got shape {tuple(x.shape)}",
    )


def run(
    params: Params,
    x: Any,
    *,
    state: State | None = None,
    key: torch.Tensor | None = None,
    train: bool = False,
) -> Output:
    """Apply the model and return its output, updated state and auxiliary outputs.

    Arguments:
        params: from :func:`init` (their spec says what to compute).
        x: a batch, or a single example wherever ``torch.nn`` accepts one.
        state: buffers from :func:`init_with_state`; required when the spec has any.
        key: PRNG key for stochastic layers (dropout) in train mode.
        train: train-mode semantics (dropout active, BatchNorm batch statistics).

    Returns:
        ``Output(out, state, aux)``; ``state`` is a new :class:`State`, never the input
        mutated.
    """
    if not isinstance(params, Params):
        raise TypeError(
            "fm.run/fm.apply: expected Params from fm.init or fm.from_state_dict, got "
            f"{type(params).__name__}"
        )
    spec = params.spec
    flat_state = None
    if state is not None:
        if not isinstance(state, State):
            raise TypeError(
                f"fm.run/fm.apply: state must be the State from fm.init_with_state, got "
                f"{type(state).__name__}"
            )
        # Identity first: comparing two equal spec trees field by field costs microseconds
        # per layer on every call.
        if state.spec is not spec and state.spec != spec:
            raise ValueError(
                "fm.run/fm.apply: state belongs to a different spec than params: "
                + describe_mismatch(spec, state.spec)
            )
        flat_state = state._flat
    if key is not None:
        _random.check_key(key, "fm.run/fm.apply key")
    ctx = Context(params._flat, flat_state, bool(train), key)
    xb, squeeze = _batch(spec, x)
    out = spec.forward(ctx, "", xb)
    if squeeze:
        out = out.squeeze(0)
    new_state = None
    if state is not None:
        new_state = State(spec, {**state._flat, **ctx.new_state}) if ctx.new_state else state
    return Output(out, new_state, ctx.aux)


def apply(
    params: Params,
    x: Any,
    *,
    state: State | None = None,
    key: torch.Tensor | None = None,
    train: bool = False,
) -> Any:
    """Apply the model and return its output only (see :func:`run`). Pure: nothing mutates."""
    return run(params, x, state=state, key=key, train=train).out


def describe_mismatch(expected: Spec, got: Spec) -> str:
    """Say where two specs first differ, by layer path."""
    a, b = list(expected.walk()), list(got.walk())
    for (pa, sa), (pb, sb) in zip(a, b, strict=False):
        if pa != pb:
            return f"layer '{layer_name(pa)}' expected, found '{layer_name(pb)}'"
        if type(sa) is not type(sb):
            return f"layer '{layer_name(pa)}': expected {sa.type_name}, got {sb.type_name}"
        if not sa.children() and sa != sb:
            return f"layer '{layer_name(pa)}': expected {sa!r}, got {sb!r}"
    if len(a) != len(b):
        return f"expected {len(a)} layers, got {len(b)}"
    return f"expected {expected!r}, got {got!r}"


def check_params(spec: Spec, params: Params) -> None:
    """Raise ``ValueError`` unless ``params`` were made for ``spec``."""
    _check_spec(spec, "check_params")
    if not isinstance(params, Params):
        raise TypeError(f"expected Params, got {type(params).__name__}")
    if params.spec != spec:
        raise ValueError(
            "params were made for a different spec: " + describe_mismatch(spec, params.spec)
        )


def to_state_dict(params: Params, state: State | None = None) -> dict[str, torch.Tensor]:
    """Flat ``{dotted path: tensor}`` with torch's ``state_dict`` naming and order.

    The tensors are the same objects as in ``params``/``state`` (no copy).
    """
    if not isinstance(params, Params):
        raise TypeError(f"fm.to_state_dict: expected Params, got {type(params).__name__}")
    if state is not None and not isinstance(state, State):
        raise TypeError(f"fm.to_state_dict: expected State, got {type(state).__name__}")
    if state is not None and state.spec != params.spec:
        raise ValueError(
            "fm.to_state_dict: state belongs to a different spec than params: "
            + describe_mismatch(params.spec, state.spec)
        )
    out: dict[str, torch.Tensor] = {}
    for prefix, s in params.spec.walk():
        for name in s.param_shapes():
            out[prefix + name] = params._flat[prefix + name]
        if state is not None:
            for name in s.state_shapes():
                out[prefix + name] = state._flat[prefix + name]
    return out


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
    if problems:
        raise ValueError(
            f"{where}: entries do not match the spec {spec.type_name}: " + "; ".join(problems)
        )


def from_state_dict(spec: Spec, state_dict: Mapping[str, torch.Tensor]) -> tuple[Params, State]:
    """Build ``(params, state)`` for ``spec`` from a torch-style ``state_dict``.

    Names, shapes and dtypes are checked against the spec and every difference is
    reported. Tensors are detached copies: later changes to ``state_dict`` (an optimizer
    step on the torch module, say) do not leak into the returned params.
    """
    _check_spec(spec, "fm.from_state_dict(spec, state_dict)")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"fm.from_state_dict: expected a mapping of names to tensors, got "
            f"{type(state_dict).__name__}"
        )
    validate_entries(spec, state_dict, "fm.from_state_dict")
    want = expected_entries(spec, "params")
    want_state = expected_entries(spec, "state")
    params = {k: state_dict[k].detach().clone() for k in want}
    state = {k: state_dict[k].detach().clone() for k in want_state}
    return Params(spec, params), State(spec, state)
