"""Every public name of ``funcmodels`` and ``transforms`` is documented in one style.

The public names are the ``__all__`` lists of the modules in ``MODULES`` (a module without
one, ``transforms.distributed``, contributes the names without a leading ``_`` that it
defines itself). Each object is checked once, under the first name that reaches it.

What is enforced, for each public name:

1. **Summary line.** A docstring whose first line is a sentence (not empty, not a section
   title such as ``Arguments:``).
2. **No griffe warning.** Functions and classes: the docstring is parsed with griffe's
   Google parser (what mkdocstrings renders with), its parent given the runtime signature,
   and the parser may not log any warning: a malformed section, an entry that is not a
   ``name: description`` pair, a documented parameter that is not in the signature, or a
   parameter or returned value with no type (neither an annotation in the signature nor a
   type in the docstring) all fail. The public methods a public class defines itself, where
   they have a docstring, are parsed the same way.
3. **Arguments.** Every parameter of the signature is named in the ``Arguments:`` section
   (``self``/``cls`` excepted; ``*args``/``**kwargs`` are named as ``*args``/``**kwargs``).
   A class's signature is its constructor's; for a dataclass whose generated ``__init__``
   was replaced by a ``(*args, **kwargs)`` one (the layer specs), its init fields.
   A class may document a field in ``Attributes:`` instead, or by the string after the
   field (an attribute docstring, which mkdocstrings shows), as the NamedTuple states do.
   The docstring NamedTuple and dataclass generate (``Name(field, ...)``) does not count.
4. **Returns.** A function that returns something has a ``Returns:`` section (a
   generator: ``Yields:``): its return annotation is not ``None``, or, unannotated, its
   body has a ``return <value>``. The section is one entry (continuation lines indented),
   or several entries that are all named (``name: description``), so a paragraph is never
   split into rows.
5. **Raises.** A function whose own body has a ``raise SomeError(...)`` statement has a
   ``Raises:`` section naming ``SomeError`` (or a builtin base class of it: ``OSError``
   covers ``FileNotFoundError``).
6. **Examples run.** Every fenced ``python`` block of a docstring is executed, with
   ``fm`` (funcmodels), ``torch`` and ``transforms`` imported: an example shows values
   with ``assert``, so a wrong one fails.

Modules listed in an ``__all__`` need a docstring with a summary line; constants need a
docstring (the string after the assignment, which griffe reads and mkdocstrings shows).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import importlib
import inspect
import logging
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe
import pytest

MODULES = (
    "funcmodels",
    "funcmodels.nn",
    "funcmodels.optim",
    "funcmodels.optim.losses",
    "funcmodels.optim.projections",
    "funcmodels.optim.second_order",
    "funcmodels.optim.schedules",
    "funcmodels.optim.transforms",
    "funcmodels.optim.tree_utils",
    "funcmodels.optim.tree",
    "funcmodels.optim.contrib",
    "funcmodels.optim.microbatching",
    "funcmodels.optim.assignment",
    "funcmodels.optim.perturbations",
    "funcmodels.tree",
    "funcmodels.random",
    "funcmodels.checkpoint",
    "funcmodels.extend",
    "transforms",
    "transforms.sparse",
    "transforms.dp",
    "transforms.bridge",
    "transforms.moe",
    "transforms.early_exit",
    "transforms.distributed",
    "transforms.qat",
)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _module_names(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    if names is not None:
        return list(names)
    return [
        n
        for n, obj in vars(mod).items()
        if not n.startswith("_") and getattr(obj, "__module__", None) == modname
    ]


def public_names() -> list[tuple[str, Any]]:
    """``(qualified name, object)`` for every public name, each object once."""
    seen: set[int] = set()
    out = []
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name in _module_names(modname):
            obj = getattr(mod, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append((f"{modname}.{name}", obj))
    return out


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _signature(obj: Any) -> inspect.Signature:
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        own = inspect.signature(obj.__init__)
        kinds = {p.kind for n, p in own.parameters.items() if n != "self"}
        fields = [f for f in dataclasses.fields(obj) if f.init]
        if fields and kinds == {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            return inspect.Signature(
                [
                    inspect.Parameter(
                        f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=f.type
                    )
                    for f in fields
                ]
            )
    return inspect.signature(obj)


def _annotation(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return value if isinstance(value, str) else inspect.formatannotation(value)


def _griffe_parent(name: str, sig: inspect.Signature) -> griffe.Function:
    params = [
        griffe.Parameter(
            p.name,
            annotation=_annotation(p.annotation),
            kind=_KINDS[p.kind],
            default=None if p.default is inspect.Parameter.empty else repr(p.default),
        )
        for p in sig.parameters.values()
    ]
    return griffe.Function(
        name,
        parameters=griffe.Parameters(*params),
        returns=_annotation(sig.return_annotation),
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse(name: str, doc: str, sig: inspect.Signature) -> tuple[list[Any], list[str]]:
    """griffe's Google sections of ``doc`` and the warnings it logged parsing them."""
    handler = _Records()
    # griffe logs through its own logger object, which mkdocstrings re-points at
    # "mkdocs.plugins.griffe" once imported (the docs tests import it); and another
    # test's logging configuration may disable a logger or raise its level: neither may
    # silence what this check reads
    log = getattr(griffe.logger, "_logger", None) or logging.getLogger("griffe")
    log = getattr(log, "logger", log)  # a LoggerAdapter's logger
    disabled, level = log.disabled, log.level
    log.disabled = False
    log.setLevel(logging.WARNING)
    log.addHandler(handler)
    try:
        sections = griffe.Docstring(doc, parent=_griffe_parent(name, sig)).parse("google")
    finally:
        log.removeHandler(handler)
        log.disabled, log.level = disabled, level
    return sections, handler.messages


