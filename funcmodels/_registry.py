"""The one registry of spec types: unique type names, with config aliases layered on top.

Every subclass of :class:`~funcmodels.Spec` is recorded here when its class statement
runs. A class whose name starts with ``_`` is private: it is known to be a spec but has no
type name, so it cannot be written to a file or named in a config. A public class gets its
``type_name`` (the class name unless the class sets one), which must be unique: a second
class under a taken name is an error at its definition, naming both classes. Defining the
same class again (same module and qualified name, as when a notebook cell or a module is
re-run) replaces the old one.

Aliases are extra names for configs (``'conv'`` for ``Conv2d``); they are looked up
ignoring case, ``_`` and ``-``. The first alias registered for a class is the name
:meth:`Spec.to_config` writes for it.

This module imports nothing from the package: everything above it registers here.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import re
import threading
from collections.abc import Callable
from typing import Any

import torch

_TYPES: dict[str, type] = {}  # type name -> class
_NAMES: dict[type, str] = {}  # class -> type name
_PRIVATE: set[type] = set()
_ALIASES: dict[str, type] = {}  # normalised alias -> class
_ALIAS_SHOWN: dict[str, str] = {}  # normalised alias -> the alias as registered
_CONFIG_NAME: dict[type, str] = {}  # class -> the name to_config writes

_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# Held by every change and by every read that iterates the tables: classes may be defined
# (a module imported) in one thread while another reads a config.
_LOCK = threading.RLock()


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


def normalise(name: str) -> str:
    """The form names are compared in: lower case, without ``_`` and ``-``."""
    return name.lower().replace("_", "").replace("-", "")


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _same_definition(a: type, b: type) -> bool:
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


@_locked
def add_type(cls: type, type_name: str) -> None:
    """Record a spec class (called by ``Spec.__init_subclass__``).

    Raises ``TypeError`` if ``type_name`` is taken by another class.
    """
    if type_name.startswith("_"):
        _PRIVATE.add(cls)
        return
    taken = _TYPES.get(type_name)
    if taken is not None and taken is not cls and not _same_definition(taken, cls):
        raise TypeError(
            f"spec type name {type_name!r} of {_where(cls)} is already taken by "
            f"{_where(taken)}; give the new class a unique name with a class attribute, "
            f"e.g. type_name: ClassVar[str] = 'mylib.{type_name}'"
        )
    if taken is not None and taken is not cls:
        _forget(taken)
    _TYPES[type_name] = cls
    _NAMES[cls] = type_name


def _forget(cls: type) -> None:
    """Drop a class replaced by its redefinition, with its aliases."""
    _NAMES.pop(cls, None)
    _CONFIG_NAME.pop(cls, None)
    for key in [k for k, c in _ALIASES.items() if c is cls]:
        del _ALIASES[key]
        del _ALIAS_SHOWN[key]


@_locked
def add_alias(alias: str, cls: type) -> None:
    """Make ``alias`` a config name of the registered class ``cls``.

    Raises ``ValueError`` for a malformed alias or one taken by another class.
    """
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise ValueError(
            f"fm.register_layer: a config type name is a letter followed by letters, digits, "
            f"'_' or '-', got {alias!r}"
        )
    if cls not in _NAMES or not dataclasses.is_dataclass(cls):
        raise TypeError(
            f"fm.register_layer({alias!r}, ...): expected a public spec class (a dataclass "
            f"subclass of fm.Spec whose name does not start with '_'), got {cls!r}"
        )
    key = normalise(alias)
    taken = _ALIASES.get(key)
    if taken is None:
        for name, other in _TYPES.items():
            if normalise(name) == key and other is not cls:
                taken = other
                break
    if taken is not None and taken is not cls:
        raise ValueError(
            f"fm.register_layer: {alias!r} already names {_where(taken)}; choose another name"
        )
    if key not in _ALIASES:
        _ALIASES[key] = cls
        _ALIAS_SHOWN[key] = alias
    _CONFIG_NAME.setdefault(cls, alias)


@_locked
def remove_alias(alias: str) -> None:
    """Undo :func:`add_alias` (for tests and plugins that unload)."""
    key = normalise(alias)
    cls = _ALIASES.pop(key, None)
    _ALIAS_SHOWN.pop(key, None)
    if cls is not None and _CONFIG_NAME.get(cls) is not None:
        if normalise(_CONFIG_NAME[cls]) == key:
            rest = [a for k, a in _ALIAS_SHOWN.items() if _ALIASES[k] is cls]
            if rest:
                _CONFIG_NAME[cls] = rest[0]
            else:
                del _CONFIG_NAME[cls]


@_locked
def remove_type(cls: type) -> None:
    """Forget a spec class (for tests that define throwaway public classes)."""
    name = _NAMES.get(cls)
    if name is not None and _TYPES.get(name) is cls:
        del _TYPES[name]
    _forget(cls)
    _PRIVATE.discard(cls)


def is_spec(value: Any) -> bool:
    """Whether ``value`` is an instance of a spec class."""
    cls = type(value)
    return cls in _NAMES or cls in _PRIVATE


def type_name_of(cls: type) -> str | None:
    """The registered type name of ``cls``; ``None`` for a private class."""
    return _NAMES.get(cls)


def config_name_of(cls: type) -> str | None:
    """The name :meth:`Spec.to_config` writes: the first alias, else the type name."""
    return _CONFIG_NAME.get(cls) or _NAMES.get(cls)


@_locked
def lookup(name: str) -> type | None:
    """The class a config or file names: a type name, an alias, or a type name written in
    another case or with ``_``/``-`` (when that is unambiguous)."""
    if name in _TYPES:
        return _TYPES[name]
    key = normalise(name)
    if key in _ALIASES:
        return _ALIASES[key]
    found = [cls for n, cls in _TYPES.items() if normalise(n) == key]
    return found[0] if len(found) == 1 else None


@_locked
def known_names() -> list[str]:
    """The aliases as registered, and the type names of classes without one, sorted."""
    plain = {name for cls, name in _NAMES.items() if cls not in _CONFIG_NAME}
    return sorted(set(_ALIAS_SHOWN.values()) | plain)


@_locked
def types() -> dict[str, type]:
    """Type name -> class, for every public spec class."""
    return dict(_TYPES)


def _reserved_layer_names() -> frozenset[str]:
    # torch refuses a child module named like an attribute of its parent (a Sequential
    # here: to_module makes one), and torch.fx writes child names into Python code.
    return frozenset(dir(torch.nn.Sequential())) | frozenset(keyword.kwlist)


_RESERVED: frozenset[str] | None = None


def layer_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a child layer, or ``None`` when it can.

    A name becomes a parameter path segment and a torch module name, so it is a non-empty
    string without ``'.'``, not a Python keyword (torch.fx would write invalid code) and
    not an attribute of ``torch.nn.Sequential`` (``'forward'``, ``'to'``, ``'append'``: torch
    refuses those as module names).
    """
    global _RESERVED
    if not isinstance(name, str):
        return f"a layer name must be a string, got {type(name).__name__} {name!r}"
    if not name or "." in name:
        return (
            f"invalid layer name {name!r}: a name is a non-empty string without '.' (it "
            "becomes a parameter path segment)"
        )
    if _RESERVED is None:
        _RESERVED = _reserved_layer_names()
    if name in _RESERVED:
        return (
            f"invalid layer name {name!r}: torch refuses it as a module name (it is a Python "
            "keyword or an attribute of torch.nn.Module/Sequential); choose another"
        )
    return None


def register_layer(type_name: str, spec_class: type) -> None:
    """Make ``type_name`` a config ``type`` for ``spec_class`` (an alias).

    Every public spec class is already known by its type name (the class name unless it
    sets ``type_name``); an alias adds a short or familiar name, such as ``'moe'``. Names
    are matched ignoring case, ``_`` and ``-``; the first alias of a class is the name
    :meth:`Spec.to_config` writes for it.

    Arguments:
        type_name: a letter, then letters, digits, ``_``, ``-``.
        spec_class: a public subclass of :class:`~funcmodels.Spec`.

    Raises ``ValueError`` if the name is taken by another class.
    """
    add_alias(type_name, spec_class)
