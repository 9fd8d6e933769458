"""How a :class:`~transforms.TorchModule` is written to a config or file, and which
classes a file may name.

A TorchModule is written as its module's **recipe**: the class's import path
(``type(module).__module__ + "." + __qualname__``) and the constructor arguments as JSON.
Two ways of building from a recipe exist, no other:

* ``style="kwargs"``: ``cls(**args)``, the arguments given by the user, either for one
  layer (``TorchModule(module, init_args={...})``) or for a class
  (``register_module_class(cls, init_args=lambda m: {...})``, which ``from_module`` uses);
* ``style="config"``: the Hugging Face convention, found on the module itself: a
  ``config`` attribute with ``to_dict()`` and a class attribute ``config_class`` with
  ``from_dict``; built as ``cls(cls.config_class.from_dict(args))``.

A recipe is checked when the layer is made: it is built on the meta device and must give
the module's ``state_dict`` names, shapes and dtypes (a module changed after it was
constructed has no recipe). A module without a recipe cannot be written; ``fm.save``
refuses it with the way out.

**Trust.** Building a class runs its code, and a file may come from anyone, so reading
never imports anything: the class a file names is looked up among the classes this process
registered with :func:`register_module_class`, which takes the class object (already
imported by the user, who thereby vouches for it). A file naming any other class still
reads, as a layer that knows only its recipe: it compares equal to a TorchModule with the
same recipe, so ``fm.load(path, spec)`` loads the tensors into the user's own spec, but it
has no shapes and cannot run (the message names the class and the two ways out). The
arguments from a file reach only a registered class's constructor (or its
``config_class.from_dict``), as JSON values; nothing is unpickled or evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

InitArgs = Callable[[nn.Module], Mapping[str, Any]]

#: class path -> (class, how to read its constructor arguments from a module, or None)
_ALLOWED: dict[str, tuple[type[nn.Module], InitArgs | None]] = {}

STYLES = ("kwargs", "config")


class Recipe(NamedTuple):
    """A module's class path, its constructor arguments as JSON (``None`` when unknown)
    and how they build it; ``problem`` says why there are none."""

    target: str
    args: str | None
    style: str
    problem: str | None = None


def class_path(cls: type) -> str:
    """``'package.module.Class'``: the name a file stores a module class under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_module_class(cls: type[nn.Module], *, init_args: InitArgs | None = None) -> None:
    """Let files name ``cls``, and say how to read a module's constructor arguments.

    Registering is the explicit trust a file needs: ``fm.load`` builds a TorchModule's
    module only from a registered class (building runs the class's code), and a file
    naming another class loads only into a spec given by the caller.

    Arguments:
        cls: the module class (the object: nothing is ever imported by name).
        init_args: ``init_args(module) -> dict`` of JSON values such that
            ``cls(**init_args(module))`` builds a module with the same tensors' names and
            shapes; ``from_module`` then records them, which makes the layer writable.
            ``None`` for a class that keeps a Hugging Face ``config`` (built as
            ``cls(cls.config_class.from_dict(args))``).

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` class, ``init_args`` not callable, or
            ``None`` for a class without ``config_class``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_class: expected an nn.Module class, got {cls!r}")
    if init_args is not None and not callable(init_args):
        raise TypeError(f"register_module_class: init_args must be callable, got {init_args!r}")
    if init_args is None and not _has_config_class(cls):
        raise TypeError(
            f"register_module_class({cls.__qualname__}): the class keeps no Hugging Face "
            "config (no config_class), so give init_args=lambda module: {...}, the keyword "
            "arguments that rebuild a module"
        )
    _ALLOWED[class_path(cls)] = (cls, init_args)


def unregister_module_class(cls: type[nn.Module]) -> None:
    """Undo :func:`register_module_class` (for tests and plugins that unload)."""
    _ALLOWED.pop(class_path(cls), None)


#: the target of a TorchModule holding a ``torch.fx.GraphModule`` (whose class is made per
#: graph and takes the traced module's class name, so it names nothing useful)
GRAPH_TARGET = "torch.fx.GraphModule"


def _graph_problem(module: nn.Module) -> str:
    return (
        f"it is a torch.fx GraphModule (traced from a {type(module).__name__}, whose class "
        "name it takes; transforms.fuse and torch.fx.symbolic_trace make these), and its "
        "forward is generated code that no constructor rebuilds. Convert the module before "
        "it was traced instead: transforms.from_module(module), then "
        "transforms.fold_batchnorm(params, state) for the BatchNorm folding fuse does"
    )


def recipe_of(module: nn.Module, init_args: Mapping[str, Any] | None) -> Recipe:
    """The recipe of ``module`` (see the module docstring), checked by building it.

    Raises:
        ValueError: arguments given by the user (``init_args``, or a registered class's
            ``init_args``) that are not JSON or do not rebuild the module.
    """
    cls = type(module)
    if isinstance(module, torch.fx.GraphModule):
        return Recipe(GRAPH_TARGET, None, "kwargs", _graph_problem(module))
    target = class_path(cls)
    registered = _ALLOWED.get(target)
    explicit = init_args is not None
    if init_args is None and registered is not None and registered[1] is not None:
        init_args, explicit = registered[1](module), True
    if init_args is not None:
        recipe = Recipe(target, _json(init_args, target), "kwargs")
    elif _has_config_class(cls) and _has_config(module):
        try:
            recipe = Recipe(target, json.dumps(module.config.to_dict(), sort_keys=True), "config")
        except (TypeError, ValueError) as err:
            return Recipe(target, None, "kwargs", f"its config has no JSON form ({err})")
    else:
        return Recipe(
            target,
            None,
            "kwargs",
            "its constructor arguments are unknown (no init_args, and no Hugging Face config)",
        )
    problem = _check(module, cls, recipe)
    if problem is None:
        return recipe
    if explicit:
        raise ValueError(f"TorchModule({cls.__qualname__}): init_args {problem}")
    return Recipe(target, None, "kwargs", f"its config {problem}")


def build(recipe: Recipe, device: torch.device | str) -> nn.Module:
    """The module of a recipe read from a file, built on ``device``.

    Raises:
        ValueError: the class is not registered (the message says how to trust it, or to
            pass the spec), or the arguments do not build it.
    """
    found = _ALLOWED.get(recipe.target)
    if found is None:
        raise ValueError(
            f"the torch module class {recipe.target!r} named by the file is not registered; "
            "funcmodels never imports a class a file names (that runs code). If you trust "
            "it, import it and call transforms.register_module_class(cls) before loading, "
            "or pass the spec: fm.load(path, spec) with spec from transforms.from_module"
        )
    try:
        return _make(found[0], recipe, device)
    except Exception as err:  # the class's own constructor, on arguments from a file
        raise ValueError(
            f"the arguments stored for {recipe.target} do not build it "
            f"({type(err).__name__}: {err})"
        ) from err


def _make(cls: type[nn.Module], recipe: Recipe, device: torch.device | str) -> nn.Module:
    args = json.loads(recipe.args)
    if not isinstance(args, dict):
        raise ValueError(f"the arguments of {recipe.target} must be a JSON object, got {args!r}")
    with torch.device(device):
        if recipe.style == "config":
            return cls(cls.config_class.from_dict(args))
        return cls(**args)


def _check(module: nn.Module, cls: type[nn.Module], recipe: Recipe) -> str | None:
    """Why the recipe does not rebuild ``module`` (``None`` when it does)."""
    try:
        built = _make(cls, recipe, "meta")
    except Exception as err:  # the class's own constructor: any error means no recipe
        return f"do not build {cls.__qualname__} ({type(err).__name__}: {err})"
    want = {k: (tuple(t.shape), t.dtype) for k, t in module.state_dict(keep_vars=True).items()}
    got = {k: (tuple(t.shape), t.dtype) for k, t in built.state_dict(keep_vars=True).items()}
    if want != got:
        differ = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        return f"build a different module than the one converted (tensors differ: {differ[:5]})"
    if _ties(module) != _ties(built):
        return "build a different module than the one converted (other tensors are tied)"
    return None


def _ties(module: nn.Module) -> set[frozenset[str]]:
    """The groups of names registered for one tensor."""
    groups: dict[int, set[str]] = {}
    for n, t in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        groups.setdefault(id(t), set()).add(n)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _json(args: Mapping[str, Any], target: str) -> str:
    if not isinstance(args, Mapping):
        raise TypeError(f"init_args of {target} must be a dict, got {type(args).__name__}")
    try:
        return json.dumps(dict(args), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"init_args of {target} must be JSON values: {err}") from err


def _has_config_class(cls: type) -> bool:
    return callable(getattr(getattr(cls, "config_class", None), "from_dict", None))


def _has_config(module: nn.Module) -> bool:
    return callable(getattr(getattr(module, "config", None), "to_dict", None))
