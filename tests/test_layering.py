"""The layering rule of the design: no import circle among the modules of ``funcmodels`` and
``transforms``, counting the imports inside functions too (a lazy import hides a circle
from the interpreter, not from the design), and ``funcmodels`` never imports
``transforms``.

Package ``__init__`` files only gather names for users and are left out of the graph: the
rule is about the modules that do the work.
"""

from __future__ import annotations

import ast
import graphlib

from tests.helpers import ROOT

PACKAGES = ("funcmodels", "transforms")


def module_files() -> dict[str, object]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path, known: dict) -> set[str]:
    """Every internal module ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] + ([node.module] if node.module else [])
                base = ".".join(base)
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    files = module_files()
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    return {m: imports_of(m, p, files) - packages for m, p in files.items() if m not in packages}


def test_no_import_circle_lazy_imports_included():
    deps = graph()
    assert len(deps) > 50  # the walk found the code
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import circle: {' -> '.join(err.args[1])}") from None
    # the spec protocol sits below the config reader (the circle)
    assert order.index("funcmodels._spec") < order.index("funcmodels._config")


def test_funcmodels_never_imports_transforms():
    files = module_files()
    for name, path in files.items():
        if name.startswith("funcmodels"):
            bad = {m for m in imports_of(name, path, files) if m.startswith("transforms")}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_a_lazy_import_inside_a_function_is_seen(tmp_path):
    """The audit's planted bug: a lazy ``from . import _config`` in ``_encode`` closed a
    circle no test saw. The walk reads imports at any depth."""
    files = module_files()
    planted = tmp_path / "_encode.py"
    planted.write_text("def encode(spec):\n    from . import _config\n    return _config\n")
    found = imports_of("funcmodels._encode", planted, files) - {"funcmodels"}  # the package
    assert found == {"funcmodels._config"}
    deps = {**graph(), "funcmodels._encode": graph()["funcmodels._encode"] | found}
    try:
        list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("the circle through _encode and _config was not found")
