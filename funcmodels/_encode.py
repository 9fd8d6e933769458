"""The one spec format: specs to plain data (lists and dicts) and back.

A layer is ``{"type": <name>, "params": {<constructor argument>: value}}``. Values are
JSON scalars, lists (tuples in the spec), nested layer dicts (a field holding a spec), or
lists of *entries* (a field holding named children, such as ``Sequential.layers``)::

    {"type": "linear", "name": "head", "params": {"out_features": 10}, "condition": "flag"}

An entry is a layer dict that may also carry ``name`` (the child's name) and
``condition`` (a bool, or the name of a flag; an entry whose condition is false is left
out, after being checked). A spec whose class declares ``layers_field`` (the
:class:`~funcmodels.nn.Sequential`) is written at the top level as the bare list of its
entries: this is the config format of :func:`funcmodels.from_config`, and
:func:`funcmodels.save` stores the same form (with every field written, defaults
included, so a file does not depend on the defaults of the version that reads it).

Nothing in a document is evaluated: types are looked up by name in the registry, and
classes are built with their ``from_fields``. Documents and specs nested deeper than
:data:`MAX_DEPTH` levels, or holding more than :data:`MAX_LAYERS` layers, are refused with a
``ValueError`` (a cycle, or a document built to exhaust the stack or the memory, never
gets further than that).

Values count against :data:`~funcmodels._documents.MAX_VALUES` (a shared list each time
it appears); count fields (``n``, ``num_layers``) multiply into ``Spec.layer_count()``,
checked against :data:`MAX_LAYERS` by each layer and for the whole document.

This module sits below the spec protocol (it imports only the registry and the bounds of
:mod:`funcmodels._documents`), so that
``Spec.to_config`` can use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import _registry
from ._documents import MAX_DIGITS, MAX_VALUES, show_int

#: the deepest nesting of layers that documents and files may hold
MAX_DEPTH = 100
#: the most layers one document may hold
MAX_LAYERS = 100_000

_MAX_BITS = int(MAX_DIGITS / math.log10(2))

ENTRY_KEYS = ("type", "params", "name", "condition")
_SCALARS = (bool, int, str, type(None))


def closest(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or ``''``."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def describe(where: str, path: str | None, type_name: object) -> str:
    """``config[3] (name 'stem', type 'conv')``: how an entry is named in messages."""
    name = f"name '{path}', " if path is not None else ""
    return f"{where} ({name}type {type_name!r})"


def required_fields(cls: type) -> list[str]:
    """Constructor fields of a spec class that have no default."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _too_deep(where: str) -> ValueError:
    if len(where) > 120:
        where = f"{where[:60]}...{where[-50:]}"
    return ValueError(
        f"{where}: layers nested more than {MAX_DEPTH} levels deep; funcmodels reads and "
        "writes at most that many (a deeper document is a cycle or is built to exhaust the "
        "stack)"
    )


# -- encoding ----------------------------------------------------------------------------


def encode(spec: Any, *, defaults: bool = False) -> list[dict[str, Any]] | dict[str, Any]:
    """The plain-data form of ``spec`` (see the module docstring).

    Arguments:
        spec: a spec of a registered (public) class; its children too.
        defaults: write every field; by default fields equal to their defaults are left
            out, as a person writes a config.

    Returns:
        a list of entries for a spec with ``layers_field``, else one layer dict.
    """
    if not _registry.is_spec(spec):
        raise TypeError(f"to_config: expected a layer spec, got {type(spec).__name__}")
    enc = _Encoder(defaults)
    field = type(spec).layers_field
    if field is not None:
        return enc.entries(getattr(spec, field), "config", True, 1)
    return enc.layer(spec, "spec", 1)


