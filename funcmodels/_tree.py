"""Params and State: pytrees of tensors that carry their spec as static metadata."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import optree
import torch
import torch.utils._pytree as pytree

from ._context import layer_name
from ._spec import Spec, expected_entries


class _Hole:
    """The place of a leaf that ``fm.tree.partition`` put in the other tree.

    A pytree node without children (for torch's pytree, which ``torch.func`` uses, and for
    optree): transforms, optimisers and ``fm.tree.leaves`` see no leaf there.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "fm.tree.HOLE"

    def __reduce__(self) -> str:
        return "HOLE"


#: the single hole; ``fm.tree.combine`` fills it from another tree
HOLE = _Hole()
"""The placeholder :func:`funcmodels.tree.partition` leaves where a leaf was taken out.

A hole is no leaf to ``torch.func`` or an optimiser; :func:`funcmodels.tree.combine` fills
it from another tree.
"""
pytree.register_pytree_node(
    _Hole,
    lambda hole: ([], None),
    lambda leaves, context: HOLE,
    serialized_type_name="funcmodels.tree.HOLE",
)
optree.register_pytree_node(
    _Hole,
    lambda hole: ((), None, ()),
    lambda context, leaves: HOLE,
    namespace=getattr(optree.registry, "__GLOBAL_NAMESPACE", "funcmodels"),
)


