"""The public API for writing layers and transforms: ``funcmodels.extend``.

Everything the transforms of the ``transforms`` package need from the core, so that a
third-party layer or transform can do what they do without importing a private module:

Layers
    :func:`name_hash` (fold a name into a key: ``fm.fold_in(key, name_hash("weight"))``),
    :func:`cached` (a value computed once per spec object), the field checks
    (:func:`positive_int`, :func:`non_negative_int`, :func:`boolean`, :func:`number`,
    :func:`int_tuple`: each error names the layer and the field), :func:`torch_signature`
    (torch's constructor order with inferable sizes left out) and :func:`under_vmap`
    (whether a data-dependent path may run).

Specs
    :func:`field_values` (the constructor arguments of a spec),
    :func:`expected_entries` (every param or buffer of a model, with shapes),
    :func:`layer_name` (a path as messages print it), :func:`layer_error` (the error a
    spec's shape rules raise, naming the layer), :func:`conv_padding` (the padding a
    convolution applies, per side) and :func:`replace_layers` (a spec with some layers
    replaced: the spec half of model surgery).

Params and State
    :func:`subtree` (the sub-tree of a layer, by path) and :func:`unchecked` (a tree
    around a dict built from the spec's own entries, without the constructor's checks).

Forward calls
    :func:`tapping` (see every layer's input and output in ``fm.run``, and stand in for
    the output: the hook that :mod:`transforms.dp` computes its per-example gradients
    with). Inside a tap, ``ctx.path``, ``ctx.spec`` and ``ctx.own_params()`` say which
    layer ran.

The core keeps these where they are used (its private modules); this module is their
public name and the promise that they stay.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._context import cached, layer_name, name_hash
from ._replace import replace_layers
from ._spec import Spec, expected_entries, field_values
from ._tap import tapping
from ._tree import Params, State
from .nn import Conv1d, Conv2d, Conv3d
from .nn._check import (
    boolean,
    int_tuple,
    non_negative_int,
    number,
    positive_int,
    torch_signature,
    under_vmap,
)

__all__ = [
    "boolean",
    "cached",
    "conv_padding",
    "expected_entries",
    "field_values",
    "int_tuple",
    "layer_error",
    "layer_name",
    "name_hash",
    "non_negative_int",
    "number",
    "positive_int",
    "replace_layers",
    "subtree",
    "tapping",
    "torch_signature",
    "unchecked",
    "under_vmap",
]

Tree = TypeVar("Tree", Params, State)


def subtree(tree: Tree, path: str) -> Tree:
    """The part of ``tree`` that belongs to the layer at ``path``, as a tree of that layer.

    Like ``tree[path]`` for a layer, but a layer without entries (a ``ReLU``'s params, a
    ``Linear``'s state) gives an empty tree instead of a ``KeyError``, so
    ``fm.apply(subtree(params, "blocks.0"), x, state=subtree(state, "blocks.0"))`` runs
    one layer of a model whatever it holds. The tensors are shared, not copied.

    Arguments:
        tree: Params or State.
        path: the layer's dotted path (``'blocks.0'``; ``''`` for the root).

    Returns:
        a tree of the same type whose spec is the layer's, with the layer's entries under
            their names relative to it (``'weight'``, ``'0.bias'``).

    Raises:
        TypeError: ``tree`` is not Params or State, or ``path`` not a string.
        ValueError: ``path`` names no layer (the message lists the children there).
    """
    if not isinstance(tree, (Params, State)):
        raise TypeError(f"subtree: expected Params or State, got {type(tree).__name__}")
    if not isinstance(path, str):
        raise TypeError(f"subtree: path must be a string, got {type(path).__name__}")
    spec = tree.spec
    for part in path.split(".") if path else ():
        spec = spec.child(part)
    prefix = f"{path}." if path else ""
    flat = {k[len(prefix) :]: v for k, v in tree._flat.items() if k.startswith(prefix)}
    return type(tree)._make(spec, flat)


def unchecked(tree_type: type[Tree], spec: Spec, flat: dict[str, Any]) -> Tree:
    """Params or State around ``flat`` as it is, without the constructor's checks.

    ``fm.Params(spec, flat)`` checks that ``flat`` has exactly the spec's entries, each a
    tensor of the spec's shape and dtype, and copies it; code that built ``flat`` from the
    spec's own entries (:func:`expected_entries`) on every call, such as a module wrapping
    a spec, can skip that, and a tree whose tensors legitimately have other shapes (an
    ensemble or per-sample gradients stacked on dim 0, built by hand) needs to. A tree
    that does not fit its spec is refused later, where it is used, with less precise
    messages.

    Arguments:
        tree_type: ``fm.Params`` or ``fm.State``.
        spec: the spec the entries belong to.
        flat: ``{dotted path: tensor}`` with exactly the spec's entries, in its order; the
            tree keeps this dict (it is not copied), so do not change it afterwards.

    Returns:
        the tree.

    Raises:
        TypeError: ``tree_type`` is not Params or State, ``spec`` not a spec or ``flat``
            not a dict.
    """
    if tree_type not in (Params, State):
        raise TypeError(f"unchecked: tree_type must be fm.Params or fm.State, got {tree_type!r}")
    if not isinstance(spec, Spec):
        raise TypeError(f"unchecked: expected a spec, got {type(spec).__name__}")
    if not isinstance(flat, dict):
        raise TypeError(f"unchecked: flat must be a dict, got {type(flat).__name__}")
    return tree_type._make(spec, flat)


def layer_error(
    spec: Spec, path: str, message: str, exc: type[Exception] = ValueError
) -> Exception:
    """The error a spec's shape rules raise (``out_shape``, ``resolve``), worded as the
    core words its own: ``layer '<path>' (<type>): <message>``.

    The error is marked as located, so ``fm.init``, ``fm.shapes`` and ``fm.run`` pass it
    on as it is instead of prefixing the innermost running layer again.

    Arguments:
        spec: the layer the error is about.
        path: its prefix, as ``out_shape`` receives it (``'encoder.0.'``; ``''`` for the
            root).
        message: what was expected and what came.
        exc: the exception type (``ValueError``, or ``TypeError`` for a wrong type).

    Returns:
        the exception, to ``raise``.
    """
    return spec._error(path, message, exc)


def conv_padding(spec: Conv1d | Conv2d | Conv3d) -> tuple[int, ...]:
    """The padding a convolution applies to its input, per side, as ``F.pad`` takes it.

    ``'same'`` and ``'valid'`` are resolved to numbers (``'same'`` puts the odd one at the
    end, as torch does), so a transform that runs the convolution's pieces itself (a
    per-example weight gradient, say) pads exactly as the layer does.

    Arguments:
        spec: a ``Conv1d``, ``Conv2d`` or ``Conv3d``.

    Returns:
        ``2 * n`` ints for ``n`` spatial dims, the last dim first: ``(left, right, top,
            bottom, ...)``.

    Raises:
        TypeError: ``spec`` is not such a convolution.
    """
    if not isinstance(spec, (Conv1d, Conv2d, Conv3d)):
        raise TypeError(
            f"conv_padding: expected a Conv1d, Conv2d or Conv3d, got {type(spec).__name__}"
        )
    return spec._explicit_padding()
