"""Reading JSON and YAML documents (configs, stored specs) within fixed bounds.

Every document is plain data, read without evaluating anything, and refused with a
``ValueError`` naming the file (and the line or entry) when it is ambiguous or hostile:

* a mapping that repeats a key (JSON and YAML alike: the last value would silently win);
* a document over :data:`MAX_BYTES` (YAML: :data:`MAX_YAML_BYTES`), refused before it
  is parsed;
* more than :data:`MAX_VALUES` values, counted as if every YAML alias were copied out (a
  few hundred bytes of nested aliases otherwise stand for 10^9 values);
* an integer of more than :data:`MAX_DIGITS` digits (Python's own limit otherwise fails
  with a message that names neither the file nor the entry).

YAML merge keys (``<<: *base``) are read as ``yaml.safe_load`` reads them; the keys written
in the mapping itself override the merged ones. The C loader (``yaml.CSafeLoader``) is
used where PyYAML was built with it (parsing 10^5 entries takes seconds in pure Python).

This module imports nothing from the package.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: the largest JSON config or stored spec read, in bytes (about 1 s of CPU at the limit)
MAX_BYTES = 4 * 2**20
#: the largest YAML config read, in bytes: PyYAML composes even with its C parser at
#: about 30 us a node (NOTES.md), so 512 KiB (40,000 one-line entries) take about 1.3 s
MAX_YAML_BYTES = 2**19
#: the most values (scalars, lists and mappings, aliases counted as copies) one document holds
MAX_VALUES = 2_000_000
#: the most digits an integer of a document may have (sizes and counts need under 20)
MAX_DIGITS = 100


def show_int(n: int) -> str:
    """``n`` for a message; ``'about 10^5000'`` where ``str(n)`` is refused or too long."""
    if n.bit_length() <= 64:
        return str(n)
    return f"{'-' if n < 0 else ''}about 10^{int(abs(n).bit_length() * math.log10(2))}"


def check_size(size: int, where: str, *, yaml: bool = False) -> None:
    """Refuse a document of ``size`` bytes over :data:`MAX_BYTES` (:data:`MAX_YAML_BYTES`
    for YAML)."""
    limit = MAX_YAML_BYTES if yaml else MAX_BYTES
    if size > limit:
        kind = "YAML configs" if yaml else "JSON configs and stored specs"
        raise ValueError(
            f"{where}: the document is {size} bytes; {kind} are read up to {limit} bytes "
            f"({limit // 2**10} KiB)"
        )


class _LongInt:
    """Stands in for an integer literal of more than :data:`MAX_DIGITS` digits until its
    place in the document is known (a JSON hook sees the digits, not the entry)."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str) -> int | _LongInt:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_DIGITS else _LongInt(digits)


def _no_repeats(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"{where}: the key {k!r} appears twice in one mapping")
            out[k] = v
        return out

    return hook


def _entry_path(root: str, path: list[object]) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _check_values(data: Any, where: str, root: str) -> None:
    """Count the values of parsed JSON and find a :class:`_LongInt`, naming its entry.

    Iterative, so a document nested as deep as JSON allows never exhausts the stack here.
    """
    count, stack = 0, [(data, [])]
    while stack:
        value, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(f"{where}: more than {MAX_VALUES} values in one document")
        if isinstance(value, _LongInt):
            raise ValueError(
                f"{where}: {_entry_path(root, path)} is an integer of {value.digits} digits; "
                f"documents hold integers of at most {MAX_DIGITS} digits"
            )
        if isinstance(value, dict):
            stack.extend((v, [*path, k]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(value))


def parse_json(text: str, where: str, root: str = "config") -> Any:
    """Parse a JSON document: repeated keys, long integers and size refused.

    Arguments:
        text: the document.
        where: the caller and the file, the start of every message.
        root: how the document's top is named in messages (``config[3].params.n``).

    Returns:
        the parsed data (dicts, lists, scalars).

    Raises:
        ValueError: not valid JSON, or refused as the module docstring says.
        RecursionError: nested deeper than the JSON parser reads (callers say so).
    """
    check_size(len(text), where)
    try:
        data = json.loads(text, object_pairs_hook=_no_repeats(where), parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from e
    _check_values(data, where, root)
    return data


def _yaml_loader(where: str) -> type:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        """``safe_load``'s rules; a repeated key and a long integer are refused."""

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        keys = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden; construct_mapping merges them
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # construct_mapping reports an unhashable key
            if key in keys:
                raise ValueError(
                    f"{where}, line {key_node.start_mark.line + 1}: the key {key!r} appears "
                    "twice in one mapping"
                )
            keys.add(key)
        return loader.construct_mapping(node, deep=deep)

    def integer(loader: Any, node: Any) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_DIGITS:
            raise ValueError(
                f"{where}, line {node.start_mark.line + 1}: an integer of {digits} digits; "
                f"documents hold integers of at most {MAX_DIGITS} digits"
            )
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    return Loader


def _expanded_size(node: Any, where: str) -> int:
    """The number of values ``node`` stands for with every alias copied out, computed
    once per node (so an alias bomb is measured, not expanded), and iteratively."""
    sizes: dict[int, int] = {}
    # the nodes being expanded: the ancestors of the node popped (a node met again among
    # them is an alias inside its own anchor, a document without end)
    expanding: set[int] = set()
    stack = [(node, False)]
    while stack:
        n, ready = stack.pop()
        if id(n) in sizes:
            continue
        kids = _yaml_children(n)
        if not ready:
            if id(n) in expanding:
                line = getattr(getattr(n, "start_mark", None), "line", None)
                at = f", line {line + 1}" if line is not None else ""
                raise ValueError(
                    f"{where}{at}: an alias refers to a node that contains it, so the document "
                    "never ends; a config is a tree (use one anchor per repeated part)"
                )
            expanding.add(id(n))
            stack.append((n, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        expanding.discard(id(n))
        size = 1 + sum(sizes[id(k)] for k in kids)
        if size > MAX_VALUES:
            raise ValueError(
                f"{where}: the document stands for more than {MAX_VALUES} values (aliases "
                "counted as copies); funcmodels reads at most that many"
            )
        sizes[id(n)] = size
    return sizes[id(node)]


def _yaml_children(node: Any) -> list:
    if isinstance(node.value, list):
        return [x for item in node.value for x in (item if isinstance(item, tuple) else (item,))]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """Parse a YAML document with ``yaml.safe_load``'s rules, bounded as the module says.

    Arguments:
        text: the document.
        where: the caller and the file, the start of every message.

    Returns:
        the parsed data.

    Raises:
        ValueError: not valid YAML, or refused as the module docstring says.
        RecursionError: nested deeper than PyYAML composes (callers say so).
    """
    import yaml

    check_size(len(text.encode("utf-8")), where, yaml=True)
    loader = _yaml_loader(where)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(f"{where} is not valid YAML: {e}") from e
    finally:
        loader.dispose()
