"""init / apply / run and torch ``state_dict`` conversion."""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from . import random as _random
from ._context import Context, Run, call, detect_mode, layer_name
from ._shapes import prepare
from ._spec import Spec, init_tree
from ._tap import active_tap
from ._tree import Params, State, check_fits, misfits


class Output(NamedTuple):
    """What :func:`run` returns: the output, the new state and the auxiliary outputs.

    Attributes:
        out: the model's output (for most models a tensor of shape ``(batch, *)``).
        state: the updated state (``None`` when no state was given).
        aux: auxiliary outputs by layer path (losses, statistics), empty for most models.
    """

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


def as_device(device: object, where: str) -> torch.device:
    """``device`` as tensors report it (``'cuda'`` becomes ``cuda:0``); ``TypeError`` if it
    names no device."""
    if isinstance(device, bool) or not isinstance(device, (torch.device, str)):
        try:  # an index (numpy's integers too) names a CUDA card, as torch.device reads it
            device = operator.index(device)
        except TypeError:
            raise TypeError(
                f"{where}: device must be a torch.device or a string, got {device!r}"
            ) from None
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"{where}: {device!r} names no device torch knows ({e})") from e
    if device.type == "cpu":
        return torch.device("cpu")  # 'cpu:0' as tensors report it
    if device.type != "meta":
        try:
            found = torch.empty(0, device=device).device
        except (AssertionError, RuntimeError) as e:  # no CUDA in this build, no such card
            raise ValueError(f"{where}: device {device} is not available here ({e})") from e
        if device.index is None:
            device = found
    return device


def _placement(key: torch.Tensor, device: object, where: str) -> tuple[torch.Tensor, torch.device]:
    """The device every leaf goes to, and the key to fold names into.

    Keys are folded on the CPU (a few microseconds each in Python integers) and only the
    draws run on the device, so an init on an accelerator launches no per-layer kernels for
    the keys; the bits are the same on every device.
    """
    device = as_device(key.device if device is None else device, where)
    if key.device.type not in ("cpu", "meta") and _random.is_plain(key):
        key = key.cpu()
    return key, device


def _init(key, spec, dtype, device, input_shape, where, state):
    _random.check_key(key, f"{where}(key, spec)")
    _check_spec(spec, f"{where}(key, spec)")
    _check_dtype(dtype, where)
    key, device = _placement(key, device, where)
    spec = prepare(spec, input_shape, where)
    return spec, init_tree(spec, key, dtype=dtype, device=device, state=state)


