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
  ``linear``; every layer by its type name (``conv1d``, ``layernorm``, ``groupnorm``,
  ``residual_block``, ``sequential``, ``stack``, ...); and the names other packages add
  (their spec classes register when imported; aliases with :func:`register_layer`). Case,
  ``_`` and ``-`` do not matter.
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
Configs nested deeper than 100 levels are refused (see :mod:`funcmodels._encode`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import _documents, nn
from ._encode import Decoder, Entry
from ._shapes import Shape, check_input_shape, has_shape_rule
from ._spec import Spec, layer_name

Config = list[dict[str, Any]] | dict[str, Any]


def from_config(
    config: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    variables: Mapping[str, bool] | None = None,
    input_shape: Sequence[int | None] | None = None,
) -> Spec:
    """Build a spec from a config: a list of layer entries (or one entry).

    See the module docstring for the format; :meth:`Spec.to_config` writes it. Every
    entry is checked (types, parameter names and values, names, conditions) and so is the
    chain of shapes: with ``input_shape`` fully, without it as far as the config itself
    determines the sizes (channel counts, feature counts). No tensor is allocated.

    Arguments:
        config: a list of ``{'type', 'params', 'name', 'condition'}`` dicts, as read by
            :func:`load_config`; or a single ``{'type', 'params'}`` dict for one layer.
        variables: the flags that string ``condition`` values name, e.g.
            ``{'use_dropout': False}``.
        input_shape: the shape of one example (no batch dim); when given, the returned
            spec has every omitted size filled in.

    Returns:
        A :class:`~funcmodels.nn.Sequential` for a list, the layer itself for one entry.

    Raises:
        TypeError: ``config`` is not a list or a dict, or an entry has a wrong type.
        ValueError: an entry names an unknown layer or parameter, a value is out of range,
            or the shapes do not chain; the message names the entry.

    Example:
        ```python
        spec = fm.from_config(
            [{"type": "linear", "name": "fc", "params": {"out_features": 4}}, {"type": "relu"}],
            input_shape=(3,),
        )
        assert fm.init(fm.key(0), spec)["fc.weight"].shape == (4, 3)
        ```
    """
    decoder = Decoder(_check_variables(variables))
    shape = None if input_shape is None else check_input_shape(input_shape, "fm.from_config")
    if isinstance(config, Mapping):
        entries = [decoder.entry(config, "config", None, "", 1, root=True)]
    elif isinstance(config, (list, tuple)):
        entries = decoder.entries(config, "config", "", 1)
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
    try:
        return nn.Sequential(dict(items))
    except (TypeError, ValueError) as e:
        raise type(e)(f"config: {e}") from e


def _check_variables(variables: object) -> Mapping[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, Mapping) or not all(isinstance(k, str) for k in variables):
        raise TypeError(
            "fm.from_config: variables must be a dict of flag names to bools, such as "
            f"{{'use_dropout': True}}, got {variables!r}"
        )
    return variables


def _chain(entries: list[Entry], shape: Shape, symbolic: bool) -> tuple[list, Shape]:
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


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a config from a JSON (``.json``) or YAML (``.yaml``, ``.yml``) file.

    YAML is read with ``yaml.safe_load`` rules (plain data only, no tags that build
    objects; merge keys ``<<: *base`` merge), with PyYAML's C loader where it has one. What
    is ambiguous or hostile is refused with a ``ValueError`` naming the file (see
    :mod:`funcmodels._documents`): a mapping that repeats a key (rather than silently
    keeping the last value), a file over 4 MiB (512 KiB for YAML, which PyYAML reads
    slowly; checked before it is read), more than
    2,000,000 values (YAML aliases counted as copies), an integer of more than 100 digits
    (naming its line or entry), or a document nested too deeply to read.

    Arguments:
        path: the file.

    Returns:
        The list of layer entries (or one entry dict) for :func:`from_config`.

    Raises:
        OSError: the file cannot be read.
        ValueError: another extension, a malformed or too deeply nested document, a
            repeated key, a document that is not a list or a dict, or a bound above.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".yaml", ".yml"):
        raise ValueError(
            f"fm.load_config: {path!r}: expected a .json, .yaml or .yml file, got {ext!r}"
        )
    where = f"fm.load_config: {path!r}"
    with open(path, encoding="utf-8") as f:
        _documents.check_size(os.fstat(f.fileno()).st_size, where, yaml=ext != ".json")
        text = f.read()
    try:
        if ext == ".json":
            data = _documents.parse_json(text, where)
        else:
            data = _documents.parse_yaml(text, where)
    except RecursionError as e:
        raise ValueError(f"{where} is nested too deeply to read") from e
    if not isinstance(data, (list, dict)):
        raise ValueError(f"{where} holds a {type(data).__name__}; expected a list of layer entries")
    return data
