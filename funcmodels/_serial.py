"""Specs to JSON-able dicts and back, in the config format of layer dicts.

A layer is ``{"type": <registered type name>, "params": {<field>: value, ...}}``. Values
are JSON scalars, lists (tuples in the spec), or nested layer dicts (a field holding a
spec). A tuple of named children, as in :class:`~funcmodels.nn.Sequential`, is a list of
layer dicts that also carry ``"name"``::

    {"type": "Sequential", "params": {"layers": [
        {"name": "0", "type": "Linear", "params": {"in_features": 3, ...}}, ...]}}

Decoding looks types up by name in the spec registry and calls the class (or its
``from_fields`` classmethod when it has one); nothing in the document is evaluated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ._spec import Spec, registered_types

_SCALARS = (bool, int, str, type(None))


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """Encode a spec as a JSON-able layer dict.

    Every constructor field is written, defaults included, so that the document does not
    depend on the defaults of the version that reads it.

    Arguments:
        spec: any registered spec, composites included.

    Returns:
        ``{"type": name, "params": {...}}``; ``spec_from_dict`` of it equals ``spec``.
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"spec_to_dict: expected a layer spec, got {type(spec).__name__}")
    return _encode_spec(spec, "$")


def spec_from_dict(doc: Mapping[str, Any]) -> Spec:
    """Decode a layer dict made by :func:`spec_to_dict` (or written by hand).

    Arguments:
        doc: ``{"type": name, "params": {...}}``; omitted params take their defaults.

    Returns:
        The spec. Raises ``ValueError`` naming the place in the document (``$.params.
        layers[2].params.kernel_size``) for an unknown type, an unknown or missing field,
        or a value the layer rejects.
    """
    return _decode_layer(doc, "$")


def _encode_spec(spec: Spec, where: str) -> dict[str, Any]:
    cls = type(spec)
    if registered_types().get(cls.type_name) is not cls:
        raise TypeError(
            f"{where}: {cls.__qualname__} is not a registered spec type (private classes, "
            "whose name starts with '_', cannot be serialised)"
        )
    params = {
        f.name: _encode_value(getattr(spec, f.name), f"{where}.params.{f.name}")
        for f in dataclasses.fields(spec)
        if f.init
    }
    return {"type": cls.type_name, "params": params}


def _is_named_child(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], Spec)


def required_fields(cls: type) -> list[str]:
    """Init fields of a spec class that have no default."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _encode_value(v: Any, where: str) -> Any:
    if isinstance(v, _SCALARS):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{where}: {v!r} has no JSON form")
        return v
    if isinstance(v, Spec):
        return _encode_spec(v, where)
    if isinstance(v, tuple):
        if v and all(_is_named_child(item) for item in v):
            return [
                {"name": name, **_encode_spec(child, f"{where}[{i}]")}
                for i, (name, child) in enumerate(v)
            ]
        return [_encode_value(item, f"{where}[{i}]") for i, item in enumerate(v)]
    raise TypeError(
        f"{where}: cannot serialise a {type(v).__name__} ({v!r}); spec fields must be "
        "None, bool, int, float, str, specs, or tuples of these"
    )


def _decode_value(v: Any, where: str) -> Any:
    if isinstance(v, _SCALARS) or isinstance(v, float):
        return v
    if isinstance(v, Mapping):
        return _decode_layer(v, where)
    if isinstance(v, list):
        if v and all(isinstance(item, Mapping) and "name" in item for item in v):
            named = tuple(_decode_named(item, f"{where}[{i}]") for i, item in enumerate(v))
            seen: dict[str, int] = {}
            for i, (name, _) in enumerate(named):
                if name in seen:
                    raise ValueError(
                        f"{where}[{i}].name: duplicate name {name!r} "
                        f"(also at {where}[{seen[name]}])"
                    )
                seen[name] = i
            return named
        return tuple(_decode_value(item, f"{where}[{i}]") for i, item in enumerate(v))
    raise ValueError(
        f"{where}: expected a JSON value (null, bool, number, string, list or layer dict), "
        f"got {type(v).__name__}"
    )


def _decode_named(item: Mapping[str, Any], where: str) -> tuple[str, Spec]:
    name = item["name"]
    if not isinstance(name, str):
        raise ValueError(f"{where}.name: expected a string, got {name!r}")
    rest = {k: v for k, v in item.items() if k != "name"}
    return name, _decode_layer(rest, where)


def _decode_layer(doc: Any, where: str) -> Spec:
    if not isinstance(doc, Mapping):
        raise ValueError(
            f"{where}: expected a layer dict {{'type': ..., 'params': {{...}}}}, "
            f"got {type(doc).__name__}"
        )
    extra = sorted(set(doc) - {"type", "params"})
    if extra:
        raise ValueError(f"{where}: unexpected keys {extra}; a layer has 'type' and 'params'")
    if "type" not in doc:
        raise ValueError(f"{where}: missing 'type' (a layer type name such as 'Linear')")
    name = doc["type"]
    types = registered_types()
    if not isinstance(name, str) or name not in types:
        raise ValueError(
            f"{where}.type: unknown layer type {name!r}; known types: {sorted(types)} "
            "(types defined in the transforms package register when it is imported)"
        )
    cls = types[name]
    raw = doc.get("params", {})
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}.params: expected a dict of fields, got {type(raw).__name__}")
    allowed = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in raw if k not in allowed)
    if unknown:
        raise ValueError(
            f"{where}.params: {name} has no field(s) {unknown}; its fields are {list(allowed)}"
        )
    missing = [n for n in required_fields(cls) if n not in raw]
    if missing:
        raise ValueError(f"{where}.params: {name} needs field(s) {missing}")
    fields = {k: _decode_value(v, f"{where}.params.{k}") for k, v in raw.items()}
    try:
        from_fields = getattr(cls, "from_fields", None)
        return from_fields(fields) if from_fields is not None else cls(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {name} rejected its params: {e}") from e
