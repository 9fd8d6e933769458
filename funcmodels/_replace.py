"""Spec surgery: a spec with some of its layers replaced (see :func:`replace_layers`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ._context import layer_name
from ._spec import Spec


def replace_layers(spec: Spec, new: Mapping[str, Spec]) -> Spec:
    """``spec`` with the layers at the given paths replaced by other specs.

    Each replaced layer's parents are rebuilt around it (with ``from_fields``), and every
    other layer is the same object as before, so a transform that turns some layers into
    others (``Linear`` into ``SparseLinear``, an ``MoE`` into its expert-parallel form, a
    ``Conv2d`` and its ``BatchNorm2d`` into one folded layer) keeps the rest of the spec
    as it was; with the matching entries (``fm.to_state_dict``, edited) the new model
    loads with ``fm.from_state_dict``.

    A child is replaced through the dataclass field that holds it: a spec field, a tuple
    of specs, or the ``(name, spec)`` pairs of the ``layers_field`` (``Sequential``). A
    layer that builds a child from its fields in another way (a ``Stack``'s member, an
    ``MoE``'s gate made from its width) cannot have it replaced.

    Arguments:
        spec: the model's spec.
        new: layer path (dotted, as ``Spec.walk`` yields it without the trailing dot:
            ``'encoder.fc1'``; ``''`` for the root) -> the spec to put there.

    Returns:
        the new spec (``spec`` itself when ``new`` is empty).

    Raises:
        TypeError: ``spec`` or a value of ``new`` is not a spec, or a path not a string.
        ValueError: a path names no layer of ``spec``, or a layer whose parent builds it
            from its fields in its own way (both named).
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"replace_layers: expected a spec, got {type(spec).__name__}")
    if not isinstance(new, Mapping):
        raise TypeError(
            f"replace_layers: expected a mapping of layer paths to specs, got {type(new).__name__}"
        )
    layers = {prefix for prefix, _ in spec.walk()}
    prefixes = {}
    for path, layer in new.items():
        if not isinstance(path, str):
            raise TypeError(f"replace_layers: layer paths are strings, got {path!r}")
        if not isinstance(layer, Spec):
            raise TypeError(
                f"replace_layers: the layer for '{path}' must be a spec, got {type(layer).__name__}"
            )
        prefix = f"{path}." if path else ""
        if prefix not in layers:
            raise ValueError(
                f"replace_layers: {spec.type_name} has no layer at '{path}'; its layers: "
                f"{sorted(p[:-1] for p in layers if p)}"
            )
        prefixes[prefix] = layer
    return _rewrite(spec, "", prefixes)


def _rewrite(spec: Spec, prefix: str, new: Mapping[str, Spec]) -> Spec:
    """``spec`` (at ``prefix``) with the layers at the prefixes in ``new`` replaced."""
    if prefix in new:
        return new[prefix]
    if not any(p.startswith(prefix) for p in new):
        return spec
    children = dict(spec.children())
    changes: dict[str, object] = {}
    done: set[str] = set()
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name == type(spec).layers_field:
            items = tuple(
                (n, _rewrite(c, f"{prefix}{n}.", new)) if children.get(n) is c else (n, c)
                for n, c in value
            )
            done.update(n for n, c in value if children.get(n) is c)
            if any(a[1] is not b[1] for a, b in zip(items, value, strict=True)):
                changes[f.name] = items
        elif isinstance(value, Spec):
            names = [n for n, c in children.items() if c is value]
            if len(names) == 1:
                rewritten = _rewrite(value, f"{prefix}{names[0]}.", new)
                done.add(names[0])
                if rewritten is not value:
                    changes[f.name] = rewritten
        elif isinstance(value, tuple) and value and all(isinstance(v, Spec) for v in value):
            items = []
            for v in value:
                names = [n for n, c in children.items() if c is v]
                if len(names) == 1:
                    done.add(names[0])
                    items.append(_rewrite(v, f"{prefix}{names[0]}.", new))
                else:
                    items.append(v)
            if any(a is not b for a, b in zip(items, value, strict=True)):
                changes[f.name] = tuple(items)
    for path in new:
        if path.startswith(prefix) and path[len(prefix) :].split(".")[0] not in done:
            raise ValueError(
                f"layer '{layer_name(path)}' cannot be replaced: {spec.type_name} at "
                f"'{layer_name(prefix)}' builds that child from its fields in its own way"
            )
    if not changes:
        return spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    return type(spec).from_fields({**fields, **changes})