class _Encoder:
    def __init__(self, defaults: bool):
        self.defaults = defaults

    def layer(self, spec: Any, where: str, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        cls = type(spec)
        name = _registry.config_name_of(cls)
        if name is None:
            raise TypeError(
                f"{where}: {cls.__qualname__} is a private spec class (its name starts "
                "with '_'), so it has no type name to write; name it without the '_'"
            )
        problem = spec.config_problem()
        if problem is not None:
            raise ValueError(f"{where} ({name}): {problem}")
        params = {}
        for f in dataclasses.fields(spec):
            if not f.init or (not self.defaults and _is_default(spec, f)):
                continue
            value = _short(spec, f.name)
            params[f.name] = self.value(
                value, f"{where}.params.{f.name}", f.name == cls.layers_field, depth
            )
        out: dict[str, Any] = {"type": name}
        if params:
            out["params"] = params
        return out

    def entries(self, children: tuple, where: str, default_names: bool, depth: int) -> list:
        out = []
        for i, (name, child) in enumerate(children):
            entry = self.layer(child, f"{where}[{i}]", depth)
            if not (default_names and name == f"layer_{i}"):
                entry = {"type": entry["type"], "name": name, **entry}
            out.append(entry)
        return out

    def value(self, v: Any, where: str, layers: bool, depth: int) -> Any:
        if isinstance(v, _SCALARS):
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"{where}: {v!r} has no JSON form")
            return v
        if _registry.is_spec(v):
            return self.layer(v, where, depth + 1)
        if isinstance(v, tuple):
            if v and all(_is_named_child(x) for x in v):
                return self.entries(v, where, layers, depth + 1)
            return [self.value(x, f"{where}[{i}]", False, depth) for i, x in enumerate(v)]
        raise TypeError(
            f"{where}: cannot write a {type(v).__name__} ({v!r:.80}); spec fields must be "
            "None, bool, int, float, str, specs, or tuples of these"
        )


def _is_named_child(v: Any) -> bool:
    return (
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and _registry.is_spec(v[1])
    )


def _same_as(spec: Any, name: str, value: Any) -> bool:
    """Whether the spec would be the same with ``value`` for field ``name``."""
    try:
        return dataclasses.replace(spec, **{name: value}) == spec
    except (TypeError, ValueError):
        return False


def _is_default(spec: Any, f: dataclasses.Field) -> bool:
    # Compared as specs, so a value the layer normalises (stride 1 -> (1, 1)) counts.
    return f.default is not dataclasses.MISSING and _same_as(spec, f.name, f.default)


def _short(spec: Any, name: str) -> Any:
    """A field's value, written as one int where the layer reads it so (``3`` for ``(3, 3)``)."""
    v = getattr(spec, name)
    if isinstance(v, tuple) and v and len(set(v)) == 1 and _same_as(spec, name, v[0]):
        return v[0]
    return v


# -- decoding ----------------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One kept entry of a list of entries, with what messages and shape checks need."""

    where: str
    name: str
    path: str
    type: str
    spec: Any
    #: the kept entries of a ``layers_field``, checked one by one along the chain
    children: list[Entry] | None = None

    def describe(self) -> str:
        return describe(self.where, self.path, self.type)


