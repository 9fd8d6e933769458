"""What a layer's ``forward`` sees besides its input: a :class:`Context` scoped to the layer.

One call of :func:`funcmodels.run` makes one :class:`Run` (the flat params and state, the
train flag, the root key, the mode, and what the call produces: new buffers and sown
values) and a root :class:`Context`; ``ctx.apply(child, x)`` makes the child's context,
so a layer only ever names its own tensors and children, never a path.

The lifted vmap (:meth:`Context.vmap`) runs a spec under :func:`torch.func.vmap` over a
stack of its params and state, with one key per member. Everything the members produce
(output, new buffers, sown values) comes back as a vmap output; nothing is written into a
shared object from inside the vmapped function, which is what lets BatchNorm and Dropout
run there. The lifted scan and remat (:meth:`Context.scan`, :meth:`Context.remat`) follow
the same rule; how torch runs them is in :mod:`funcmodels._lifted`.

Errors raised inside a layer (by the layer or by torch) reach the user prefixed with the
path and type of the innermost layer that was running (see :func:`call`).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import torch
from torch._C import _functorch
from torch.utils.checkpoint import _StopRecomputationError

from . import _lifted
from . import random as _random

#: ``Context.mode`` values
EAGER, TRANSFORM, COMPILE = "eager", "transform", "compile"


# Names are fixed by the spec, so under torch.compile the hash is a trace-time constant
# (zlib itself is opaque to dynamo and would break the graph).
@torch.compiler.assume_constant_result
def name_hash(name: str) -> int:
    """Stable 32-bit hash of a name (CRC32), to fold a name into a PRNG key.

    ``fm.fold_in(key, name_hash("weight"))`` gives a tensor its own key, independent of
    its siblings' and the same in every process; per-layer keys fold each child's name
    in the same way. A trace-time constant under ``torch.compile``.

    Arguments:
        name: any string (a tensor's or child's name).

    Returns:
        an int in ``[0, 2**32)``.
    """
    return zlib.crc32(name.encode("utf-8"))


def layer_name(prefix: str) -> str:
    """A layer's path as error messages print it: ``'main_branch.0'``, or ``'<root>'``.

    Arguments:
        prefix: the layer's prefix as :meth:`Spec.walk` yields it (``'main_branch.0.'``,
            ``''`` for the root).

    Returns:
        the path without the trailing dot, ``'<root>'`` for the root.
    """
    return prefix[:-1] if prefix else "<root>"


def detect_mode() -> str:
    """``'compile'`` under torch.compile, ``'transform'`` inside any torch.func transform
    (vmap, grad, jacrev, ...), else ``'eager'``: where dynamic shapes are allowed."""
    if torch.compiler.is_compiling():
        return COMPILE
    if _functorch.peek_interpreter_stack() is not None:
        return TRANSFORM
    return EAGER


def cached(spec: Any, name: str, make) -> Any:
    """A value derived from a (frozen, immutable) spec, computed once per spec object.

    Kept in the instance ``__dict__``, which equality, hashing and the spec's fields
    ignore; specs without a ``__dict__`` recompute it each time. For what a layer or a
    transform would otherwise work out on every call (a table of its children, the names
    of its rank-local params).

    Arguments:
        spec: the spec the value belongs to.
        name: the attribute to keep it under; prefix it with your package's name so that
            it clashes with no field and no other cache (``'_mylib_table'``).
        make (Callable[[], Any]): ``make()`` computes the value; it must not return
            ``None`` (which reads as not computed yet).

    Returns:
        the value, ``make()`` on the first call for this spec object.
    """
    d = getattr(spec, "__dict__", None)
    if d is None:
        return make()
    value = d.get(name)
    if value is None:
        value = make()
        # Not while compiling: a write would be a side effect inside torch's scan op.
        if not torch.compiler.is_compiling():
            d[name] = value
    return value


_NO_STATE = (
    "has state (buffers such as BatchNorm running statistics) but none was given; use "
    "params, state = fm.init_with_state(key, spec) and fm.apply(params, x, state=state) or "
    "fm.run(...)"
)


class _Tracker:
    """The innermost layer running, so that an error can name it."""

    __slots__ = ("ctx",)

    def __init__(self) -> None:
        self.ctx: Context | None = None


class Run:
    """The state of one forward call, shared by the contexts of all its layers."""

    __slots__ = ("params", "state", "new_state", "aux", "train", "key", "mode", "track", "tap")

    def __init__(self, params, state, train, key, mode, track=None, tap=None):
        self.params: dict[str, torch.Tensor] = params
        self.state: dict[str, torch.Tensor] | None = state
        self.new_state: dict[str, torch.Tensor] = {}
        self.aux: dict[str, dict[str, Any]] = {}
        self.train: bool = train
        self.key: torch.Tensor | None = key
        self.mode: str = mode
        self.track = _Tracker() if track is None else track
        self.tap = tap


class Context(_lifted.LiftedMethods):
    """A layer's view of one forward call.

    Attributes and methods (all a layer needs):

    * ``ctx.param(name)``, ``ctx.buffer(name)``: the layer's own tensors;
    * ``ctx.set_buffer(name, value)``: the new value of a buffer, returned by
      :func:`funcmodels.run` in its new state (the given state is never changed);
    * ``ctx.apply(child_name, x)``: run a child (or, by a dotted name, a descendant) on
      ``x``;
    * ``ctx.key()``: this layer's PRNG key (the call's key with each name on the path
      folded in); a clear error when the call has none;
    * ``ctx.sow(name, value)``: an auxiliary output, ``fm.run(...).aux[ctx.path][name]``;
    * ``ctx.vmap(spec, x, size=n, in_axis=...)``: the lifted vmap; ``ctx.map(spec, xs)``
      its eager loop over members of different input sizes; ``ctx.scan(spec, x,
      size=n)``: the lifted scan (members in sequence); ``ctx.remat(spec, x)``: a spec
      whose activations are recomputed in the backward pass;
    * ``ctx.train``, ``ctx.path``, ``ctx.mode`` (``'eager'``, ``'transform'`` inside a
      torch.func transform, ``'compile'`` under torch.compile: computed once per call;
      only ``'eager'`` allows data-dependent shapes).

    Contexts are made by :func:`funcmodels.run` and by ``ctx.apply``, never by a layer.

    Arguments:
        run: the state of the whole call (params, buffers, key, mode), shared by every
            layer's context.
        spec: the layer this context runs.
        prefix: the layer's dotted path followed by ``'.'`` (``''`` for the root).
        parent (Context | None): the parent layer's context (``None`` for the root).
        name (str | None): the layer's name in its parent (``None`` for the root).
    """

    __slots__ = ("_run", "spec", "_prefix", "_parent", "_name", "_key")

    def __init__(self, run: Run, spec: Any, prefix: str, parent=None, name=None):
        self._run = run
        self.spec = spec
        self._prefix = prefix
        self._parent = parent
        self._name = name
        self._key = None

    @property
    def path(self) -> str:
        """This layer's dotted path, ``''`` for the root."""
        return self._prefix[:-1]

    @property
    def train(self) -> bool:
        return self._run.train

    @property
    def mode(self) -> str:
        return self._run.mode

    # -- tensors ------------------------------------------------------------------------
    def param(self, name: str) -> torch.Tensor:
        """The layer's own trainable tensor ``name`` (one of its ``param_shapes()``)."""
        try:
            return self._run.params[self._prefix + name]
        except KeyError:
            raise ValueError(
                f"has no parameter {name!r}; its parameters: {list(self.spec.param_shapes())}"
            ) from None

    def buffer(self, name: str) -> torch.Tensor:
        """The layer's own buffer ``name``: its new value if set in this call, else the
        value in the given state."""
        run = self._run
        k = self._prefix + name
        if k in run.new_state:
            return run.new_state[k]
        if run.state is None:
            raise ValueError(_NO_STATE)
        try:
            return run.state[k]
        except KeyError:
            raise ValueError(
                f"has no buffer {name!r}; its buffers: {list(self.spec.state_shapes())}"
            ) from None

    def set_buffer(self, name: str, value: torch.Tensor) -> None:
        """Record the new value of buffer ``name``; :func:`funcmodels.run` returns it."""
        if name not in self.spec.state_shapes():
            raise ValueError(
                f"has no buffer {name!r} to set; its buffers: {list(self.spec.state_shapes())}"
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"buffer {name!r} must be set to a tensor, got {type(value).__name__}")
        if self._run.state is None:
            raise ValueError(_NO_STATE)
        self._run.new_state[self._prefix + name] = value

    # -- children -----------------------------------------------------------------------
    def apply(self, child_name: str, x: Any) -> Any:
        """Run the child ``child_name`` on ``x`` and return its output.

        A dotted name (``'blocks.3'``) runs a descendant: a layer that uses a container
        child only to hold and name its parts runs them one by one.
        """
        if "." in child_name:
            head, rest = child_name.split(".", 1)
            return self._scope(head).apply(rest, x)
        child = self._scope(child_name)
        run = self._run
        track = run.track
        track.ctx = child
        out = child.spec.forward(child, x)
        if run.tap is not None:
            out = run.tap(child, x, out)
        track.ctx = self
        return out

    def _scope(self, child_name: str) -> Context:
        """The context of child ``child_name``, without running it."""
        spec = self.spec.child(child_name)
        return Context(self._run, spec, f"{self._prefix}{child_name}.", self, child_name)

    def own_params(self) -> dict[str, torch.Tensor]:
        """The layer's own trainable tensors, by their names in ``param_shapes()``."""
        params = self._run.params
        return {n: params[self._prefix + n] for n in self.spec.param_shapes()}

    # -- randomness and aux -------------------------------------------------------------
    def has_key(self) -> bool:
        """Whether :meth:`key` has a key to give (the call was given one)."""
        return self._run.key is not None

    def key(self) -> torch.Tensor:
        """This layer's PRNG key: the call's key with each name on the path folded in."""
        k = self._key
        if k is None:
            if self._parent is None:
                k = self._run.key
                if k is None:
                    raise ValueError(
                        "needs a PRNG key in train mode; call "
                        "fm.apply(params, x, key=fm.key(0), train=True) (or pass train=False)"
                    )
            else:
                k = _random.fold_in(self._parent.key(), name_hash(self._name))
            self._key = k
        return k

    def sow(self, name: str, value: torch.Tensor) -> None:
        """Record an auxiliary output: ``fm.run(...).aux[ctx.path][name] = value``.

        Under :class:`~funcmodels.nn.Stack` (or any lifted vmap) the value gains the
        members' leading axis. A name can be sown once per layer and call.
        """
        if not isinstance(name, str):
            raise TypeError(f"sow: name must be a string, got {type(name).__name__}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"sow({name!r}, ...): expected a tensor, got {type(value).__name__} "
                "(aux values travel through vmap and compile, so they are tensors)"
            )
        own = self._run.aux.setdefault(self.path, {})
        if name in own:
            raise ValueError(
                f"sowed {name!r} twice in one call; give each value its own name "
                "(a layer run several times can add the step to the name)"
            )
        own[name] = value

    # -- the lifted vmap ----------------------------------------------------------------
    def vmap(self, spec: Any, x: Any, *, size: int, in_axis: int | None = None) -> Any:
        """Run ``spec`` at this layer's path over ``size`` stacked copies of this layer's
        own params and state (each with a leading axis of ``size``).

        Member ``i`` sees ``x`` (``in_axis=None``) or ``x`` indexed at ``i`` along
        ``in_axis``, and in train mode the key of this layer with ``i`` folded in. Its
        output, new buffers and sown values come back stacked on dim 0: the buffers
        become this layer's new state, the sown values its aux (paths below this layer).

        Arguments:
            spec: the member spec; this layer's own ``param_shapes()`` must be its
                entries with the leading axis (as :class:`~funcmodels.nn.Stack` makes).
            x: the input (any pytree of tensors).
            size: the number of members.
            in_axis: ``None`` to share ``x``, or the axis of ``x`` holding the members.

        Returns:
            the members' outputs, stacked on dim 0.
        """
        run = self._run
        pre = self._prefix
        params, state, key = self._own_inputs()
        device = key.device if key is not None else _lifted.device_of(x, params)
        members = torch.arange(size, device=device)
        mode = run.mode if run.mode == COMPILE else TRANSFORM
        track = run.track

        def member(p, s, i, xi):
            k = None if key is None else _random.fold_in(key, i)
            inner = Run(p, s, run.train, k, mode, track)
            out = spec.forward(Context(inner, spec, pre), xi)
            return out, inner.new_state, inner.aux

        in_dims = (0, None if state is None else 0, 0, in_axis)
        out, new_state, aux = torch.func.vmap(member, in_dims=in_dims)(params, state, members, x)
        track.ctx = self
        self._merge(new_state, aux)
        return out

    def _own_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        spec = self.spec
        return cached(
            spec, "_fm_own_names", lambda: (tuple(spec.param_shapes()), tuple(spec.state_shapes()))
        )