def init(
    key: torch.Tensor,
    spec: Spec,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Params:
    """Initialise the trainable parameters of ``spec`` from a PRNG key.

    Each child's key is the parent key with the child's name folded in, so adding a layer
    leaves its siblings' values unchanged. ``torch.func.vmap(fm.init, in_dims=(0, None))``
    over ``fm.split(key, n)`` makes an ensemble of ``n`` models (so does
    ``fm.nn.Stack(spec, n)``, as one spec).

    Arguments:
        key: a key from :func:`funcmodels.key`.
        spec: the model's spec.
        dtype: floating dtype of the parameters.
        device: where every leaf goes; by default the key's device. ``'meta'`` makes
            tensors without storage, at once, whatever the model's size (shapes only:
            for deferred initialisation, or to inspect a model too big for memory).
        input_shape: the shape of **one example**, without the batch dim (``(1, 28, 28)``
            for a grey image). Sizes left out of the spec (``in_features``,
            ``in_channels``, ``num_features``, ...) are inferred from it, and every layer's
            input is checked, before any tensor is made. Needed when the spec omits sizes.

    Returns:
        :class:`Params`, leaves in ``state_dict`` order; ``params.spec`` is the spec with
            the inferred sizes filled in. The values do not depend on the device.

    Raises:
        TypeError: ``key`` is not a key, ``spec`` not a spec, or ``dtype`` not a floating
            dtype.
        ValueError: ``input_shape`` does not fit the spec, or the spec leaves a size out
            and no ``input_shape`` is given; the message names the layer.

    Example:
        ```python
        spec = fm.nn.Sequential(fm.nn.Linear(out_features=8), fm.nn.ReLU(), fm.nn.Linear(8, 2))
        params = fm.init(fm.key(0), spec, input_shape=(3,))
        assert params["0.weight"].shape == (8, 3)
        ```
    """
    spec, (params, _) = _init(key, spec, dtype, device, input_shape, "fm.init", False)
    return Params._make(spec, params)


def init_with_state(
    key: torch.Tensor,
    spec: Spec,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[Params, State]:
    """Like :func:`init`, also returning the initial :class:`State` (buffers), on the same device.

    Arguments:
        key: a key from :func:`funcmodels.key`.
        spec: the model's spec.
        dtype: floating dtype of the parameters (and of floating buffers such as
            BatchNorm's running statistics).
        device: where every leaf goes; by default the key's device (see :func:`init`).
        input_shape: the shape of one example, without the batch dim; needed when the
            spec omits sizes (see :func:`init`).

    Returns:
        ``(params, state)``: the :class:`Params` that :func:`init` returns and the
            :class:`State` (buffers, torch's ``num_batches_tracked`` included; empty for a
            model without any).

    Raises:
        TypeError: ``key`` is not a key, ``spec`` not a spec, or ``dtype`` not a floating
            dtype.
        ValueError: ``input_shape`` does not fit the spec, or a size is missing.
    """
    spec, (params, state) = _init(key, spec, dtype, device, input_shape, "fm.init_with_state", True)
    return Params._make(spec, params), State._make(spec, state)


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


def _unbatch(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.squeeze(0)
    return pytree.tree_map(lambda t: t.squeeze(0) if isinstance(t, torch.Tensor) else t, out)


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
        key: PRNG key for stochastic layers (dropout) in train mode, on the input's
            device. **A key does not turn train mode on**: without ``train=True`` the
            call is eval (no dropout, BatchNorm running statistics) and the key is unused.
        train: train-mode semantics (dropout active, BatchNorm batch statistics); the
            mode is only ever chosen by this flag (JAX libraries differ: in Flax a
            ``deterministic`` flag, in Equinox the key's presence).

    Returns:
        ``Output(out, state, aux)``; ``state`` is a new :class:`State`, never the input
            mutated; ``aux`` maps the path of each layer that sowed values (``ctx.sow``)
            to a dict of them.

    Raises:
        TypeError: ``params`` are not :class:`Params`, ``state`` not a :class:`State`, or
            ``train`` not a bool.
        ValueError: ``state`` belongs to another spec, the key is on another device than
            the input, or the input does not fit a layer. Errors raised inside a layer, by
            the layer or by torch, name the layer's path and type.
    """
    where = "fm.run/fm.apply"
    if not isinstance(params, Params):
        raise TypeError(
            f"{where}: expected Params from fm.init or fm.from_state_dict, got "
            f"{type(params).__name__}"
        )
    if not isinstance(train, bool):
        raise TypeError(f"{where}: train must be a bool, got {type(train).__name__} {train!r}")
    spec = params.spec
    check_fits(params, where)
    flat_state = None
    if state is not None:
        if not isinstance(state, State):
            raise TypeError(
                f"{where}: state must be the State from fm.init_with_state, got "
                f"{type(state).__name__}"
            )
        # Identity first: comparing two equal spec trees field by field costs microseconds
        # per layer on every call.
        if state.spec is not spec and state.spec != spec:
            raise ValueError(
                f"{where}: state belongs to a different spec than params: "
                + describe_mismatch(spec, state.spec)
            )
        check_fits(state, where)
        flat_state = state._flat
    if key is not None:
        _random.check_key(key, f"{where} key")
        if isinstance(x, torch.Tensor) and key.device != x.device:
            raise ValueError(
                f"{where}: the key is on {key.device} but the input on {x.device}; make the "
                f"key where the data is: fm.key(seed, device=x.device) or key.to(x.device)"
            )
    run_state = Run(params._flat, flat_state, train, key, detect_mode(), tap=active_tap())
    xb, squeeze = _batch(spec, x)
    out = call(Context(run_state, spec, ""), xb)
    if squeeze:
        out = _unbatch(out)
    new_state = None
    if state is not None:
        new = run_state.new_state
        new_state = State._make(spec, {**state._flat, **new}) if new else state
    return Output(out, new_state, run_state.aux)


def apply(
    params: Params,
    x: Any,
    *,
    state: State | None = None,
    key: torch.Tensor | None = None,
    train: bool = False,
) -> Any:
    """Apply the model and return its output only (see :func:`run`). Pure: nothing mutates.

    Eval mode unless ``train=True``, whether or not a ``key`` is given: for dropout, pass
    both (``fm.apply(params, x, key=k, train=True)``).

    Arguments:
        params: from :func:`init` (their spec says what to compute).
        x: a batch, for most models a tensor of shape ``(batch, *example_shape)``, or a
            single example of shape ``example_shape`` wherever ``torch.nn`` accepts one
            (the output then has no batch dim either).
        state: buffers from :func:`init_with_state`; required when the spec has any. The
            updated state is dropped: use :func:`run` to keep it.
        key: PRNG key for stochastic layers (dropout) in train mode, on the input's device.
        train: train-mode semantics (dropout active, BatchNorm batch statistics).

    Returns:
        The model's output: for a ``Linear(3, 2)`` and ``x`` of shape ``(batch, 3)``, a
            tensor of shape ``(batch, 2)``.

    Raises:
        TypeError: as :func:`run`.
        ValueError: as :func:`run`.

    Example:
        ```python
        params = fm.init(fm.key(0), fm.nn.Linear(3, 2))
        assert fm.apply(params, torch.ones(5, 3)).shape == (5, 2)
        ```
    """
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


def check_params(
    spec_or_params: Spec | Params | State, params: Params | State | None = None
) -> None:
    """Raise unless the params fit a spec: names, shapes and dtypes of every entry.

    Called as ``check_params(params)`` (against their own spec) or ``check_params(spec,
    params)`` (the params must also have been made for ``spec``). A :class:`State` is
    checked the same way.

    Arguments:
        spec_or_params: the spec, or the params to check against their own spec.
        params: the params (or state), when a spec comes first.

    Returns:
        ``None``; the params fit.

    Raises:
        TypeError: no Params (or State) where expected, or no spec first in the two-argument
            form.
        ValueError: the params were made for another spec (the first layer where the specs
            differ is named), or an entry is missing, unexpected, not a tensor, or of
            another shape or dtype than its spec's (every such entry is named).
    """
    where = "fm.check_params"
    if params is None:
        tree = spec_or_params
        if not isinstance(tree, (Params, State)):
            raise TypeError(
                f"{where}: expected Params (or a spec and Params), got {type(tree).__name__}"
            )
    else:
        spec = _check_spec(spec_or_params, f"{where}(spec, params)")
        tree = params
        if not isinstance(tree, (Params, State)):
            raise TypeError(f"{where}: expected Params, got {type(tree).__name__}")
        if tree.spec != spec:
            raise ValueError(
                f"{where}: params were made for a different spec: "
                + describe_mismatch(spec, tree.spec)
            )
    problems = misfits(tree)
    if problems:
        raise ValueError(
            f"{where}: {type(tree).__name__} do not fit their spec {tree.spec.type_name}: "
            + "; ".join(problems)
        )
