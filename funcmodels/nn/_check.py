"""Argument checks shared by the layer specs: each error names the layer and the field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch._C import _functorch
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from .. import random as _random
from .._documents import show_int
from .._encode import MAX_LAYERS
from .._spec import Spec, name_hash


def positive_int(layer: str, field: str, value: object) -> int:
    """Check a field that must be an int ``>= 1`` (a width, a count).

    Arguments:
        layer: the layer's name, the start of the message (``'MoE'``).
        field: the field's name.
        value: what was given.

    Returns:
        ``value``.

    Raises:
        TypeError: not an int (a bool is not one either).
        ValueError: below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {field} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{layer}: {field} must be positive, got {value}")
    return value


def within_layer_budget(spec: Spec, field: str) -> None:
    """Refuse a spec whose count ``field`` makes it stand for more layers than one spec
    may hold (:data:`funcmodels._encode.MAX_LAYERS`, the budget of files and configs).

    Called by every layer with a count field (``n``, ``num_layers``) once its other fields
    are checked, before anything is built from the count.

    Arguments:
        spec: the layer, with ``layer_count()`` ready to answer.
        field: the count field, for the message.

    Raises:
        ValueError: over the budget; the message gives the field's value and the limit.
    """
    count = spec.layer_count()
    if count > MAX_LAYERS:
        raise ValueError(
            f"{spec.type_name}: {field}={show_int(getattr(spec, field))} makes it "
            f"{show_int(count)} layers; a spec holds at most {MAX_LAYERS} (the limit of "
            "files and configs, so that a few bytes cannot build 10^9 layers)"
        )


def non_negative_int(layer: str, field: str, value: object) -> int:
    """Check a field that must be an int ``>= 0`` (a padding, a dim).

    Arguments:
        layer: the layer's name, the start of the message.
        field: the field's name.
        value: what was given.

    Returns:
        ``value``.

    Raises:
        TypeError: not an int (a bool is not one either).
        ValueError: negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {field} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{layer}: {field} must be non-negative, got {value}")
    return value


def boolean(layer: str, field: str, value: object) -> bool:
    """Check a field that must be a bool (not merely truthy).

    Arguments:
        layer: the layer's name, the start of the message.
        field: the field's name.
        value: what was given.

    Returns:
        ``value``.

    Raises:
        TypeError: not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{layer}: {field} must be a bool, got {type(value).__name__} {value!r}")
    return value


