"""griffe extensions for the API reference: layer constructors and Sphinx roles.

**Constructors.**
Layer specs are ``@dataclass(frozen=True, init=False)`` classes whose ``__init__`` is
generated at import time by ``torch_signature`` (every field by position or by name, in
declared order, an omittable size first as in torch). griffe reads the source without
importing it, so it sees no ``__init__`` and the reference would show no arguments. This
extension gives each such class the ``__init__`` it has at run time: the dataclass fields
of the class and its dataclass parents, in declared order.

A class that defines ``__new__`` and no ``__init__`` (``fm.Spec``) is documented with
``__new__``'s arguments, which are what a call takes.

**Roles.** The docstrings cross-reference in Sphinx's way (``:func:`~funcmodels.apply```),
which Markdown would print as it is; each role becomes inline code of its target (the
last component where Sphinx's ``~`` asks for it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _is(decorator: griffe.Decorator, name: str) -> bool:
    text = str(decorator.value)
    return text == name or text.endswith("." + name) or text.startswith(name + "(")


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    out = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue
        out.append(
            griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=member.value,
            )
        )
    return out


def _constructor(cls: griffe.Class) -> None:
    parameters: dict[str, griffe.Parameter] = {}
    for parent in reversed(cls.mro()):
        if any(_is(d, "dataclass") for d in parent.decorators):
            parameters.update((p.name, p) for p in _fields(parent))
    parameters.update((p.name, p) for p in _fields(cls))
    self = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(self, *parameters.values()),
        returns="None",
    )
    cls.set_member("__init__", init)


def _from_new(cls: griffe.Class) -> None:
    new = cls.members["__new__"]
    self, *rest = new.parameters
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(griffe.Parameter("self", kind=self.kind), *rest),
        returns="None",
    )
    cls.set_member("__init__", init)


def _walk(obj: griffe.Module | griffe.Class, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if isinstance(obj, griffe.Class):
        if any(_is(d, "torch_signature") for d in obj.decorators):
            _constructor(obj)
        elif "__new__" in obj.members and "__init__" not in obj.members:
            _from_new(obj)
    for member in obj.members.values():
        if not member.is_alias and (member.is_module or member.is_class):
            _walk(member, seen)


class FuncmodelsDocs(griffe.Extension):
    """Constructors for classes decorated with ``torch_signature``; roles as code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_role, obj.docstring.value)
