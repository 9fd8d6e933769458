"""The optimiser protocol: a pair of pure functions, and the tree plumbing they share."""

from __future__ import annotations

import itertools
import math
import numbers
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch._C._functorch import maybe_current_level

from .._tree import Params, State
from ._mismatch import describe_tree as _describe
from ._mismatch import model_difference as _model_difference
from ._ops import Ops, multi_tensor_allowed
from ._traced import same_structure, traced_flatten, traced_unflatten

#: a schedule: the value of a hyperparameter at a (0-dim int64 tensor) step count
Schedule = Callable[[torch.Tensor], torch.Tensor]
#: what a hyperparameter may be: a number, a 0-dim tensor, or (where said) a schedule
Scalar = float | torch.Tensor | Schedule


class GradientTransformation(NamedTuple):
    """An optimiser, or one piece of one, as two pure functions.

    ``init(params) -> state``; ``update(updates, state, params=None) -> (updates,
    new_state)``. ``updates`` (the gradients, for the first piece of a chain) has the
    structure of ``params``; what comes out is added to the params by
    :func:`apply_updates`. Nothing a caller passes is changed in place (inside a
    :func:`chain`, in eager mode, a piece may write into updates an earlier piece made),
    and step counts are tensors, so a training step composes with ``vmap`` (an ensemble)
    and ``torch.compile``.

    Example:
        ```python
        params = fm.init(fm.key(0), fm.nn.Linear(3, 2))
        opt = fm.optim.chain(fm.optim.clip_by_global_norm(1.0), fm.optim.sgd(0.1))
        state = opt.init(params)
        grads = fm.grad(lambda p: fm.apply(p, torch.ones(4, 3)).sum())(params)
        updates, state = opt.update(grads, state, params)
        new = fm.optim.apply_updates(params, updates)
        assert new["weight"].shape == (2, 3)
        ```
    """

    init: Callable[[Any], Any]
    """``init(params) -> state``: the initial state for ``params``."""
    update: Callable[..., tuple[Any, Any]]
    """``update(updates, state, params=None) -> (updates, new_state)``."""


class GradientTransformationExtraArgs(GradientTransformation):
    """A :class:`GradientTransformation` whose ``update`` takes extra keyword arguments
    (a line search's ``value=``, ``grad=``, ``value_fn=``), as optax's; :func:`chain` and
    the wrappers pass them to such members and drop them for the others.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(updates, state, params=None, **extra_args) -> (updates, state)``.
    """

    __slots__ = ()


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def init_empty_state(params: Any) -> EmptyState:
    """The ``init`` of a transformation that keeps no state.

    Arguments:
        params: the params (not looked at).

    Returns:
        An empty :class:`EmptyState`.
    """
    return EmptyState()


# -- trees ---------------------------------------------------------------------------------

#: (Params/State class, id of its spec, its keys) -> (the spec, the TreeSpec): a top-level
#: Params holding tensors flattens to its values without walking torch's pytree, which costs
#: as much as the arithmetic of a small model's optimiser step.
_STRUCTURES: dict[tuple, tuple[Any, pytree.TreeSpec]] = {}
#: id of a TreeSpec from ``_STRUCTURES`` -> (the TreeSpec, its class, its context)
_FAST_SPECS: dict[int, tuple[pytree.TreeSpec, type, Any]] = {}


def flatten(tree: Any) -> tuple[list[Any], pytree.TreeSpec]:
    """``torch.utils._pytree.tree_flatten``, with a shortcut for a Params or State of
    tensors (same leaves, same TreeSpec)."""
    cls = type(tree)
    if (cls is Params or cls is State) and torch.compiler.is_compiling():
        return traced_flatten(cls, tree)
    if cls is Params or cls is State:
        leaves = list(tree._flat.values())
        if all(map(isinstance, leaves, itertools.repeat(torch.Tensor))):
            key = (cls, id(tree.spec), tuple(tree._flat))
            hit = _STRUCTURES.get(key)
            if hit is None or hit[0] is not tree.spec:
                if len(_STRUCTURES) > 256:  # many models in one process: start again
                    _STRUCTURES.clear()
                    _FAST_SPECS.clear()
                hit = (tree.spec, pytree.tree_structure(tree))
                _STRUCTURES[key] = hit
                _FAST_SPECS[id(hit[1])] = (hit[1], cls, (tree.spec, key[2]))
            return leaves, hit[1]
    return pytree.tree_flatten(tree)


