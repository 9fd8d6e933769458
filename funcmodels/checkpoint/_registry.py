"""The named tuple types a checkpoint may hold, by the name written in the file.

A file names the type of each named tuple it holds (an optimiser state such as
``funcmodels.optim.ScaleByAdamState``); loading looks the name up here and nowhere else.
Nothing is imported or evaluated from a file, so a tampered file naming ``os.system`` is
refused. The named tuples that :mod:`funcmodels.optim` exports are registered under their
public names when this package is imported; :func:`register` adds a user's own.
"""

from __future__ import annotations

import threading
from typing import TypeVar

from .. import optim

T = TypeVar("T", bound=type)

_lock = threading.Lock()
_by_name: dict[str, type] = {}
_by_type: dict[type, str] = {}


def _is_named_tuple(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def register(cls: T, name: str | None = None) -> T:
    """Let checkpoints hold instances of the named tuple class ``cls``.

    Usable as a decorator. Registering the same class under the same name again does
    nothing.

    Arguments:
        cls: a ``typing.NamedTuple`` (or ``collections.namedtuple``) class.
        name: the name written in files; ``'<module>.<qualname>'`` when omitted. Keep it
            stable: a file names the type, and loading finds it by this name only.

    Returns:
        ``cls``, unchanged.

    Raises:
        TypeError: ``cls`` is not a named tuple class, or ``name`` not a non-empty string.
        ValueError: the name is taken by another class, or ``cls`` is registered under
            another name.
    """
    if not _is_named_tuple(cls):
        raise TypeError(
            f"fm.checkpoint.register: expected a NamedTuple class, got {cls!r}; checkpoints "
            "hold named tuples, dicts, lists, tuples, Params, State, tensors and scalars"
        )
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(name, str) or not name:
        raise TypeError(f"fm.checkpoint.register: name must be a non-empty string, got {name!r}")
    with _lock:
        taken = _by_name.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(
                f"fm.checkpoint.register: the name {name!r} is taken by {taken!r}; pass "
                f"another name= for {cls!r}"
            )
        known = _by_type.get(cls)
        if known is not None and known != name:
            raise ValueError(f"fm.checkpoint.register: {cls!r} is registered as {known!r} already")
        _by_name[name] = cls
        _by_type[cls] = name
    return cls


def name_of(cls: type) -> str | None:
    """The name ``cls`` is registered under, or ``None``."""
    return _by_type.get(cls)


def resolve(name: str) -> type | None:
    """The class registered as ``name``, or ``None``."""
    return _by_name.get(name)


def _register_optimiser_states() -> None:
    # Every named tuple fm.optim exports, under its public name: state types added to
    # fm.optim later are covered without a list kept here. A class exported under several
    # names (optax's aliases, such as ApplyEvery for ApplyEveryState) is written under its
    # own class name and read under each of them.
    for attr in optim.__all__:
        cls = getattr(optim, attr)
        if not _is_named_tuple(cls) or cls is optim.GradientTransformation:
            continue
        own = cls.__name__ if getattr(optim, cls.__name__, None) is cls else attr
        register(cls, f"funcmodels.optim.{own}")
        _by_name.setdefault(f"funcmodels.optim.{attr}", cls)
    # fm.optim.contrib's, under theirs (a class fm.optim exports too keeps that name)
    for attr in optim.contrib.__all__:
        cls = getattr(optim.contrib, attr)
        if _is_named_tuple(cls) and cls not in _by_type:
            register(cls, f"funcmodels.optim.contrib.{attr}")


_register_optimiser_states()
