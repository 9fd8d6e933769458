"""Models described as data: lists of layer dicts, as in JSON or YAML files.

A config is a list of layer entries, built into a :class:`~funcmodels.nn.Sequential`::

    [{"type": "conv", "params": {"out_channels": 16, "kernel_size": 3}, "name": "stem"},
     {"type": "bn"},
     {"type": "relu", "params": {"inplace": True}},
     {"type": "dropout", "params": {"p": 0.5}, "condition": "use_dropout"},
     {"type": "flatten"},
     {"type": "linear", "params": {"out_features": 10}, "name": "head"}]

* ``type`` names a layer: the short aliases ``conv`` (Conv2d), ``bn`` (BatchNorm2d),
  ``relu``, ``pool`` (MaxPool2d), ``adaptive_pool`` (AdaptiveAvgPool2d), ``dropout`` and
  ``linear``; every layer of :mod:`funcmodels.nn` by its lower-case name (``conv1d``,
  ``layernorm``, ``groupnorm``, ``residual_block``, ``sequential``, ...); and the types
  other packages add with :func:`register_layer`. Case, ``_`` and ``-`` do not matter.
* ``params`` are the layer's constructor arguments. Sizes the layer can infer
  (``in_features``, ``in_channels``, ``num_features``, ...) may be left out. A parameter
  holding a layer (``activation`` of ``residual_block``) takes a nested ``{"type", "params"}``
  dict; a ``sequential`` takes its ``layers`` as a nested list of entries. torch's
  ``inplace`` flag is accepted on activations and dropout and has no effect: layers here
  never modify their input.
* ``name`` is the child's name, so its parameters are ``params['stem']`` and its
  ``state_dict`` keys ``stem.weight``; an unnamed entry at index ``i`` is ``layer_{i}``.
* ``condition`` is a bool, or the name of a flag looked up in ``variables``; an entry whose
  condition is false is left out (it is still checked).

Nothing in a config is evaluated as code. Every mistake is reported before any tensor
exists, as a ``ValueError`` or ``TypeError`` naming the entry (``config[3]``, its name and
type) and what is wrong, with the closest valid name for a misspelt type or parameter.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import nn
from ._serial import _encode_value, required_fields
from ._shapes import Shape, check_input_shape, has_shape_rule
from ._spec import Spec, layer_name, registered_types
from .nn._activation import _Elementwise

Config = list[dict[str, Any]] | dict[str, Any]

_ENTRY_KEYS = ("type", "params", "name", "condition")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")

# Display name -> spec class, in registration order; the first name of a class is the one
# that to_config writes.
_TYPES: dict[str, type[Spec]] = {}
_KEYS: dict[str, str] = {}  # normalised name -> display name
_CANONICAL: dict[type[Spec], str] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def register_layer(type_name: str, spec_class: type[Spec]) -> None:
    """Make ``type_name`` a config ``type`` for ``spec_class``.

    Packages that define their own specs call this at import, so configs can name their
    layers without the core importing them. Names are matched ignoring case, ``_`` and
    ``-``; the first name registered for a class is the one :meth:`Spec.to_config` writes.

    Arguments:
        type_name: a name such as ``'moe'``: a letter, then letters, digits, ``_``, ``-``.
        spec_class: a frozen-dataclass subclass of :class:`~funcmodels.Spec`; config
            ``params`` are its fields.

    Raises ``ValueError`` if the name is taken by another class.
    """
    if not isinstance(type_name, str) or not _NAME.match(type_name):
        raise ValueError(
            f"fm.register_layer: type_name must be a letter followed by letters, digits, "
            f"'_' or '-', got {type_name!r}"
        )
    if not (
        isinstance(spec_class, type)
        and issubclass(spec_class, Spec)
        and dataclasses.is_dataclass(spec_class)
    ):
        raise TypeError(
            f"fm.register_layer({type_name!r}, ...): expected a Spec subclass that is a "
            f"dataclass, got {spec_class!r}"
        )
    key = _key(type_name)
    taken = _KEYS.get(key)
    if taken is not None:
        if _TYPES[taken] is spec_class:
            return
        raise ValueError(
            f"fm.register_layer: {type_name!r} is already the config type of "
            f"{_TYPES[taken].__qualname__} (as {taken!r})"
        )
    _TYPES[type_name] = spec_class
    _KEYS[key] = type_name
    _CANONICAL.setdefault(spec_class, type_name)


for _name, _cls in (
    ("linear", nn.Linear),
    ("conv1d", nn.Conv1d),
    ("conv2d", nn.Conv2d),
    ("batchnorm1d", nn.BatchNorm1d),
    ("batchnorm2d", nn.BatchNorm2d),
    ("layernorm", nn.LayerNorm),
    ("groupnorm", nn.GroupNorm),
    ("identity", nn.Identity),
    ("relu", nn.ReLU),
    ("gelu", nn.GELU),
    ("silu", nn.SiLU),
    ("sigmoid", nn.Sigmoid),
    ("tanh", nn.Tanh),
    ("softmax", nn.Softmax),
    ("logsoftmax", nn.LogSoftmax),
    ("dropout", nn.Dropout),
    ("maxpool2d", nn.MaxPool2d),
    ("avgpool2d", nn.AvgPool2d),
    ("adaptiveavgpool1d", nn.AdaptiveAvgPool1d),
    ("adaptiveavgpool2d", nn.AdaptiveAvgPool2d),
    ("flatten", nn.Flatten),
    ("sequential", nn.Sequential),
    ("residual_block", nn.ResidualBlock),
    # The seed article's short names.
    ("conv", nn.Conv2d),
    ("bn", nn.BatchNorm2d),
    ("pool", nn.MaxPool2d),
    ("adaptive_pool", nn.AdaptiveAvgPool2d),
):
    register_layer(_name, _cls)


def _closest(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _lookup(type_name: str) -> type[Spec] | None:
    """The class for a config type: a registered name, or a spec class's own name."""
    key = _key(type_name)
    if key in _KEYS:
        return _TYPES[_KEYS[key]]
    for cls_name, cls in registered_types().items():
        if _key(cls_name) == key:
            return cls
    return None