class Decoder:
    """Builds specs from plain data, checking every entry; see the module docstring.

    Arguments:
        flags: the values of the flags that string ``condition`` entries name.
    """

    def __init__(self, flags: Mapping[str, Any] | None = None):
        self.flags = {} if flags is None else flags
        self.count = 0
        self.values = 0

    def entries(self, items: Sequence[Any], where: str, prefix: str, depth: int) -> list[Entry]:
        """The kept entries of a list, names checked for uniqueness."""
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        if self.count + len(items) > MAX_LAYERS:  # refused before any entry is decoded
            raise ValueError(f"{where}: more than {MAX_LAYERS} layers in one document")
        kept: list[Entry] = []
        seen: dict[str, Entry] = {}
        for i, item in enumerate(items):
            entry = self.entry(item, f"{where}[{i}]", i, prefix, depth)
            if entry is None:
                continue
            if entry.name in seen:
                raise ValueError(
                    f"{entry.describe()}: duplicate name {entry.name!r} (also the name of "
                    f"{seen[entry.name].where}); names become parameter paths and must be "
                    "unique"
                )
            seen[entry.name] = entry
            kept.append(entry)
        if depth == 1:
            _check_layer_count(sum(e.spec.layer_count() for e in kept), where)
        return kept

    def entry(
        self,
        item: Any,
        where: str,
        index: int | None,
        prefix: str,
        depth: int,
        root: bool = False,
    ) -> Entry | None:
        """Check and build one entry; ``None`` when its condition leaves it out."""
        if not isinstance(item, Mapping):
            raise TypeError(
                f"{where}: expected a layer entry such as {{'type': 'relu'}}, got "
                f"{type(item).__name__} {_brief(item)}"
            )
        _check_keys(item, where, ("type", "params") if root else ENTRY_KEYS)
        name = "" if root else _entry_name(item, where, index)
        path = "" if root else prefix + name
        shown = None if root else path
        keep = self._condition(item, describe(where, shown, item.get("type")))
        spec, children = self.layer(item, where, shown, prefix if root else path + ".", depth)
        if root:
            _check_layer_count(spec.layer_count(), where)
        if not keep:
            return None
        return Entry(where, name, path, item["type"], spec, children)

    def _condition(self, item: Mapping[str, Any], desc: str) -> bool:
        if "condition" not in item:
            return True
        cond = item["condition"]
        if isinstance(cond, bool):
            return cond
        if not isinstance(cond, str):
            raise TypeError(
                f"{desc}: condition must be a bool or the name of a flag in variables, got "
                f"{type(cond).__name__} {_brief(cond)}"
            )
        if cond not in self.flags:
            raise ValueError(
                f"{desc}: condition {cond!r} is not a flag in variables"
                f"{closest(cond, list(self.flags))}; flags given: {sorted(self.flags)}"
            )
        value = self.flags[cond]
        if not isinstance(value, bool):
            raise TypeError(
                f"{desc}: flag {cond!r} must be a bool, got {type(value).__name__} {value!r}"
            )
        return value

    def layer(
        self,
        item: Mapping[str, Any],
        where: str,
        path: str | None,
        child_prefix: str,
        depth: int,
    ) -> tuple[Any, list[Entry] | None]:
        """The spec of a ``{'type', 'params'}`` dict, and the entries of its layers field:
        the class looked up, the parameters checked against it, then decoded."""
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        self.count += 1
        if self.count > MAX_LAYERS:
            raise ValueError(
                f"{where}: more than {MAX_LAYERS} layers in one document; funcmodels reads "
                "at most that many"
            )
        desc = describe(where, path, item.get("type"))
        cls = _lookup(item, desc)
        raw = _checked_params(cls, item.get("params"), desc)
        values, children = self._fields(cls, raw, where, desc, child_prefix, depth)
        try:
            spec = cls.from_fields(values)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{desc}: {e}") from e
        return spec, children

    def _fields(
        self,
        cls: type,
        raw: Mapping[str, Any],
        where: str,
        desc: str,
        child_prefix: str,
        depth: int,
    ) -> tuple[dict[str, Any], list[Entry] | None]:
        """The decoded constructor fields of checked ``params``, and the entries of the
        layers field (``None`` when the class has none or the params leave it out)."""
        values: dict[str, Any] = {}
        children: list[Entry] | None = None
        for k, v in raw.items():
            at = f"{where}.params.{k}"
            if k in cls.config_ignores:
                if not isinstance(v, bool):
                    raise TypeError(f"{desc}: {k} must be a bool, got {_brief(v)}")
                continue  # a torch flag without meaning here (inplace: nothing is mutated)
            if k == cls.layers_field:
                if not isinstance(v, (list, tuple)):
                    raise TypeError(
                        f"{desc}: {k} must be a list of layer entries, got {type(v).__name__}"
                    )
                children = self.entries(v, at, child_prefix, depth + 1)
                values[k] = tuple((e.name, e.spec) for e in children)
            elif _is_entry_list(v) and v and all("name" in x for x in v):
                entries = self.entries(v, at, child_prefix, depth + 1)
                values[k] = tuple((e.name, e.spec) for e in entries)
            else:
                values[k] = self.value(v, at, desc, child_prefix + k, depth)
        return values, children

    def value(self, v: Any, where: str, desc: str, path: str, depth: int) -> Any:
        """A parameter value: scalars as they are, lists as tuples, dicts as nested layers."""
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        # Counted per visit: shared lists (a YAML alias bomb) count as what they stand for.
        self.values += 1
        if self.values > MAX_VALUES:
            raise ValueError(f"{desc}: {where}: more than {MAX_VALUES} values in one document")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > _MAX_BITS:
            raise ValueError(
                f"{desc}: {where} is an integer of about "
                f"{int((v.bit_length() - 1) * math.log10(2)) + 1} digits; "
                f"parameter integers have at most {MAX_DIGITS} digits"
            )
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"{desc}: {where} is {v!r}; only finite numbers are accepted")
            return v
        if isinstance(v, Mapping):
            try:
                _check_keys(v, where, ("type", "params"))
                return self.layer(v, where, None, path + ".", depth + 1)[0]
            except (TypeError, ValueError) as e:
                raise type(e)(f"{desc}: {e}") from e
        if isinstance(v, (list, tuple)):
            return tuple(
                self.value(x, f"{where}[{i}]", desc, path, depth + 1) for i, x in enumerate(v)
            )
        raise TypeError(
            f"{desc}: {where} cannot be a {type(v).__name__} ({_brief(v)}); parameter values "
            "are numbers, strings, bools, null, lists, or nested layer dicts"
        )