def number(
    layer: str,
    field: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Check a field that must be a finite number, optionally within bounds.

    Arguments:
        layer: the layer's name, the start of the message.
        field: the field's name.
        value: what was given (an int or a float; a bool is refused).
        lo: the lower bound, ``None`` for none; inclusive unless ``lo_open``.
        hi: the upper bound, ``None`` for none; inclusive unless ``hi_open``.
        lo_open: exclude ``lo`` itself.
        hi_open: exclude ``hi`` itself.

    Returns:
        ``value`` as a float.

    Raises:
        TypeError: not a number.
        ValueError: not finite (specs are saved as JSON), or out of bounds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{layer}: {field} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(
            f"{layer}: {field} must be a finite number (specs are saved as JSON), got {value}"
        )
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        raise ValueError(f"{layer}: {field} must be in {lo_b}{lo}, {hi}{hi_b}, got {value}")
    return float(value)


def int_tuple(layer: str, field: str, value: object, n: int, minimum: int) -> tuple[int, ...]:
    """Check a field that takes an int or a sequence of ``n`` ints (a kernel size).

    Arguments:
        layer: the layer's name, the start of the message.
        field: the field's name.
        value: an int (the same for every dim) or a list or tuple of ``n`` ints.
        n: the number of dims.
        minimum: the least value allowed.

    Returns:
        an ``n``-tuple of ints.

    Raises:
        TypeError: an entry is not an int.
        ValueError: a sequence of another length, or an entry below ``minimum``.
    """
    if isinstance(value, (list, tuple)):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(f"{layer}: {field} must have {n} entries, got {list(items)}")
    else:
        items = (value,) * n
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{layer}: {field} must be ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{layer}: {field} must be >= {minimum}, got {value!r}")
    return items


def uniform_param(
    key: torch.Tensor, name: str, shape: tuple[int, ...], bound: float, dtype, device
) -> torch.Tensor:
    """``U(-bound, bound)`` from the layer key with the parameter name folded in."""
    k = _random.fold_in(key, name_hash(name))
    return _random.uniform(k, shape, dtype, device, minval=-bound, maxval=bound)


def fan_in_bound(fan_in: int) -> float:
    """torch.nn's default bound: kaiming_uniform(a=sqrt(5)) and the bias rule both give this."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def torch_signature(cls: type) -> type:
    """Give a frozen dataclass torch's constructor, with inferable sizes that may be omitted.

    torch puts the input size first (``Linear(in_features, out_features)``); here it may
    also be left out (``Linear(out_features=10)``) to be inferred from the input shape, so
    a field with a default (``None``) comes before required ones, which a generated
    dataclass ``__init__`` does not allow. Every field can be given by position or by name;
    a required one left out raises ``TypeError``, as a missing argument would.

    Arguments:
        cls: a frozen dataclass (a spec class), decorated after ``@dataclass``; its
            ``__init__`` takes the fields in their declared order and then calls
            ``__post_init__``.

    Returns:
        ``cls``, with the new ``__init__``.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    layer = cls.__name__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(
                f"{layer}: takes at most {len(names)} positional arguments ({', '.join(names)}), "
                f"got {len(args)}"
            )
        values = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{layer}: unexpected argument {k!r}; its arguments are {names}")
            if k in values:
                raise TypeError(f"{layer}: got multiple values for argument {k!r}")
            values[k] = v
        missing = [n for n in names if n not in values and n not in defaults]
        if missing:
            raise TypeError(f"{layer}: missing required argument(s) {missing}")
        for n in names:
            object.__setattr__(self, n, values[n] if n in values else defaults[n])
        self.__post_init__()

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"{layer}({', '.join(names)}); see the class docstring."
    cls.__init__ = __init__
    return cls


def sizes_known(spec: Any) -> None:
    """Raise unless every inferable size of ``spec`` is set (tensor shapes need them)."""
    missing = spec.omitted()
    if missing:
        raise ValueError(
            f"{spec.type_name}: {', '.join(missing)} not known yet ({spec!r}); pass "
            "input_shape=... (one example's shape) to fm.init to infer it, or give it"
        )


def under_vmap(t: torch.Tensor) -> bool:
    """True when ``t`` is batched by :func:`torch.func.vmap` at some level.

    Walks the functorch wrapper chain (grad wrappers around batched tensors, and the
    reverse), so a ``vmap(grad(...))`` input is recognised too. A layer that can take a
    faster data-dependent path (one host sync for the group sizes, say) asks this, since
    under ``vmap`` each example would need its own.

    Arguments:
        t: a tensor the layer received or computed.

    Returns:
        whether ``t`` carries a vmap batch dim.
    """
    while _functorch.is_functorch_wrapped_tensor(t):
        if _functorch.is_batchedtensor(t):
            return True
        t = _functorch.get_unwrapped(t)
    return False


def vmap_active() -> bool:
    """True when a :func:`torch.func.vmap` is on functorch's transform stack.

    Unlike :func:`under_vmap`, which asks a tensor's wrappers (queries dynamo cannot
    trace), this walks the interpreter stack with calls dynamo evaluates at trace time,
    so it gives the same answer eagerly and under :func:`torch.compile`, also for a
    ``vmap`` below a ``grad`` (``grad(vmap(f))``) or above it (``vmap(grad(f))``).

    Returns:
        whether some vmap level is active; ``False`` outside torch.func transforms.
    """
    if not torch._C._are_functorch_transforms_active():
        return False
    interpreter = retrieve_current_functorch_interpreter()
    if interpreter.key() == _functorch.TransformType.Vmap:
        return True
    with interpreter.lower():
        return vmap_active()


def affine_init(shapes: dict[str, tuple[int, ...]], dtype, device) -> dict[str, torch.Tensor]:
    """torch's norm-layer init: ``weight`` ones, ``bias`` zeros (no randomness)."""
    fill = {"weight": torch.ones, "bias": torch.zeros}
    return {n: fill[n](shape, dtype=dtype, device=device) for n, shape in shapes.items()}