def _accepts_inplace(cls: type[Spec]) -> bool:
    return issubclass(cls, (_Elementwise, nn.Dropout))


@dataclasses.dataclass
class _Entry:
    """One kept entry of a config list, with what its messages need."""

    where: str
    name: str
    path: str
    type: str
    spec: Spec
    #: the kept entries of a ``sequential`` entry, checked one by one along the chain
    children: list[_Entry] | None = None

    def describe(self) -> str:
        return _describe(self.where, self.path, self.type)


def _describe(where: str, path: str | None, type_name: object) -> str:
    name = f"name '{path}', " if path is not None else ""
    return f"{where} ({name}type {type_name!r})"


def from_config(
    config: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    variables: Mapping[str, bool] | None = None,
    input_shape: Sequence[int | None] | None = None,
) -> Spec:
    """Build a spec from a config: a list of layer entries (or one entry).

    See the module docstring for the format. Every entry is checked (types, parameter
    names and values, names, conditions) and so is the chain of shapes: with
    ``input_shape`` fully, without it as far as the config itself determines the sizes
    (channel counts, feature counts). No tensor is allocated.

    Arguments:
        config: a list of ``{'type', 'params', 'name', 'condition'}`` dicts, as read by
            :func:`load_config`; or a single ``{'type', 'params'}`` dict for one layer.
        variables: the flags that string ``condition`` values name, e.g.
            ``{'use_dropout': False}``.
        input_shape: the shape of one example (no batch dim); when given, the returned
            spec has every omitted size filled in.

    Returns:
        A :class:`~funcmodels.nn.Sequential` for a list, the layer itself for one entry.
    """
    flags = _check_variables(variables)
    shape = None if input_shape is None else check_input_shape(input_shape, "fm.from_config")
    if isinstance(config, Mapping):
        entries = [_entry(config, "config", None, "", flags, root=True)]
    elif isinstance(config, (list, tuple)):
        entries = _entries(config, "config", "", flags)
    else:
        hint = " (to read a file, use fm.load_config(path))" if isinstance(config, str) else ""
        raise TypeError(
            f"fm.from_config: expected a list of layer entries such as "
            f"[{{'type': 'linear', 'params': {{'out_features': 10}}}}], got "
            f"{type(config).__name__}{hint}"
        )
    items, _ = _chain(entries, (...,) if shape is None else shape, symbolic=shape is None)
    if shape is None:
        items = [(e.name, e.spec) for e in entries]
    if isinstance(config, Mapping):
        return items[0][1]
    return nn.Sequential(dict(items))


