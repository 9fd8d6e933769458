"""The spec protocol: an immutable, hashable description of a layer.

A spec is a frozen dataclass deriving from :class:`Spec`. It holds configuration only
(sizes, flags, child specs); tensors live in :class:`~funcmodels.Params` and
:class:`~funcmodels.State`. Every piece of the protocol is declared on :class:`Spec` with
a default, so a layer overrides only what it has:

Structure
    ``children()``: named child specs, in parameter order (composites only).
    ``layer_count()``: how many layers the spec stands for; a layer with a count field
    (``n``, ``num_layers``) multiplies it in, so the budget of files and configs holds.
    ``param_shapes()`` / ``init_params(key, *, dtype, device)``: its own trainable tensors.
    ``state_shapes()`` / ``init_state(key, *, dtype, device)``: its own buffers.

Computation
    ``forward(ctx, x)``: the computation on a *batched* input; ``ctx`` is a
    :class:`~funcmodels.Context` scoped to the layer (its tensors, children, key, mode,
    aux and the lifted vmap).

Batching
    ``example_ndim``: the rank of one example, when the layer knows it, so that
    :func:`funcmodels.run` accepts unbatched inputs (the natural form under ``vmap``).
    ``preserves_rank``: the output has the input's rank, so a container can look past
    the layer for the rank of its examples.

Shapes (see :mod:`funcmodels._shapes`)
    ``out_shape(in_shape)``: one example's output shape; ``resolve(in_shape)``: the spec
    with the sizes named in ``inferred_fields`` (left ``None``) filled from the input.

Configs and files (see :mod:`funcmodels._encode`)
    ``to_config()`` and the class method ``from_fields(fields)``; ``config_problem()``
    says why a layer cannot be written (``None``: it can); ``layers_field`` names the
    field of named children that a config writes as a list of entries;
    ``config_ignores`` names torch arguments a config may give and that mean nothing here
    (``inplace``). ``type_name`` is the unique registered name (the class name unless
    set); see :mod:`funcmodels._registry`.

Checkpoints
    ``adapt_state_dict(entries, prefix)``: rewrite a ``state_dict`` in another layout (an
    unstacked one, say) into this layer's names before it is checked and loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from . import _encode, _registry
from . import random as _random
from ._context import Context, cached, layer_name, name_hash

__all__ = ["Spec", "expected_entries", "field_values", "init_tree", "layer_name", "name_hash"]


_CHECKED: set[type] = set()


class Spec:
    """Base class of all layer specs. Subclasses are ``@dataclass(frozen=True)`` (making an
    instance of one that is not raises ``TypeError``).

    A spec says what a layer computes (its fields, its children), never holds tensors, and
    is immutable and hashable. The guide "Writing a layer" and :mod:`funcmodels.extend`
    show how to write one.

    Arguments:
        *args: the subclass's fields, by position.
        **kwargs: the subclass's fields, by name.
    """

    #: rank of a single example (``None``: any rank, or decided by the layer itself)
    example_ndim: ClassVar[int | None] = None
    #: the output has the rank of the input (activations, norms, dropout, ...)
    preserves_rank: ClassVar[bool] = False
    #: the unique registered name (defaults to the class name; set it to avoid a clash)
    type_name: ClassVar[str] = ""
    #: size fields that may be ``None`` and are then inferred from the input shape
    inferred_fields: ClassVar[tuple[str, ...]] = ()
    #: the field holding named children that configs write as a list of entries
    layers_field: ClassVar[str | None] = None
    #: torch constructor arguments a config may give that have no effect here
    config_ignores: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls not in _CHECKED:
            if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
                raise TypeError(
                    f"{cls.__qualname__}: a spec class must be a frozen dataclass: decorate it "
                    "with @dataclasses.dataclass(frozen=True) (specs are immutable and hashable, "
                    "so they can be compared, cached and saved)"
                )
            _CHECKED.add(cls)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name") or cls.__name__
        if not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__}.type_name must be a string, got {name!r}")
        cls.type_name = name
        _registry.add_type(cls, name)

    # -- tree structure ---------------------------------------------------------------
    def children(self) -> tuple[tuple[str, Spec], ...]:
        """Named child specs, in parameter order."""
        return ()

    def child(self, name: str) -> Spec:
        """The child spec called ``name``."""
        table = cached(self, "_fm_children", lambda: dict(self.children()))
        try:
            return table[name]
        except KeyError:
            raise ValueError(
                f"{self.type_name} has no child {name!r}; its children: {list(table)}"
            ) from None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Own trainable tensors: name -> shape."""
        return {}

    def init_params(
        self, key: torch.Tensor, *, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Own trainable tensors from the layer's key, of ``dtype`` on ``device``.

        Fold a name into ``key`` for each tensor (``fm.fold_in(key, name_hash(name))``,
        with :func:`funcmodels.extend.name_hash`) so that tensors of one layer are
        independent.
        """
        return {}

    def state_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        """Own buffers: name -> (shape, dtype); dtype ``None`` follows the params' dtype."""
        return {}

    def init_state(
        self, key: torch.Tensor, *, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Own buffers, on ``device``; ``key`` is the layer's key (for random masks)."""
        return {}

    def stack_size(self) -> int | None:
        """``n`` for a layer that keeps ``n`` members' tensors stacked on dim 0 under the
        members' own names (:class:`~funcmodels.nn.Stack`), ``None`` for any other layer.

        Read by error messages only: a tensor of such a layer that has a member's shape
        comes from a ``vmap`` over the stacked params, and the message says so.
        """
        return None

    # -- computation ------------------------------------------------------------------
    def forward(self, ctx: Context, x: Any) -> Any:
        """The layer's computation on a batch ``x``; see :class:`~funcmodels.Context`."""
        raise NotImplementedError(f"{type(self).__name__} defines no forward(ctx, x)")

    def stacked(
        self, ctx: Context, params: dict[str, torch.Tensor], x: Any, in_axis: int | None
    ) -> Any:
        """Optional fast path of :class:`~funcmodels.nn.Stack`: ``n`` members of this spec
        at once, from their stacked ``params`` (this spec's names, each tensor with a
        leading axis of ``n``), as ``Stack(self, n, in_axis)`` computes them, without
        ``vmap``; ``x`` is a batch (shared, or with the members on dim 0 for
        ``in_axis=0``). Called for specs without state, in eager mode and under
        ``torch.func`` transforms (not under compile, where inductor fuses the vmap), in
        train mode too: only layers that draw nothing may have one. ``NotImplemented``
        (the default) keeps the lifted vmap. ``Linear`` has one (a
        batched ``baddbmm``, which vmap's rule for ``linear`` does not fuse), so do the
        pointwise activations and ``Sequential`` of such layers.
        """
        return NotImplemented

    def _stacks_directly(self) -> bool:
        """Whether :meth:`stacked` can answer (checked before any work is done)."""
        return type(self).stacked is not Spec.stacked

    # -- shapes -----------------------------------------------------------------------
    def out_shape(
        self, in_shape: tuple[Any, ...], path: str = "", record: dict | None = None
    ) -> tuple[Any, ...]:
        """Output shape of one example given the input shape of one example (no batch dim).

        Arguments:
            in_shape: sizes, ``None`` where unknown; a leading ``...`` stands for an
                unknown number of leading dims.
            path: the layer's path prefix, for error messages.
            record: composites add each descendant's output shape under its layer path.

        Returns:
            The output shape in the same notation. Raises ``ValueError`` naming the layer
                when the input does not fit the spec.
        """
        raise self._error(
            path,
            "defines no shape rule (out_shape), so shapes cannot be inferred through it; "
            "give every size explicitly and call fm.init without input_shape",
            TypeError,
        )

    def resolve(self, in_shape: tuple[Any, ...], path: str = "") -> Spec:
        """This spec with its omitted sizes filled from ``in_shape`` (one example's shape).

        Sizes that ``in_shape`` does not determine (``None`` entries) stay omitted.
        """
        return self

    def omitted(self) -> tuple[str, ...]:
        """The names in ``inferred_fields`` still ``None``; params need them filled."""
        return tuple(n for n in self.inferred_fields if getattr(self, n) is None)

    # -- configs, files and checkpoints -----------------------------------------------
    def to_config(self, *, defaults: bool = False) -> list[dict[str, Any]] | dict[str, Any]:
        """This spec in the config format of :func:`funcmodels.from_config`.

        Arguments:
            defaults: also write the fields equal to their defaults (files do).

        Returns:
            A list of layer entries for a :class:`~funcmodels.nn.Sequential`, one entry
                dict for any other layer; JSON- and YAML-able, and ``fm.from_config`` of it
                equals this spec.
        """
        return _encode.encode(self, defaults=defaults)

    def config_problem(self) -> str | None:
        """Why this layer cannot be written as a config (nor so saved by ``fm.save``), with
        the way out; ``None`` (the default) when it can. A layer holding what no field can
        express (a torch module without known constructor arguments) says so here, and
        ``to_config`` raises ``ValueError`` with the message, naming the entry."""
        return None

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Spec:
        """Build the spec from decoded config fields (by default ``cls(**fields)``)."""
        return cls(**fields)

    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        """Rewrite, in place, the entries under ``prefix`` of a state_dict in another
        layout into this layer's own names (by default nothing to do)."""

    # -- helpers ----------------------------------------------------------------------
    def _error(self, path: str, message: str, exc: type[Exception] = ValueError) -> Exception:
        err = exc(f"layer '{layer_name(path)}' ({self.type_name}): {message}")
        err._fm_located = True
        return err

    def walk(self, path: str = "") -> Iterator[tuple[str, Spec]]:
        """Yield ``(prefix, spec)`` for this spec and every descendant, depth first.

        Iterative, so a deep spec never exhausts Python's stack here.
        """
        stack = [(path, self)]
        while stack:
            prefix, spec = stack.pop()
            yield prefix, spec
            stack.extend((f"{prefix}{n}.", c) for n, c in reversed(spec.children()))

    def layer_count(self) -> int:
        """How many layers this spec stands for: itself and, recursively, its children.

        A layer whose count field repeats a child or a block of tensors (``Stack`` and
        ``Repeat``'s ``n``, the ``num_layers`` of the recurrent and transformer stacks)
        overrides this to multiply the count in, without building what it counts. Files and
        configs hold at most :data:`funcmodels._encode.MAX_LAYERS`, and every count-holding
        layer checks this at construction, so a document of a few bytes cannot make
        :func:`funcmodels.load` or :func:`funcmodels.from_config` build 10^9 children.
        Computed once per spec object.

        Returns:
            a positive int (1 for a layer without children).
        """

        def make() -> int:
            # Iterative over plain composites (a deep Sequential never exhausts the stack);
            # a layer with its own rule counts its subtree itself.
            total, stack = 1, [c for _, c in self.children()]
            while stack:
                s = stack.pop()
                if type(s).layer_count is Spec.layer_count:
                    total += 1
                    stack.extend(c for _, c in s.children())
                else:
                    total += s.layer_count()
            return total

        return cached(self, "_fm_layer_count", make)

    def has_state(self) -> bool:
        return any(s.state_shapes() for _, s in self.walk())


def depth(spec: Spec) -> int:
    """The number of nested levels of ``spec`` (1 for a layer without children)."""
    deepest, stack = 0, [(1, spec)]
    while stack:
        d, s = stack.pop()
        deepest = max(deepest, d)
        stack.extend((d + 1, c) for _, c in s.children())
    return deepest


def expected_entries(spec: Spec, which: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Every param or buffer of a model, by dotted path, with its shape and dtype.

    Computed once per spec object.

    Arguments:
        spec: the model's spec (every size known).
        which: ``'params'`` or ``'state'``.

    Returns:
        ``{dotted path: (shape, dtype)}`` in parameter order; the dtype is ``None`` for
            every param and for a buffer that follows the params' dtype.
    """

    def make():
        out: dict[str, tuple[tuple[int, ...], Any]] = {}
        for prefix, s in spec.walk():
            if which == "params":
                for n, shape in s.param_shapes().items():
                    out[prefix + n] = (tuple(shape), None)
            else:
                for n, (shape, dtype) in _state_shapes(s, prefix).items():
                    out[prefix + n] = (tuple(shape), dtype)
        return out

    return cached(spec, f"_fm_expected_{which}", make)


def _state_shapes(spec: Spec, prefix: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``spec.state_shapes()``, checked: each entry ``(shape, dtype or None)``."""
    shapes = spec.state_shapes()
    for name, entry in shapes.items():
        ok = (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], (tuple, list, torch.Size))
            and (entry[1] is None or isinstance(entry[1], torch.dtype))
        )
        if not ok:
            raise spec._error(
                prefix,
                f"state_shapes() must map each buffer name to (shape, dtype or None), got "
                f"{entry!r} for {name!r}",
                TypeError,
            )
    return shapes


def field_values(spec: Spec) -> dict[str, Any]:
    """The spec's dataclass fields by name: the constructor arguments that rebuild it.

    Arguments:
        spec: any spec.

    Returns:
        ``{field name: value}`` in field order (a new dict).
    """
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def _own(
    spec: Spec,
    prefix: str,
    made: dict[str, torch.Tensor],
    want: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
    what: str,
) -> dict[str, torch.Tensor]:
    """Check what ``init_params``/``init_state`` returned against the declared shapes."""
    if not isinstance(made, dict) or set(made) != set(want):
        got = sorted(made) if isinstance(made, dict) else type(made).__name__
        raise spec._error(
            prefix,
            f"{what} returned {got}, but its declared shapes name {sorted(want)}",
            TypeError,
        )
    out = {}
    for name, expected in want.items():
        shape, kind = (expected, None) if what == "init_params" else expected
        t = made[name]
        problem = None
        if not isinstance(t, torch.Tensor):
            problem = f"a {type(t).__name__}, not a tensor"
        elif tuple(t.shape) != tuple(shape):
            problem = f"shape {tuple(t.shape)}, but the declared shape is {tuple(shape)}"
        elif t.device != device:
            problem = f"a tensor on {t.device}, but the device asked for is {device}"
        elif t.dtype != (kind or dtype):
            problem = f"dtype {t.dtype}, but the dtype asked for is {kind or dtype}"
        if problem is not None:
            raise spec._error(prefix, f"{what} returned {name!r} as {problem}", TypeError)
        out[name] = t
    return out


def _located_init(spec: Spec, prefix: str, init, shapes: dict, key, dtype, device) -> Any:
    """``init(key, dtype=..., device=...)`` of one layer; a size no machine can hold is
    refused before allocating, and an allocation that fails names the layer and its sizes."""
    itemsize = dtype.itemsize
    sizes = {n: math.prod(shape) * itemsize for n, shape in shapes.items()}
    described = ", ".join(f"{n!r} {tuple(shapes[n])} ({_bytes(b)})" for n, b in sizes.items())
    if any(b >= 2**63 for b in sizes.values()):
        raise spec._error(
            prefix,
            f"its tensors of {dtype} cannot exist: {described}; a tensor holds under 2^63 "
            "bytes (is a size wrong?)",
        )
    try:
        return init(key, dtype=dtype, device=device)
    except RuntimeError as e:
        text = str(e)
        if getattr(e, "_fm_located", False) or not ("allocat" in text or "overflow" in text):
            raise
        err = type(e)(
            f"layer '{layer_name(prefix)}' ({spec.type_name}): could not allocate its "
            f"tensors on {device}: {described}, {_bytes(sum(sizes.values()))} in all "
            f"(init on device='meta' for shapes without memory): {text}"
        )
        err._fm_located = True
        raise err from e


def _bytes(n: int) -> str:
    if n >= 10**15:
        return f"about 2^{n.bit_length() - 1} bytes"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def init_tree(
    spec: Spec, key: torch.Tensor, *, dtype: torch.dtype, device: torch.device, state: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Params (and state) of every layer of ``spec``, flat and in ``state_dict`` order.

    The root layer gets ``key``; each child the key of its parent with the child's name
    folded in (CRC32), so adding a layer leaves its siblings' values unchanged. What each
    layer returns is checked against its declared shapes, the dtype and the device.
    """
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] | None = {} if state else None
    stack = [("", spec, key)]
    while stack:
        prefix, s, k = stack.pop()
        shapes = s.param_shapes()
        own = _located_init(s, prefix, s.init_params, shapes, k, dtype, device)
        params.update(
            (prefix + n, t)
            for n, t in _own(s, prefix, own, shapes, dtype, device, "init_params").items()
        )
        if buffers is not None:
            shapes = _state_shapes(s, prefix)
            sizes = {n: shape for n, (shape, _) in shapes.items()}
            own = _located_init(s, prefix, s.init_state, sizes, k, dtype, device)
            checked = _own(s, prefix, own, shapes, dtype, device, "init_state")
            buffers.update((prefix + n, t) for n, t in checked.items())
        stack.extend(
            (f"{prefix}{n}.", c, _random.fold_in(k, name_hash(n)))
            for n, c in reversed(s.children())
        )
    return params, buffers


def _module_order(names: list[str]) -> list[str]:
    """Dotted names in the order torch's ``state_dict`` lists them for modules nested by
    the dots: a module's own tensors first (in the given order), then each child's, the
    children in order of first appearance."""
    own = [n for n in names if "." not in n]
    groups: dict[str, list[str]] = {}
    for n in names:
        if "." in n:
            head, rest = n.split(".", 1)
            groups.setdefault(head, []).append(rest)
    return own + [f"{head}.{r}" for head, rest in groups.items() for r in _module_order(rest)]


def state_dict_order(spec: Spec, *, with_state: bool) -> tuple[str, ...]:
    """Every entry's dotted path in torch's ``state_dict`` order: per layer its params,
    then its buffers, then its children's. (A layer's own names may hold dots, as a
    Stack's do; they are ordered as torch orders the modules those dots make.)"""

    def make():
        out: list[str] = []
        for prefix, s in spec.walk():
            own = list(s.param_shapes()) + (list(s.state_shapes()) if with_state else [])
            out += [prefix + n for n in _module_order(own)]
        return tuple(out)

    return cached(spec, f"_fm_order_{with_state}", make)
