"""The layering rule of the design: no import circle among the modules of ``funcmodels`` and
``transforms``, counting the imports inside functions too (a lazy import hides a circle
from the interpreter, not from the design), ``funcmodels`` never imports ``transforms``,
and ``transforms`` uses only public names of ``funcmodels`` (``funcmodels.extend`` is
where what a transform needs from the core is public).

Package ``__init__`` files only gather names for users and are left out of the graph: the
rule is about the modules that do the work.
"""

from __future__ import annotations

import ast
import functools
import graphlib
import textwrap

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


# -- transforms use only public names of funcmodels ------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def funcmodels_private_attributes() -> frozenset[str]:
    """The private attribute names that the classes of ``funcmodels`` define: methods and
    class attributes, ``__slots__``, and what their methods set on ``self`` (``_make``,
    ``_flat``, ``_prefix``, ``_error``, ...)."""
    names = set()
    for path in sorted((ROOT / "funcmodels").rglob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                names |= _defined_by(cls)
    return frozenset(n for n in names if _private(n))


def _defined_by(cls: ast.ClassDef) -> set[str]:
    """The attribute names class ``cls`` defines for its instances and itself."""
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                if isinstance(target, ast.Name) and target.id == "__slots__":
                    names |= {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
        elif _attribute_call(node, "__setattr__") and isinstance(node.args[1], ast.Constant):
            names.add(node.args[1].value)
    return names


def _attribute_call(node: ast.AST, name: str) -> bool:
    """``x.<name>(a, "b", ...)`` or ``<name>(a, "b", ...)``: a getattr/setattr by string."""
    func = getattr(node, "func", None)
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return (
        isinstance(node, ast.Call)
        and called == name
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def _funcmodels_names(tree: ast.Module) -> set[str]:
    """The names a module binds to funcmodels or to something imported from it (``fm``,
    ``fnn = fm.nn``, ``Params`` from ``from funcmodels import Params``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "funcmodels":
                    names.add(a.asname or "funcmodels")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("funcmodels"):
            names.update(a.asname or a.name for a in node.names)
    for node in ast.walk(tree):  # aliases such as fnn = fm.nn
        if isinstance(node, ast.Assign) and _root(node.value) in names:
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _own_names(tree: ast.Module) -> dict[ast.AST, set[str]]:
    """For every node inside a class of the module: the names that class defines itself
    (a transform's own spec may keep its own ``_children``)."""
    own = {}
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            defined = _defined_by(cls)
            for node in ast.walk(cls):
                own.setdefault(node, set()).update(defined)
    return own


def private_uses(source: str) -> list[str]:
    """Every use of a private name of ``funcmodels`` in the module ``source``, as
    ``'line N: what'``: an import of a private module or name (``funcmodels._context``,
    ``from funcmodels.nn import _check``), a private attribute of funcmodels itself or of
    what the module imported from it (``fm._x``, ``fm.Params._make``), and, where the
    object's type cannot be seen, a private attribute name that funcmodels' classes
    define (``x._flat``, ``ctx._prefix``, ``spec._error``, also through ``getattr``), unless
    the class around the use defines that name itself."""
    tree = ast.parse(source)
    ours = _funcmodels_names(tree)
    theirs = funcmodels_private_attributes()
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "funcmodels" and any(map(_private, parts[1:])):
                    found.append(f"{where}: imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("funcmodels"):
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if any(map(_private, parts[1:])) or any(map(_private, names)):
                found.append(f"{where}: imports {names} from {node.module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if _root(node.value) in ours:
                found.append(f"{where}: {ast.unparse(node)}")
            elif node.attr in theirs and node.attr not in own.get(node, ()):
                found.append(f"{where}: {ast.unparse(node)}")
        elif _attribute_call(node, "getattr") or _attribute_call(node, "__setattr__"):
            name = node.args[1].value
            if name in theirs and name not in own.get(node, ()):
                found.append(f"{where}: {ast.unparse(node)}")
    return sorted(set(found), key=lambda f: (int(f.split()[1].rstrip(":")), f))


def test_transforms_use_only_public_names_of_funcmodels():
    files = {n: p for n, p in module_files().items() if n.startswith("transforms")}
    assert len(files) > 20  # the walk found the package
    bad = {name: private_uses(path.read_text()) for name, path in files.items()}
    bad = {name: uses for name, uses in bad.items() if uses}
    assert not bad, f"transforms reaches into funcmodels' private code: {bad}"


def test_the_private_use_check_sees_each_kind():
    """What transforms did before funcmodels.extend existed, each kind found; a spec's own
    private attributes are not."""
    planted = textwrap.dedent(
        """
        import funcmodels as fm
        import funcmodels._tap
        from funcmodels import _registry
        from funcmodels._context import name_hash
        from funcmodels.nn._check import positive_int
        from funcmodels.extend import subtree

        fnn = fm.nn


        def bridge(spec, params, state, out, ctx):
            trees = fm.Params._make(spec, params), fm.State._make(spec, state)
            new = out.state._flat["0.weight"]
            prefix = ctx._prefix
            pads = spec._explicit_padding()
            flat = getattr(state, "_flat")
            return fnn._check, fm._context, subtree._cache, type(params)._make(spec, {})


        class Layer(fm.Spec):
            def __post_init__(self):
                object.__setattr__(self, "_children", ())

            def _route(self, ctx, x):
                return self._children, self._route

            def out_shape(self, in_shape, path="", record=None):
                raise self._error(path, "bad")
        """
    )
    assert private_uses(planted) == [
        "line 3: imports funcmodels._tap",
        "line 4: imports ['_registry'] from funcmodels",
        "line 5: imports ['name_hash'] from funcmodels._context",
        "line 6: imports ['positive_int'] from funcmodels.nn._check",
        "line 13: fm.Params._make",
        "line 13: fm.State._make",
        "line 14: out.state._flat",
        "line 15: ctx._prefix",
        "line 16: spec._explicit_padding",
        "line 17: getattr(state, '_flat')",
        "line 18: fm._context",
        "line 18: fnn._check",
        "line 18: subtree._cache",
        "line 18: type(params)._make",
        "line 29: self._error",
    ]