def _check_variables(variables: object) -> Mapping[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, Mapping) or not all(isinstance(k, str) for k in variables):
        raise TypeError(
            "fm.from_config: variables must be a dict of flag names to bools, such as "
            f"{{'use_dropout': True}}, got {variables!r}"
        )
    return variables


def _entries(
    items: Sequence[Any], where: str, prefix: str, flags: Mapping[str, Any]
) -> list[_Entry]:
    kept: list[_Entry] = []
    seen: dict[str, _Entry] = {}
    for i, item in enumerate(items):
        entry = _entry(item, f"{where}[{i}]", i, prefix, flags)
        if entry is None:
            continue
        if entry.name in seen:
            raise ValueError(
                f"{entry.describe()}: duplicate name {entry.name!r} (also the name of "
                f"{seen[entry.name].where}); names become parameter paths and must be unique"
            )
        seen[entry.name] = entry
        kept.append(entry)
    return kept


def _entry(
    item: Any,
    where: str,
    index: int | None,
    prefix: str,
    flags: Mapping[str, Any],
    root: bool = False,
) -> _Entry | None:
    """Check and build one entry; ``None`` when its condition leaves it out."""
    if not isinstance(item, Mapping):
        raise TypeError(
            f"{where}: expected a layer entry such as {{'type': 'relu'}}, got "
            f"{type(item).__name__} {item!r:.80}"
        )
    _check_keys(item, where, ("type", "params") if root else _ENTRY_KEYS)
    name = "" if root else _entry_name(item, where, index)
    path = "" if root else prefix + name
    shown = None if root else path
    keep = _condition(item, _describe(where, shown, item.get("type")), flags)
    spec, children = _layer(item, where, shown, prefix if root else path + ".", flags)
    if not keep:
        return None
    return _Entry(where, name, path, item["type"], spec, children)