def unflatten(leaves: list[Any], spec: pytree.TreeSpec) -> Any:
    """``torch.utils._pytree.tree_unflatten``, with the shortcut of :func:`flatten`."""
    if torch.compiler.is_compiling():
        return traced_unflatten(leaves, spec)
    fast = _FAST_SPECS.get(id(spec))
    if fast is not None and fast[0] is spec:
        cls, (layer_spec, keys) = fast[1], fast[2]
        return cls._make(layer_spec, dict(zip(keys, leaves, strict=True)))
    return pytree.tree_unflatten(leaves, spec)


def flatten_like(tree: Any, spec: pytree.TreeSpec, what: str, of: str = "the params") -> list[Any]:
    """The leaves of ``tree``, which must have the structure ``spec`` (that ``of`` names;
    ``what`` names ``tree``)."""
    leaves, got = flatten(tree)
    if not same_structure(got, spec):
        models = _model_difference(spec, got)
        detail = (
            f"they were made for a different model: {models}"
            if models is not None
            else f"expected {_describe(spec)}, got {_describe(got)}"
        )
        raise ValueError(f"fm.optim: {what} do not have the structure of {of}: {detail}")
    return leaves


def leaves_of(
    updates: Any, params: Any, what: str, *, need_params: bool = False
) -> tuple[list[Any], list[Any] | None, pytree.TreeSpec]:
    """``(update leaves, param leaves or None, structure)``; ``what`` names the caller."""
    us, spec = flatten(updates)
    if params is None:
        if need_params:
            raise ValueError(f"{what}: needs the params; call update(updates, state, params)")
        return us, None, spec
    return us, flatten_like(params, spec, "params", "the updates"), spec


def zeros_like_tree(tree: Any) -> Any:
    return pytree.tree_map(torch.zeros_like, tree)


def count_like(params: Any) -> torch.Tensor:
    """A 0-dim int64 step count on the params' device."""
    leaves = pytree.tree_leaves(params)
    device = leaves[0].device if leaves else None
    return torch.zeros((), dtype=torch.int64, device=device)


def check_state(state: object, cls: type, where: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"{where}: expected the {cls.__name__} made by this transformation's init, got "
            f"{type(state).__name__} (states are not interchangeable between optimisers)"
        )


def check_empty(state: object, where: str) -> None:
    """The state of a piece that keeps none must be its ``EmptyState`` (any empty tuple:
    optax's is one), not another optimiser's state passed by mistake."""
    if not (isinstance(state, tuple) and len(state) == 0):
        raise TypeError(
            f"{where}: expected the EmptyState made by this transformation's init, got "
            f"{type(state).__name__} (states are not interchangeable between optimisers)"
        )