def _own_body(fn: Callable) -> ast.AST | None:
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
    except (OSError, TypeError):
        return None
    tree = ast.parse(source)
    return tree.body[0] if tree.body else None


def _walk_own(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not those of functions or classes nested in it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        yield child
        yield from _walk_own(child)


def _returns_value(fn: Callable, sig: inspect.Signature) -> bool:
    ann = sig.return_annotation
    if ann is not inspect.Signature.empty:
        return ann not in (None, "None", "NoReturn", "typing.NoReturn")
    body = _own_body(fn)
    return body is not None and any(
        isinstance(n, ast.Return) and n.value is not None for n in _walk_own(body)
    )


def _raised(fn: Callable) -> set[str]:
    body = _own_body(fn)
    if body is None:
        return set()
    out = set()
    for n in _walk_own(body):
        if isinstance(n, ast.Raise) and n.exc is not None:
            exc = n.exc.func if isinstance(n.exc, ast.Call) else n.exc
            if isinstance(exc, ast.Name) and exc.id[:1].isupper():
                out.add(exc.id)
    return out


def _covered(exc: str, documented: set[str]) -> bool:
    """``exc`` is documented, itself or as a builtin base class (``OSError`` for
    ``FileNotFoundError``)."""
    if exc in documented:
        return True
    cls = getattr(builtins, exc, None)
    bases = [getattr(builtins, d, None) for d in documented]
    return isinstance(cls, type) and any(isinstance(b, type) and issubclass(cls, b) for b in bases)


def _section(sections: list[Any], kind: str) -> Any:
    return next((s for s in sections if s.kind.value == kind), None)


def _summary_problem(doc: str | None) -> str | None:
    if not doc or not doc.strip():
        return "no docstring"
    first = doc.strip().splitlines()[0].strip()
    if first.endswith(":") and first[:-1].strip().lower() in (
        "arguments",
        "args",
        "returns",
        "raises",
        "example",
        "examples",
    ):
        return "no summary line"
    return None


def problems(name: str, obj: Any) -> list[str]:
    """What is missing from the documentation of one public object (empty when none)."""
    kind = _kind(obj)
    if kind == "constant":
        return _constant_problems(name)
    doc = inspect.getdoc(obj) if kind != "module" else obj.__doc__
    if kind == "class" and (doc or "").startswith(f"{obj.__name__}("):
        doc = None  # the docstring NamedTuple and dataclass write for a class without one
    bad = _summary_problem(doc)
    if bad or kind == "module":
        return [bad] if bad else []
    out = []
    try:
        sig = _signature(obj)
    except (TypeError, ValueError):
        sig = inspect.Signature()
    sections, warnings = parse(name, doc, sig)
    out += [f"griffe: {w}" for w in warnings]
    args = _section(sections, "parameters")
    attrs = _section(sections, "attributes") if kind == "class" else None
    named = {p.name.lstrip("*") for s in (args, attrs) if s for p in s.value}
    if kind == "class":
        named |= _documented_fields(name, obj)
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.name not in named
    ]
    if missing:
        out.append(f"Arguments: missing {', '.join(missing)}")
    if kind == "function":
        ret = _section(sections, "returns") or _section(sections, "yields")
        if _returns_value(obj, sig) and ret is None:
            out.append("no Returns section")
        if ret is not None and len(ret.value) > 1 and not all(r.name for r in ret.value):
            out.append("Returns: several unnamed entries (indent continuation lines)")
        raises = _section(sections, "raises")
        documented = {str(r.annotation) for r in raises.value} if raises else set()
        undocumented = sorted(e for e in _raised(obj) if not _covered(e, documented))
        if undocumented:
            out.append(f"Raises: missing {', '.join(undocumented)}")
    if kind == "class":
        out += _method_problems(obj)
    out += _example_problems(doc)
    return out