def _check_keys(item: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for k in item:
        if k not in allowed:
            raise ValueError(
                f"{where}: unknown key {k!r}{_closest(str(k), allowed)}; an entry has "
                f"{', '.join(repr(a) for a in allowed)}"
            )


def _entry_name(item: Mapping[str, Any], where: str, index: int | None) -> str:
    if "name" not in item:
        return f"layer_{index}"
    name = item["name"]
    if not isinstance(name, str):
        raise TypeError(f"{where}: name must be a string, got {type(name).__name__} {name!r}")
    if not name or "." in name:
        raise ValueError(
            f"{where}: invalid name {name!r}; a name is a non-empty string without '.' "
            "(it becomes a parameter path segment)"
        )
    return name


def _condition(item: Mapping[str, Any], desc: str, flags: Mapping[str, Any]) -> bool:
    if "condition" not in item:
        return True
    cond = item["condition"]
    if isinstance(cond, bool):
        return cond
    if not isinstance(cond, str):
        raise TypeError(
            f"{desc}: condition must be a bool or the name of a flag in variables, got "
            f"{type(cond).__name__} {cond!r}"
        )
    if cond not in flags:
        raise ValueError(
            f"{desc}: condition {cond!r} is not a flag in variables"
            f"{_closest(cond, list(flags))}; flags given: {sorted(flags)}"
        )
    value = flags[cond]
    if not isinstance(value, bool):
        raise TypeError(
            f"{desc}: flag {cond!r} must be a bool, got {type(value).__name__} {value!r}"
        )
    return value


def _layer(
    item: Mapping[str, Any],
    where: str,
    path: str | None,
    child_prefix: str,
    flags: Mapping[str, Any],
) -> tuple[Spec, list[_Entry] | None]:
    """Build the spec of a ``{'type', 'params'}`` dict (also nested ones)."""
    type_name = item.get("type")
    desc = _describe(where, path, type_name)
    if "type" not in item:
        raise ValueError(f"{desc}: missing 'type' (a layer type such as 'linear')")
    if not isinstance(type_name, str):
        raise TypeError(
            f"{desc}: type must be a string such as 'linear', got {type(type_name).__name__}"
        )
    cls = _lookup(type_name)
    if cls is None:
        raise ValueError(
            f"{desc}: unknown layer type {type_name!r}{_closest(type_name, list(_TYPES))}; "
            f"known types: {', '.join(sorted(_TYPES))} (other packages add theirs with "
            "fm.register_layer)"
        )
    raw = item.get("params")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{desc}: params must be a dict of {cls.__name__}'s arguments, got "
            f"{type(raw).__name__} {raw!r:.80}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    accepted = list(fields) + (["inplace"] if _accepts_inplace(cls) else [])
    for k in raw:
        if not isinstance(k, str):
            raise TypeError(f"{desc}: parameter names must be strings, got {k!r}")
        if k not in accepted:
            raise ValueError(
                f"{desc}: unknown parameter {k!r}{_closest(k, accepted)}; "
                f"{cls.__name__} takes {', '.join(accepted) or 'no parameters'}"
            )
    missing = [n for n in required_fields(cls) if n not in raw]
    if missing:
        raise ValueError(
            f"{desc}: missing required parameter(s) {', '.join(repr(m) for m in missing)} "
            f"of {cls.__name__}"
        )
    if "inplace" in raw and not isinstance(raw["inplace"], bool):
        raise TypeError(f"{desc}: inplace must be a bool, got {raw['inplace']!r}")
    values: dict[str, Any] = {}
    children: list[_Entry] | None = None
    for k, v in raw.items():
        if k == "inplace":
            continue  # torch's flag: nothing here is ever modified in place
        at = f"{where}.params.{k}"
        if cls is nn.Sequential and k == "layers":
            if not isinstance(v, (list, tuple)):
                raise TypeError(
                    f"{desc}: layers must be a list of layer entries, got {type(v).__name__}"
                )
            children = _entries(v, at, child_prefix, flags)
            values[k] = tuple((e.name, e.spec) for e in children)
        elif _is_entry_list(v) and v and all("name" in x for x in v):
            # Named children, as spec_to_dict writes them for any layer that has some.
            values[k] = tuple((e.name, e.spec) for e in _entries(v, at, child_prefix, flags))
        else:
            values[k] = _value(v, at, desc, child_prefix + k, flags)
    try:
        from_fields = getattr(cls, "from_fields", None)
        spec = from_fields(values) if from_fields is not None else cls(**values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{desc}: {e}") from e
    return spec, children


def _is_entry_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, Mapping) for x in v)


def _value(v: Any, where: str, desc: str, path: str, flags: Mapping[str, Any]) -> Any:
    """A parameter value: scalars as they are, lists as tuples, dicts as nested layers."""
    if v is None or isinstance(v, (bool, int, float, str, Spec)):
        return v
    if isinstance(v, Mapping):
        try:
            _check_keys(v, where, ("type", "params"))
            return _layer(v, where, None, path + ".", flags)[0]
        except (TypeError, ValueError) as e:
            raise type(e)(f"{desc}: {e}") from e
    if isinstance(v, (list, tuple)):
        return tuple(_value(x, f"{where}[{i}]", desc, path, flags) for i, x in enumerate(v))
    raise TypeError(
        f"{desc}: {where} cannot be a {type(v).__name__} ({v!r:.80}); parameter values are "
        "numbers, strings, bools, null, lists, or nested layer dicts"
    )


def _chain(entries: list[_Entry], shape: Shape, symbolic: bool) -> tuple[list, Shape]:
    """Resolve and check each entry along the chain of shapes, naming the entry at fault.

    ``symbolic``: no input shape was given, so sizes the config does not fix are unknown,
    and a layer without shape rules leaves the rest of the chain unchecked.
    """
    items = []
    for e in entries:
        if e.children is not None:
            sub, shape = _chain(e.children, shape, symbolic)
            spec = nn.Sequential(dict(sub))
        elif symbolic and not has_shape_rule(e.spec):
            spec, shape = e.spec, (...,)
        else:
            prefix = f"{e.path}." if e.path else ""
            try:
                spec = e.spec.resolve(shape, prefix)
                shape = spec.out_shape(shape, prefix)
            except (TypeError, ValueError) as err:
                own = f"layer '{layer_name(prefix)}' ({e.spec.type_name}): "
                msg = str(err).removeprefix(own)
                raise type(err)(f"{e.describe()}: {msg}") from err
        items.append((e.name, spec))
    return items, shape