class _Tree(Mapping):
    """A spec plus a flat ``{dotted path: tensor}`` dict, viewed as a nested mapping.

    ``tree['0']`` is the sub-tree of child ``'0'`` (same type, the child's spec);
    ``tree['0']['weight']`` or ``tree['0.weight']`` is a tensor. Iteration yields the
    top-level names (own tensors first, then children) in parameter order.

    ``Params(spec, flat)`` checks that ``flat`` has exactly the spec's entries, each a
    tensor of the spec's shape and dtype (params floating; a buffer of the dtype its layer
    names, else floating), and raises ``ValueError`` (``TypeError`` for a non-tensor)
    naming the first entry that does not fit. Trees that legitimately have other shapes
    (per-sample gradients, an ensemble stacked by ``vmap(fm.init)``) come from
    ``torch.func`` and ``fm.tree``, which rebuild trees without these checks;
    :func:`funcmodels.extend.unchecked` does the same for code that builds one itself.
    """

    __slots__ = ("spec", "_flat")
    _kind = "params"

    def __init__(self, spec: Spec, flat: Mapping[str, Any]):
        where = type(self).__name__
        if not isinstance(spec, Spec):
            raise TypeError(f"{where}: expected a Spec, got {type(spec).__name__}")
        if not isinstance(flat, Mapping):
            raise TypeError(
                f"{where}({spec.type_name}, ...): expected a dict of dotted names to tensors, "
                f"got {type(flat).__name__}"
            )
        want = expected_entries(spec, self._kind)
        missing = [k for k in want if k not in flat]
        extra = [k for k in flat if k not in want]
        if missing or extra:
            parts = [f"missing entries {missing}"] if missing else []
            parts += [f"unexpected entries {extra}"] if extra else []
            raise ValueError(
                f"{where}({spec.type_name}, ...) does not fit its spec: {'; '.join(parts)}"
            )
        bad = [k for k in want if not isinstance(flat[k], torch.Tensor)]
        if bad:
            raise TypeError(
                f"{where}({spec.type_name}, ...): entry '{bad[0]}' is "
                f"{type(flat[bad[0]]).__name__}, expected a tensor"
            )
        for k, (shape, dtype) in want.items():
            problem = entry_problem(spec, self._kind, k, flat[k], shape, dtype)
            if problem is not None:
                raise ValueError(f"{where}({spec.type_name}, ...) does not fit its spec: {problem}")
        self.spec = spec
        self._flat = {k: flat[k] for k in want}

    @classmethod
    def _make(cls, spec: Spec, flat: dict[str, Any]):
        """Wrap ``flat`` as it is (internal: unflattening, sub-trees, checked data)."""
        tree = cls.__new__(cls)
        tree.spec = spec
        tree._flat = flat
        return tree

    def flat(self) -> dict[str, Any]:
        """A new ``{dotted path: tensor}`` dict, in parameter order."""
        return dict(self._flat)

    def _names(self) -> list[str]:
        seen: dict[str, None] = {}
        for k in self._flat:
            seen.setdefault(k.split(".", 1)[0], None)
        return list(seen)

    def __getitem__(self, name: str):
        if not isinstance(name, str):
            raise KeyError(
                f"{type(self).__name__} of {self.spec.type_name} has no entry {name!r} (names "
                f"are strings such as '0' or '0.weight'); entries: {self._names()}"
            )
        if name in self._flat:
            return self._flat[name]
        prefix = name + "."
        sub = {k[len(prefix) :]: v for k, v in self._flat.items() if k.startswith(prefix)}
        if not sub:
            raise KeyError(
                f"{type(self).__name__} of {self.spec.type_name} has no entry {name!r}; "
                f"entries: {self._names()}"
            )
        spec = self.spec
        for part in name.split("."):
            if part not in dict(spec.children()):
                raise KeyError(
                    f"{type(self).__name__} of {self.spec.type_name}: {name!r} is not a layer "
                    f"but part of the names of {spec.type_name}'s own tensors (a Stack keeps "
                    f"its members' tensors stacked under their names); index a tensor with "
                    f"its full name, such as '{name}.{next(iter(sub))}'"
                )
            spec = spec.child(part)
        return type(self)._make(spec, sub)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        body = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}"
            for k, v in self._flat.items()
        )
        return f"{type(self).__name__}({self.spec.type_name}, {{{body}}})"

    # Equality by identity (the Mapping default would compare tensors elementwise).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def to(self, *args: Any, **kwargs: Any):
        """A copy on another device or dtype, as ``Tensor.to`` / ``nn.Module.to`` take them.

        The dtype applies to floating tensors only (an integer buffer such as
        ``num_batches_tracked`` keeps its dtype), the device to all. Tensors already
        there are shared, not copied. The spec is kept.
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(
                f"{type(self).__name__}.to: dtype must be a floating dtype, got {dtype}"
            )

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(
                device=device,
                dtype=dtype if t.is_floating_point() else None,
                non_blocking=non_blocking,
            )

        return type(self)._make(self.spec, {k: move(t) for k, t in self._flat.items()})

    def with_spec(self, spec: Spec):
        """The same tensors under another spec: a changed hyperparameter (an early-exit
        threshold, an MoE's capacity factor), or another layer of the same layout.

        Checked: ``spec`` must have exactly this tree's entries, and each tensor must fit
        it (shape and dtype, as ``Params(spec, flat)`` checks), or, in a tree that does
        not fit its own spec (per-sample gradients, an ensemble from ``vmap(fm.init)``),
        the entry's shape and dtype must be the same under both specs. The tensors are
        shared, not copied.

        Arguments:
            spec: the new spec.

        Returns:
            a tree of the same type (Params or State) whose spec is ``spec``, its entries
            in the order of ``spec``.

        Raises:
            TypeError: ``spec`` is not a spec.
            ValueError: the entries' names differ (each listed), or an entry does not
                fit ``spec`` (named, with the shape or dtype expected and found).
        """
        where = f"{type(self).__name__}.with_spec"
        if not isinstance(spec, Spec):
            raise TypeError(f"{where}: expected a Spec, got {type(spec).__name__}")
        want = expected_entries(spec, self._kind)
        have = expected_entries(self.spec, self._kind)
        missing = [k for k in want if k not in self._flat]
        extra = [k for k in self._flat if k not in want]
        if missing or extra:
            parts = [f"{spec.type_name} has entries {missing} these do not"] if missing else []
            parts += [f"these have entries {extra} that {spec.type_name} has not"] if extra else []
            raise ValueError(
                f"{where}({spec.type_name}): the specs differ in their entries: " + "; ".join(parts)
            )
        for k, (shape, dtype) in want.items():
            problem = entry_problem(spec, self._kind, k, self._flat[k], shape, dtype)
            if problem is not None and have.get(k) != (shape, dtype):
                raise ValueError(f"{where}({spec.type_name}): {problem}")
        return type(self)._make(spec, {k: self._flat[k] for k in want})


class Params(_Tree):
    """Trainable tensors of a model: a pytree whose leaves are the floating parameters.

    Usually made by :func:`funcmodels.init` or :func:`funcmodels.from_state_dict`.
    ``params['0.weight']`` is a tensor, ``params['0']`` the child's Params.

    Arguments:
        spec: the model's spec, every size given.
        flat: ``{dotted path: tensor}`` with exactly the spec's parameter entries (as
            :func:`funcmodels.to_state_dict` names them). Shapes are checked where the
            tensors are used.
    """

    __slots__ = ()
    _kind = "params"


class State(_Tree):
    """Buffers of a model (BatchNorm running statistics, masks): a pytree of tensors.

    Usually made by :func:`funcmodels.init_with_state`; :func:`funcmodels.run` returns the
    updated one.

    Arguments:
        spec: the model's spec, every size given.
        flat: ``{dotted path: tensor}`` with exactly the spec's buffer entries.
    """

    __slots__ = ()
    _kind = "state"


def check_fits(tree: _Tree, where: str, *, shapes: bool = True) -> None:
    """Raise ``ValueError`` unless every entry of ``tree`` is a tensor (of its spec's shape,
    with ``shapes``).

    Runs on every call of :func:`funcmodels.run`, so the common case is one dict lookup
    and one shape comparison per entry.
    """
    flat = tree._flat
    for k, (shape, _) in expected_entries(tree.spec, tree._kind).items():
        t = flat.get(k)
        if t is None or not isinstance(t, torch.Tensor) or (shapes and t.shape != shape):
            _misfit(tree, k, t, shape, where)


def _misfit(tree: _Tree, k: str, t: Any, shape: tuple[int, ...], where: str) -> None:
    kind = type(tree).__name__
    layer = layer_name(k.rsplit(".", 1)[0] + "." if "." in k else "")
    if k not in tree._flat:
        got = "is missing"
    elif t is None:
        got = "is None (did a tree_map return None for it?)"
    elif t is HOLE:
        got = (
            "is a hole left by fm.tree.partition; merge the parts with fm.tree.combine "
            "before applying the model"
        )
    elif not isinstance(t, torch.Tensor):
        got = f"is a {type(t).__name__}, not a tensor"
    else:
        got = f"has shape {tuple(t.shape)}, expected {shape}"
        got += _stacked_hint(tree.spec, tree._kind, k, tuple(t.shape), shape)
    raise ValueError(f"{where}: {kind} do not fit their spec: entry '{k}' (layer '{layer}') {got}")


def owner(spec: Spec, k: str, kind: str) -> tuple[str, Spec]:
    """``(prefix, layer)``: the layer of ``spec`` whose own tensor entry ``k`` is."""
    for prefix, s in spec.walk():
        if k.startswith(prefix):
            own = s.param_shapes() if kind == "params" else s.state_shapes()
            if k[len(prefix) :] in own:
                return prefix, s
    return "", spec


def _stacked_hint(
    spec: Spec, kind: str, k: str, got: tuple[int, ...], want: tuple[int, ...]
) -> str:
    """What to do about a tensor of a stacking layer (a Stack) that has one member's shape:
    it comes from a ``vmap`` over the stacked params (dim 0 is the members')."""
    if not want or got != want[1:]:
        return ""
    prefix, layer = owner(spec, k, kind)
    n = layer.stack_size()
    if n is None or n != want[0]:
        return ""
    at = f"layer '{layer_name(prefix)}', a {layer.type_name} of {n}"
    fix = (
        "fm.apply(params, x) runs every member itself, without vmap; to map over the "
        "members yourself, give the tree the member spec: "
        "vmap(fm.apply, in_dims=(0, None))(fm.tree.stack(fm.tree.unstack(params)), x); "
        "one member is fm.tree.index(params, i)"
        if not prefix
        else "fm.apply runs its members itself, so apply the whole model without a vmap "
        "over the stacked params"
    )
    return (
        f": one member's shape. These are {at}, which keeps its members' tensors stacked "
        f"on dim 0; a vmap over dim 0 of them hands each call one member's tensors. {fix}"
    )


def entry_problem(
    spec: Spec, kind: str, k: str, t: Any, shape: tuple[int, ...], dtype: torch.dtype | None
) -> str | None:
    """Why tensor ``t`` does not fit entry ``k`` of ``spec`` (``shape`` and ``dtype`` as
    :func:`~funcmodels._spec.expected_entries` gives them), or ``None`` when it fits."""
    if not isinstance(t, torch.Tensor):
        got = "None" if t is None else type(t).__name__
        return f"{_entry(spec, kind, k)} is {got}, expected a tensor"
    if t.shape != shape:
        got = tuple(t.shape)
        hint = _stacked_hint(spec, kind, k, got, shape)
        if not hint and got[1:] == shape:
            hint = (
                " (a leading dim: a tree stacked on dim 0, such as an ensemble or per-sample "
                "gradients, is made by vmap or fm.tree.stack; fm.extend.unchecked wraps one "
                "built by hand)"
            )
        return f"{_entry(spec, kind, k)} has shape {got}, expected {shape}{hint}"
    if dtype is not None and t.dtype != dtype:
        return f"{_entry(spec, kind, k)} has dtype {t.dtype}, expected {dtype}"
    if dtype is None and not t.dtype.is_floating_point:
        what = "params are floating tensors" if kind == "params" else "the params' dtype"
        return f"{_entry(spec, kind, k)} has dtype {t.dtype}, expected a floating dtype ({what})"
    return None


def _entry(spec: Spec, kind: str, k: str) -> str:
    prefix, layer = owner(spec, k, kind)
    return f"entry '{k}' (layer '{layer_name(prefix)}', {layer.type_name})"


def misfits(tree: _Tree) -> list[str]:
    """Every way ``tree`` does not fit its spec: missing and unexpected entries, and each
    entry that is not a tensor of the spec's shape and dtype."""
    want = expected_entries(tree.spec, tree._kind)
    flat = tree._flat
    out = []
    missing = [k for k in want if k not in flat]
    extra = [k for k in flat if k not in want]
    if missing:
        out.append(f"missing entries {missing}")
    if extra:
        out.append(f"unexpected entries {extra}")
    for k, (shape, dtype) in want.items():
        if k in flat:
            problem = entry_problem(tree.spec, tree._kind, k, flat[k], shape, dtype)
            if problem is not None:
                out.append(problem)
    return out


def _flatten(tree: _Tree):
    return list(tree._flat.values()), (tree.spec, tuple(tree._flat))


def _register(cls: type[_Tree]) -> None:
    def unflatten(leaves, context):
        spec, keys = context
        return cls._make(spec, dict(zip(keys, leaves, strict=True)))

    def flatten_with_keys(tree):
        return [(pytree.MappingKey(k), v) for k, v in tree._flat.items()], (
            tree.spec,
            tuple(tree._flat),
        )

    pytree.register_pytree_node(
        cls,
        _flatten,
        unflatten,
        serialized_type_name=f"funcmodels.{cls.__name__}",
        flatten_with_keys_fn=flatten_with_keys,
    )

    def oflatten(tree):
        return list(tree._flat.values()), (tree.spec, tuple(tree._flat)), tuple(tree._flat)

    # Register in optree's global namespace so plain optree.tree_map works; fall back to a
    # named namespace if optree ever hides it.
    ns = getattr(optree.registry, "__GLOBAL_NAMESPACE", "funcmodels")
    # optree passes (metadata, children), the reverse of torch's (children, context).
    optree.register_pytree_node(
        cls, oflatten, lambda context, leaves: unflatten(leaves, context), namespace=ns
    )


_register(Params)
_register(State)