def _example_problems(doc: str) -> list[str]:
    import torch

    import funcmodels
    import transforms

    out = []
    for block in re.findall(r"```python\n(.*?)```", doc, re.S):
        try:
            exec(
                textwrap.dedent(block), {"fm": funcmodels, "torch": torch, "transforms": transforms}
            )
        except Exception as e:
            out.append(f"example fails: {type(e).__name__}: {e}")
    return out


@functools.cache
def _static_modules() -> griffe.ModulesCollection:
    loader = griffe.GriffeLoader(docstring_parser="google")
    for package in ("funcmodels", "transforms"):
        loader.load(package)
    return loader.modules_collection


def _constant_problems(name: str) -> list[str]:
    """A constant's docstring is the string after its assignment, read from the source."""
    modname, attr = name.rsplit(".", 1)
    member = _static_modules()[modname][attr]
    if member.is_alias:
        member = member.final_target
    bad = _summary_problem(member.docstring.value if member.docstring else None)
    return [bad] if bad else []


def _documented_fields(name: str, cls: type) -> set[str]:
    """Fields of ``cls`` documented by the string after them (read from the source)."""
    try:
        member = _static_modules()[cls.__module__][cls.__qualname__]
    except KeyError:
        return set()
    if member.is_alias:
        member = member.final_target
    return {n for n, m in member.members.items() if not m.is_alias and m.docstring}


def _method_problems(cls: type) -> list[str]:
    out = []
    for attr, member in vars(cls).items():
        if attr.startswith("_") or not inspect.isfunction(member) or not member.__doc__:
            continue
        try:
            sig = inspect.signature(member)
        except (TypeError, ValueError):
            continue
        _, warnings = parse(attr, inspect.getdoc(member), sig)
        out += [f"{attr}: griffe: {w}" for w in warnings]
    return out


NAMES = public_names()


def test_public_names_are_found():
    kinds = [_kind(obj) for _, obj in NAMES]
    assert kinds.count("function") > 100 and kinds.count("class") > 100, len(NAMES)


@pytest.mark.parametrize("name,obj", NAMES, ids=[n for n, _ in NAMES])
def test_documented(name, obj):
    found = problems(name, obj)
    assert not found, f"{name}: " + "; ".join(found)


def test_a_bad_docstring_is_caught():
    """The checks above can fail: a function documented the wrong way is reported."""

    def f(x: int, y: int) -> int:
        """Add.

        Arguments:
            x, y: the numbers.
        """
        if x < 0:
            raise ValueError("negative")
        return x + y

    found = problems("f", f)
    assert any("does not appear in the function signature" in p for p in found), found
    assert "Arguments: missing x, y" in found
    assert "no Returns section" in found
    assert "Raises: missing ValueError" in found

    def g() -> None:
        """Do nothing.

        Example:
            ```python
            assert fm.split(fm.key(0), 3).shape == (2, 2)
            ```
        """

    assert any(p.startswith("example fails: AssertionError") for p in problems("g", g))