# -- errors ------------------------------------------------------------------------------

# torch's wordings for a dtype mismatch, from the kernels our layers call.
_DTYPE = re.compile(
    r"dtype|scalar type|datatype|not implemented for '|type \(.*\) should be the same"
)
_DTYPE_HINT = (
    " (the input and the parameters must have the same dtype: convert the input, or the "
    "parameters with params.to(dtype))"
)


def located(err: Exception, ctx: Context | None) -> Exception:
    """``err`` as the user should see it: prefixed with the layer that raised it.

    Errors already located pass through. Torch's ``RuntimeError`` about dtypes becomes a
    ``TypeError``; other errors from a layer keep their class when it is ``TypeError``,
    ``ValueError`` or ``NotImplementedError``, and become ``ValueError`` otherwise.
    """
    if getattr(err, "_fm_located", False) or ctx is None:
        return err
    message = str(err)
    if isinstance(err, (TypeError, ValueError)):
        cls = TypeError if isinstance(err, TypeError) else ValueError
    elif isinstance(err, (RuntimeError, NotImplementedError)) and _DTYPE.search(message):
        cls = TypeError
        message += _DTYPE_HINT
    elif isinstance(err, NotImplementedError):
        cls = NotImplementedError
    else:
        cls = ValueError
    new = cls(f"layer '{layer_name(ctx._prefix)}' ({ctx.spec.type_name}): {message}")
    new._fm_located = True
    return new


def call(ctx: Context, x: Any) -> Any:
    """Run the root layer of a call; errors come out located (see :func:`located`).

    Under torch.compile nothing is caught: dynamo's own exceptions must pass untouched.
    """
    track = ctx._run.track
    track.ctx = ctx
    tap = ctx._run.tap
    if ctx._run.mode == COMPILE:
        out = ctx.spec.forward(ctx, x)
        track.ctx = None
        return out if tap is None else tap(ctx, x, out)
    try:
        out = ctx.spec.forward(ctx, x)
        return out if tap is None else tap(ctx, x, out)
    except (torch.OutOfMemoryError, _StopRecomputationError):
        # torch.utils.checkpoint stops a recomputation early by raising through the
        # function it re-runs (an fm.apply, say): it must reach checkpoint untouched.
        raise
    except Exception as err:
        new = located(err, track.ctx)
        if new is err:
            raise
        raise new from err
    finally:
        # The tracker points into the call's contexts, which point back to the run: clear
        # it so that plain reference counting frees the call (no cycle left for the GC).
        track.ctx = None