def _check_layer_count(count: int, where: str) -> None:
    """Refuse a document whose layers, counts multiplied in, exceed :data:`MAX_LAYERS`."""
    if count > MAX_LAYERS:
        raise ValueError(
            f"{where}: the document stands for {show_int(count)} layers (counts such as "
            f"num_layers and n multiplied in); funcmodels reads at most {MAX_LAYERS}"
        )


def _brief(v: Any) -> str:
    """A short repr for messages; never recurses into deep or cyclic values."""
    if isinstance(v, (Mapping, list, tuple, set)):
        return f"of {len(v)} items"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _lookup(item: Mapping[str, Any], desc: str) -> type:
    """The registered class an entry's ``type`` names."""
    type_name = item.get("type")
    if "type" not in item:
        raise ValueError(f"{desc}: missing 'type' (a layer type such as 'linear')")
    if not isinstance(type_name, str):
        raise TypeError(
            f"{desc}: type must be a string such as 'linear', got {type(type_name).__name__}"
        )
    cls = _registry.lookup(type_name)
    if cls is None:
        known = _registry.known_names()
        raise ValueError(
            f"{desc}: unknown layer type {type_name!r}{closest(type_name, known)}; known "
            f"types: {', '.join(known)} (other packages add theirs when imported, and "
            "aliases with fm.register_layer)"
        )
    return cls


def _checked_params(cls: type, raw: Any, desc: str) -> Mapping[str, Any]:
    """An entry's ``params`` (``{}`` when left out): a mapping of ``cls``'s argument names
    (or the torch flags it ignores) that holds every required one."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{desc}: params must be a dict of {cls.__name__}'s arguments, got "
            f"{type(raw).__name__} {_brief(raw)}"
        )
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    accepted = fields + list(cls.config_ignores)
    for k in raw:
        if not isinstance(k, str):
            raise TypeError(f"{desc}: parameter names must be strings, got {k!r}")
        if k not in accepted:
            raise ValueError(
                f"{desc}: unknown parameter {k!r}{closest(k, accepted)}; "
                f"{cls.__name__} takes {', '.join(accepted) or 'no parameters'}"
            )
    missing = [n for n in required_fields(cls) if n not in raw]
    if missing:
        raise ValueError(
            f"{desc}: missing required parameter(s) {', '.join(repr(m) for m in missing)} "
            f"of {cls.__name__}"
        )
    return raw


def _check_keys(item: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for k in item:
        if k not in allowed:
            raise ValueError(
                f"{where}: unknown key {k!r}{closest(str(k), allowed)}; an entry has "
                f"{', '.join(repr(a) for a in allowed)}"
            )


def _entry_name(item: Mapping[str, Any], where: str, index: int | None) -> str:
    if "name" not in item:
        return f"layer_{index}"
    name = item["name"]
    problem = _registry.layer_name_problem(name)
    if problem is not None:
        raise (TypeError if not isinstance(name, str) else ValueError)(f"{where}: {problem}")
    return name


def _is_entry_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, Mapping) for x in v)


def decode(doc: Any, where: str, sequence: type) -> Any:
    """The spec of a stored document: a list of entries (built into ``sequence``, the
    class with ``layers_field``) or one layer dict. Unlike :func:`funcmodels.from_config`
    it does not follow the chain of shapes: a file holds what a spec was, checked or not.
    """
    decoder = Decoder()
    if isinstance(doc, list):
        entries = decoder.entries(doc, where, "", 1)
        return sequence.from_fields(
            {sequence.layers_field: tuple((e.name, e.spec) for e in entries)}
        )
    if isinstance(doc, Mapping):
        return decoder.entry(doc, where, None, "", 1, root=True).spec
    raise ValueError(
        f"{where}: expected a list of layer entries or a layer dict, got {type(doc).__name__}"
    )