def dtype_arg(where: str, name: str, value: object) -> torch.dtype | None:
    """Check an optional dtype argument (``mu_dtype``, ``accumulator_dtype``): ``None``
    or a floating ``torch.dtype``."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{where}: {name} must be None or a floating torch.dtype, got {value!r}")
    return value


def as_transformation(where: str, what: str, value: object) -> GradientTransformation:
    """``value`` as a GradientTransformation: one, or an object with ``init`` and
    ``update`` methods (such as :class:`MultiSteps`)."""
    if isinstance(value, GradientTransformation):
        return value
    init, update = getattr(value, "init", None), getattr(value, "update", None)
    if callable(init) and callable(update):
        return GradientTransformation(init, update)
    raise TypeError(
        f"{where}: {what} must be a GradientTransformation (such as "
        f"fm.optim.scale_by_adam()), got {type(value).__name__}"
    )


# -- hyperparameters --------------------------------------------------------------------


def number(
    where: str,
    name: str,
    value: object,
    *,
    lo: float = 0.0,
    below: float | None = None,
    schedule: bool = False,
) -> Scalar:
    """Check a hyperparameter: a finite number ``>= lo`` (and ``< below``), a 0-dim
    floating tensor (its value is not checked: that would need a host sync, and it may
    change between steps), or, with ``schedule``, a callable of the step count."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.dtype.is_floating_point:
            raise TypeError(
                f"{where}: {name} as a tensor must be a 0-dim floating tensor, got "
                f"{value.dtype} of shape {tuple(value.shape)}"
            )
        return value
    if callable(value):
        if not schedule:
            raise TypeError(f"{where}: {name} must be a number or a 0-dim tensor, not a schedule")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kinds = "a number, a 0-dim tensor or a schedule" if schedule else "a number"
        raise TypeError(f"{where}: {name} must be {kinds}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < lo or (below is not None and value >= below):
        bound = f"in [{lo:g}, {below:g})" if below is not None else f">= {lo:g}"
        raise ValueError(f"{where}: {name} must be a finite number {bound}, got {value!r}")
    return value


def is_schedule(value: Scalar) -> bool:
    return callable(value) and not isinstance(value, torch.Tensor)


# -- the basic pieces -----------------------------------------------------------------------


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates``, leaf by leaf, as new tensors of the params' dtypes (the sum
    is formed in the promoted dtype, then cast, as optax's).

    Arguments:
        params: a pytree of tensors (:class:`funcmodels.Params` included).
        updates: from an optimiser's ``update``, same structure.

    Returns:
        A new pytree of the type of ``params`` (for Params: the same spec).
    """
    leaves, spec = flatten(params)
    ups = flatten_like(updates, spec, "updates")
    if not leaves:
        return unflatten([], spec)
    new = Ops(multi_tensor_allowed(leaves, ups)).add(leaves, ups)
    return unflatten(
        [n if n.dtype == p.dtype else n.to(p.dtype) for n, p in zip(new, leaves, strict=True)],
        spec,
    )


# -- pieces defined on lists of leaves ----------------------------------------------------
#
# A library piece is written as ``fn(us, state, ps, spec, own) -> (out, state, owned)`` on
# the leaves of the updates (``us``) and params (``ps`` or None): ``spec`` is their
# structure (to flatten and rebuild state trees like the params), ``own`` says the caller
# owns ``us`` (tensors an earlier piece of the same chain made, eager mode only: the piece
# may write into them), and ``owned`` that ``out`` holds only tensors that are the chain's
# to write into. :func:`chain` flattens the updates once and calls the pieces' list forms
# in turn, which saves a flatten and an unflatten of every tree per piece.


class Flat(NamedTuple):
    """A piece's list form (see the comment above)."""

    fn: Callable[..., tuple[list, Any, bool]]
    needs_params: bool
    where: str
    fuse: tuple[str, Callable] | None = None
    """the piece's part in a fused Adam step (see :func:`_fusion`)"""


#: update functions -> their list form. A registry, not attributes: ``functools.wraps``
#: copies attributes onto a user's wrapper, which may return its input or never call the
#: marked function.
_FLAT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def flat_transformation(
    where: str,
    init: Callable[[Any], Any],
    fn: Callable[..., tuple[list, Any, bool]],
    *,
    needs_params: bool = False,
    fuse: tuple[str, Callable] | None = None,
) -> GradientTransformation:
    """A GradientTransformation from its list form ``fn`` (see :class:`Flat`); with
    ``init_empty_state`` as its ``init``, ``update`` checks that it gets an empty state."""
    if init is init_empty_state:
        stateful = fn

        def fn(us, state, ps, spec, own):
            check_empty(state, where)
            return stateful(us, state, ps, spec, own)

    def update(updates, state, params=None):
        us, ps, spec = leaves_of(updates, params, where, need_params=needs_params)
        out, state, _ = fn(us, state, ps, spec, False)
        return unflatten(out, spec), state

    if not torch.compiler.is_compiling():  # made inside a compiled step: never read there
        _FLAT[update] = Flat(fn, needs_params, where, fuse)
    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    """Passes the updates through unchanged.

    Returns:
        A :class:`GradientTransformation` whose state is an :class:`EmptyState`.
    """
    return flat_transformation(
        "fm.optim.identity", init_empty_state, lambda us, s, ps, spec, own: (us, s, own)
    )


def set_to_zero() -> GradientTransformation:
    """Makes every update zero: the transformation for frozen parameters (see
    :func:`multi_transform`).

    Returns:
        A :class:`GradientTransformation` whose state is an :class:`EmptyState`.
    """

    def fn(us, state, ps, spec, own):
        return [torch.zeros_like(u) for u in us], state, True

    return flat_transformation("fm.optim.set_to_zero", init_empty_state, fn)


_NO_PARAMS = "needs the params; call update(updates, state, params)"


def _fusion(flats: list[Flat | None], i: int) -> int:
    """How many pieces from ``i`` run as one Adam step: ``scale_by_adam`` then a scale (the
    learning rate), with an unmasked ``add_decayed_weights`` between them or not (0: no
    such run). The step folds the scale into Adam's denominator and adds the decay with
    it: two passes over the leaves fewer, the same values up to rounding."""
    kinds = [f.fuse[0] if f is not None and f.fuse is not None else None for f in flats[i : i + 3]]
    if kinds[:1] != ["adam"]:
        return 0
    if kinds[1:2] == ["scale"]:
        return 2
    return 3 if kinds[1:3] == ["decay", "scale"] else 0


def _fused(flats: list[Flat], us, states, ps, spec) -> tuple[list, list]:
    """Run the pieces :func:`_fusion` found as one step: ``(updates, their states)``."""
    decay = None
    out_states = [None] * len(flats)
    if len(flats) == 3:
        if ps is None:
            raise ValueError(f"{flats[1].where}: {_NO_PARAMS}")
        decay, out_states[1] = flats[1].fuse[1](states[1])
        if isinstance(decay, float) and decay == 0.0:  # optax adds nothing then
            decay = None
    factor, out_states[-1] = flats[-1].fuse[1](states[-1])
    if (
        isinstance(factor, torch.Tensor)
        and factor.device.type == "cpu"
        and factor.dim() == 0
        and not factor.requires_grad
        and not torch.compiler.is_compiling()
        and maybe_current_level() is None
    ):
        # a schedule's value, read for free on the CPU (as the bias corrections): as a
        # number it folds into Adam's denominator
        factor = float(factor)
    us, out_states[0] = flats[0].fuse[1](us, states[0], ps, spec, factor, decay)
    return us, out_states


def _eager_in_place() -> bool:
    """Whether writing into tensors is safe and useful: eager, outside torch.func
    transforms (vmap would loop), compile (which fuses the copies away) and forward-mode
    AD (no ``out=`` there)."""
    if torch.compiler.is_compiling():  # first: dynamo need not trace the rest
        return False
    return maybe_current_level() is None and torch.autograd.forward_ad._current_level < 0


def chain(*args: GradientTransformation) -> GradientTransformation:
    """Apply the transformations in order; the state is the tuple of their states.

    ``chain(clip_by_global_norm(1.0), scale_by_adam(), scale_by_learning_rate(1e-3))`` is
    Adam with clipped gradients. In eager mode a piece may write into the updates an
    earlier piece made (never into the caller's gradients, params or state), which saves a
    full-size allocation per piece.

    Extra keyword arguments of ``update`` go to the members that take them (the
    :class:`GradientTransformationExtraArgs`), as optax's, and are dropped for the others.

    Arguments:
        *args: GradientTransformations (or objects with ``init`` and ``update``).

    Returns:
        The chained transformation, a :class:`GradientTransformationExtraArgs`.
    """
    transformations = tuple(
        as_transformation("fm.optim.chain", f"argument {i}", t) for i, t in enumerate(args)
    )

    # The list forms are read here, once: under compile too (dynamo traces no weak
    # registry), a chain built outside the compiled step then traces its pieces' list
    # forms, without a flatten and an unflatten of every tree per piece.
    compiling = torch.compiler.is_compiling()
    flats = [None if compiling else _FLAT.get(t.update) for t in transformations]

    def init(params):
        return tuple(t.init(params) for t in transformations)

    def fn(us, state, ps, spec, own, extra=None):
        if not isinstance(state, tuple) or len(state) != len(transformations):
            got = type(state).__name__
            if type(state) is tuple:
                got = f"a tuple of {len(state)}"
            raise TypeError(
                f"fm.optim.chain: expected the tuple of {len(transformations)} states made by "
                f"this chain's init, got {got} (states are not interchangeable between "
                "optimisers)"
            )
        eager = _eager_in_place()
        owned, new_state, i = own and eager, [], 0
        while i < len(transformations):
            t, flat, n = transformations[i], flats[i], _fusion(flats, i)
            if extra and isinstance(t, GradientTransformationExtraArgs):
                flat, n = None, 0  # the tree form is the one that takes the extra arguments
            if n:
                us, states = _fused(flats[i : i + n], us, state[i : i + n], ps, spec)
                new_state.extend(states)
                owned, i = eager, i + n
                continue
            if flat is not None:
                if flat.needs_params and ps is None:
                    raise ValueError(f"{flat.where}: {_NO_PARAMS}")
                us, s, owned = flat.fn(us, state[i], ps, spec, owned)
                owned = owned and eager
            else:
                params = None if ps is None else unflatten(ps, spec)
                tree, s = call_update(t, unflatten(us, spec), state[i], params, extra)
                us, owned = flatten_like(tree, spec, "updates", "the params"), False
            new_state.append(s)
            i += 1
        return us, tuple(new_state), owned

    def update(updates, state, params=None, **extra_args):
        if params is not None:
            ps, spec = flatten(params)
            us = flatten_like(updates, spec, "grads")
        else:
            ps, (us, spec) = None, flatten(updates)
        out, state, _ = fn(us, state, ps, spec, False, extra_args)
        return unflatten(out, spec), state

    if not torch.compiler.is_compiling():
        _FLAT[update] = Flat(fn, False, "fm.optim.chain")
    return GradientTransformationExtraArgs(init, update)


def call_update(t: GradientTransformation, updates, state, params, extra: dict | None):
    """``t.update``, given the extra arguments when it takes them (optax's rule)."""
    if extra and isinstance(t, GradientTransformationExtraArgs):
        return t.update(updates, state, params, **extra)
    return t.update(updates, state, params)