def to_config(spec: Spec) -> Config:
    """The config of ``spec`` (see :meth:`Spec.to_config`)."""
    if not isinstance(spec, Spec):
        raise TypeError(f"to_config: expected a layer spec, got {type(spec).__name__}")
    if type(spec) is nn.Sequential:
        return [_entry_of(child, name, i, True) for i, (name, child) in enumerate(spec.layers)]
    return _layer_of(spec, "spec")


def _config_name(cls: type[Spec], where: str) -> str:
    if cls in _CANONICAL:
        return _CANONICAL[cls]
    if registered_types().get(cls.type_name) is cls:
        return cls.type_name
    raise TypeError(
        f"{where}: {cls.__qualname__} has no config type name; register it with "
        "fm.register_layer(name, cls)"
    )


def _is_default(spec: Spec, f: dataclasses.Field) -> bool:
    # Compared as specs, so a value the layer normalises (stride 1 -> (1, 1)) counts.
    return f.default is not dataclasses.MISSING and _same_as(spec, f.name, f.default)


def _same_as(spec: Spec, name: str, value: Any) -> bool:
    """Whether the spec would be the same with ``value`` for field ``name``."""
    try:
        return dataclasses.replace(spec, **{name: value}) == spec
    except (TypeError, ValueError):
        return False


def _short(spec: Spec, name: str) -> Any:
    """A field's value, written as one int where the layer reads it so (``3`` for ``(3, 3)``)."""
    v = getattr(spec, name)
    if isinstance(v, tuple) and v and len(set(v)) == 1 and _same_as(spec, name, v[0]):
        return v[0]
    return v


def _layer_of(spec: Spec, where: str) -> dict[str, Any]:
    cls = type(spec)
    params = {
        f.name: _value_of(_short(spec, f.name), f"{where}.params.{f.name}", cls)
        for f in dataclasses.fields(spec)
        if f.init and not _is_default(spec, f)
    }
    out: dict[str, Any] = {"type": _config_name(cls, where)}
    if params:
        out["params"] = params
    return out


def _entry_of(child: Spec, name: str, index: int, default_names: bool) -> dict[str, Any]:
    out = _layer_of(child, f"config[{index}]")
    if not (default_names and name == f"layer_{index}"):
        out = {"type": out["type"], "name": name, **out}
    return out


def _is_named_child(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], Spec)


def _value_of(v: Any, where: str, owner: type[Spec]) -> Any:
    if isinstance(v, Spec):
        return _layer_of(v, where)
    if isinstance(v, tuple):
        if v and all(_is_named_child(x) for x in v):
            return [
                _entry_of(child, name, i, owner is nn.Sequential)
                for i, (name, child) in enumerate(v)
            ]
        return [_value_of(x, f"{where}[{i}]", owner) for i, x in enumerate(v)]
    return _encode_value(v, where)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a config from a JSON (``.json``) or YAML (``.yaml``, ``.yml``) file.

    YAML is read with ``yaml.safe_load``: plain data only, no tags that build objects.

    Arguments:
        path: the file.

    Returns:
        The list of layer entries (or one entry dict) for :func:`from_config`.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".yaml", ".yml"):
        raise ValueError(
            f"fm.load_config: {path!r}: expected a .json, .yaml or .yml file, got {ext!r}"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"fm.load_config: {path!r} is not valid JSON: {e}") from e
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"fm.load_config: {path!r} is not valid YAML: {e}") from e
    if not isinstance(data, (list, dict)):
        raise ValueError(
            f"fm.load_config: {path!r} holds a {type(data).__name__}; expected a list of "
            "layer entries"
        )
    return data
