"""Gradients and compiled steps: :func:`value_and_grad`, :func:`grad` and :func:`jit`.

``value_and_grad`` and ``grad`` return exactly what :func:`torch.func.grad_and_value` and
:func:`torch.func.grad` return. Outside torch.func transforms they take a faster road to
the same numbers: ``fn`` runs on detached copies of the differentiated leaves that
require grad, and one :func:`torch.autograd.grad` call gives the gradients, without
functorch's per-op wrapping (about half of a small model's gradient time). Inside
``vmap``, ``grad``, ``jacrev`` (per-sample gradients, Hessians) and under
:func:`torch.compile` they call torch.func.

``jit`` compiles a whole training step as one graph and refuses to fall back to eager.
"""

from __future__ import annotations

import functools
import re
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._C import _functorch
from torch._functorch.eager_transforms import _slice_argnums, _validate_and_wrap_argnums

from ._tree import Params, State

_WHERE = "grad_and_value(f)(*args)"


def _flatten(tree: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """``(leaves, rebuild)`` of one argument, as torch's pytree flattens it.

    A tensor and a Params/State of tensors (what a training step passes) skip pytree's
    generic walk, which costs tens of microseconds a call.
    """
    if isinstance(tree, torch.Tensor):
        return [tree], lambda leaves: leaves[0]
    if type(tree) in (Params, State):
        flat = tree._flat
        values = list(flat.values())
        if all(isinstance(t, torch.Tensor) for t in values):
            keys, spec, make = list(flat), tree.spec, type(tree)._make
            return values, lambda leaves: make(spec, dict(zip(keys, leaves, strict=True)))
    leaves, spec = pytree.tree_flatten(tree)
    return leaves, lambda new: pytree.tree_unflatten(new, spec)


def _transformed() -> bool:
    """Whether a torch.func transform, compilation or inference mode is active: then
    torch.func computes the gradients."""
    return (
        _functorch.peek_interpreter_stack() is not None
        or torch.compiler.is_compiling()
        or torch.is_inference_mode_enabled()
    )


def _in_outer_graph(tree: Any) -> bool:
    if isinstance(tree, torch.Tensor):  # the common arguments skip the flattening
        return tree.requires_grad
    if tree is None or (type(tree) is tuple and not tree):
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in _flatten(tree)[0])


def _check_output(output: Any, has_aux: bool) -> tuple[Any, Any]:
    """``(value, aux)`` of ``fn``'s output, with torch.func's errors for a wrong one."""
    aux = None
    if has_aux:
        if not (isinstance(output, tuple) and len(output) == 2):
            raise RuntimeError(
                f"{_WHERE}: output of function f should be a tuple: (output, aux) if "
                "has_aux is True"
            )
        output, aux = output
    if not isinstance(output, torch.Tensor):
        raise RuntimeError(f"{_WHERE}: Expected f(*args) to return a Tensor, got {type(output)}")
    if output.dim() != 0:
        raise RuntimeError(
            f"{_WHERE}: Expected f(*args) to return a scalar Tensor, got tensor with "
            f"{output.dim()} dims. Maybe you wanted to use the vjp or jacrev APIs instead?"
        )
    return output, aux


def _detach_aux(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise RuntimeError(f"Expected tensors, got unsupported type {type(x)}")
    return x.detach()


def _leaf(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"Thing passed to transform API must be Tensor, got {type(x)}")
    return x.detach().requires_grad_()


def _plain(fn: Callable, nums: tuple[int, ...], has_aux: bool, args, kwargs):
    """torch.func.grad_and_value's ``(grads, value, aux)`` by plain autograd, with the
    grads of each argument in ``nums``; ``None`` when an argument takes part in an outer
    autograd graph (whose gradients would have to flow through the result, as
    torch.func's do)."""
    args = list(args)
    leaves: list[torch.Tensor] = []
    rebuilds = []
    for i in nums:
        flat, rebuild = _flatten(args[i])
        new = [_leaf(t) for t in flat]
        args[i] = rebuild(new)
        rebuilds.append((len(leaves), len(leaves) + len(new), rebuild))
        leaves += new
        if any(t.requires_grad for t in flat if isinstance(t, torch.Tensor)):
            return None
    others = (a for i, a in enumerate(args) if i not in nums)
    if any(_in_outer_graph(a) for a in (*others, *kwargs.values())):
        return None
    with torch.enable_grad():
        value, aux = _check_output(fn(*args, **kwargs), has_aux)
        grads: tuple = (None,) * len(leaves)
        if value.requires_grad and leaves:
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]
    out = tuple(rebuild(grads[a:b]) for a, b, rebuild in rebuilds)
    if has_aux and not (type(aux) is tuple and not aux):
        # A State (a model's new buffers) or a tensor skips pytree's generic walk.
        flat, rebuild = _flatten(aux)
        aux = rebuild([_detach_aux(t) for t in flat])
    return out, value.detach(), aux


def _argnums(argnums: int | tuple[int, ...], n_args: int, cache: dict) -> tuple[int, ...]:
    """The differentiated positions for ``n_args`` arguments (torch.func's checks and
    errors), computed once per argument count."""
    nums = cache.get(n_args)
    if nums is None:
        _slice_argnums((None,) * n_args, argnums)
        wrapped = _validate_and_wrap_argnums(argnums, n_args)
        nums = cache[n_args] = (wrapped,) if isinstance(wrapped, int) else wrapped
    return nums


def _check_args(fn: object, argnums: object, has_aux: object, where: str) -> None:
    if not callable(fn):
        raise TypeError(f"{where}: fn must be callable, got {type(fn).__name__}")
    if not isinstance(has_aux, bool):
        raise TypeError(f"{where}: has_aux must be a bool, got {type(has_aux).__name__}")
    if not isinstance(argnums, (int, tuple)) or isinstance(argnums, bool):
        raise TypeError(
            f"{where}: argnums must be an int or a tuple of ints, got {type(argnums).__name__}"
        )


def value_and_grad(
    fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
) -> Callable[..., tuple[Any, Any]]:
    """The value of ``fn`` and its gradient, in JAX's order: ``loss, grads = ...``.

    The numbers are those of :func:`torch.func.grad_and_value` (bitwise on the CPU), and so
    are the errors (a loss that is not a 0-d tensor, an ``aux`` that is not a pytree of
    tensors, a non-float leaf). Outside torch.func transforms and compilation the gradient
    comes from one :func:`torch.autograd.grad` over detached copies of the differentiated
    leaves (the caller's tensors and their ``requires_grad`` flags are untouched); inside
    ``vmap``/``grad``/``jacrev`` or :func:`torch.compile`, and when an argument already
    requires grad (an outer autograd graph), from torch.func. Tensors that ``fn`` closes
    over are constants to the fast path: to differentiate through them with an outer
    autograd graph, pass them as arguments.

    Arguments:
        fn: a function of ``*args, **kwargs`` returning a 0-d tensor, or with
            ``has_aux=True`` a pair ``(loss, aux)``, ``aux`` a pytree of tensors.
        argnums: which positional arguments to differentiate: an int or a tuple of ints
            (negative ones count from the end).
        has_aux: whether ``fn`` returns ``(loss, aux)``.

    Returns:
        a function of the same arguments returning ``(loss, grads)``, or
            ``((loss, aux), grads)`` with ``has_aux``. ``loss`` is 0-d, ``aux`` detached;
            ``grads`` has the structure and shapes of the differentiated argument (a tuple of
            them for a tuple ``argnums``), with zeros for leaves the loss does not depend on.

    Raises:
        TypeError: ``fn`` not callable, ``argnums`` not an int or tuple, ``has_aux`` not a
            bool (at once); torch.func's ``RuntimeError``/``ValueError`` when called.
    """
    _check_args(fn, argnums, has_aux, "fm.value_and_grad")

    cache: dict[int, tuple[int, ...]] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not _transformed():
            done = _plain(fn, _argnums(argnums, len(args), cache), has_aux, args, kwargs)
            if done is not None:
                grads, value, aux = done
                grads = grads[0] if isinstance(argnums, int) else grads
                return ((value, aux) if has_aux else value), grads
        grads, value = torch.func.grad_and_value(fn, argnums, has_aux)(*args, **kwargs)
        return value, grads

    return wrapper


def grad(
    fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """The gradient of ``fn``, as :func:`torch.func.grad` (the same numbers, fast outside
    transforms: see :func:`value_and_grad`).

    Arguments:
        fn: a function returning a 0-d tensor, or ``(loss, aux)`` with ``has_aux``.
        argnums: an int or a tuple of ints: the positional arguments to differentiate.
        has_aux: whether ``fn`` returns ``(loss, aux)``.

    Returns:
        a function of the same arguments returning ``grads`` (the structure of the
            differentiated argument, or a tuple of them), or ``(grads, aux)`` with ``has_aux``.

    Raises:
        TypeError: a bad ``fn``, ``argnums`` or ``has_aux`` (at once); torch.func's errors
            when called.
    """
    _check_args(fn, argnums, has_aux, "fm.grad")
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value, grads = vg(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapper


# -- jit --------------------------------------------------------------------------------

# The jitted call running on this thread, so that dynamo's compile-start callback (one per
# frame compiled) can count its compiles.
_ACTIVE = threading.local()


def _count_compiles() -> None:
    """Register the compile counter with dynamo unless it is registered: checked at each
    call, since ``torch._dynamo.reset()`` clears every callback (a step jitted before a
    reset would otherwise stop warning of its recompiles)."""
    handler = torch._dynamo.callback_handler
    if _on_compile_start not in getattr(handler, "start_callbacks", ()):
        handler.register_start_callback(_on_compile_start)


def _on_compile_start(*args: Any) -> None:
    state = getattr(_ACTIVE, "state", None)
    trigger = getattr(args[0], "callback_trigger", None) if args else None
    if state is not None and getattr(trigger, "name", "DYNAMO") == "DYNAMO":
        state.compiles += 1


def _traced(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A frame of our own that calls ``fn``, with a code object for this ``jit`` alone.

    Dynamo compiles this frame, so a callable it would not trace as a top-level frame
    (``vmap(step)``, a ``functools.partial``) is traced through, and a graph break inside
    it is an error under ``fullgraph``. A fresh code object gives each jitted function its
    own compile cache, recompile limit and guard-failure record.
    """

    def traced(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    label = name if name.isidentifier() else "step"
    code = traced.__code__.replace(co_name=label)
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=label)
    return types.FunctionType(code, traced.__globals__, label, None, traced.__closure__)


def _frame(e: BaseException) -> str:
    """``file:line in function: source`` of the innermost frame outside torch itself."""
    stack = list(getattr(e, "real_stack", None) or [])
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    ours = [f for f in stack if not f.filename.startswith(torch_dir)] or stack
    if not ours:
        return "an unknown line"
    f = ours[-1]
    line = (f.line or "").strip()
    return f"{f.filename}:{f.lineno} in {f.name}" + (f": `{line}`" if line else "")


def _break_message(name: str, e: BaseException) -> str:
    text = str(getattr(e, "msg", None) or e)
    cause = getattr(e, "gb_type", None)
    if cause is None:
        found = re.search(r"Could not guard on data-dependent expression [^(]*", text)
        cause = found.group(0).strip() if found else text.strip().splitlines()[0][:200]
    explanation = next(
        (s.strip() for s in text.splitlines() if s.strip().startswith("Explanation:")), ""
    )
    if explanation and not explanation.endswith("."):
        explanation += "."
    parts = [
        f"fm.jit({name}): cannot compile the function as one graph: {cause}, at {_frame(e)}.",
        explanation,
        "fm.jit never runs part of a function eagerly: remove the cause (a print, .item(), "
        f"a Python branch on a tensor's value, ...) or call {name} without fm.jit.",
    ]
    return " ".join(p for p in parts if p)


def _shapes(args: tuple, kwargs: dict) -> str:
    flat = pytree.tree_leaves((args, kwargs))
    shown = [tuple(t.shape) for t in flat if isinstance(t, torch.Tensor)]
    return ", ".join(str(s) for s in shown[:8]) + (", ..." if len(shown) > 8 else "")


# Inductor options fm.jit sets unless the caller sets them (measured on CPU, 1 thread; see
# NOTES.md, "fm.jit's inductor defaults"). One graph holds the forward, the backward and
# the optimiser, so nothing is partitioned between a forward and a backward graph:
# - layout_optimization: inductor's channels-last conversion then converts a convolution's
#   input once for the forward and again for the backward convolution, and keeps an NCHW
#   copy besides; off, the small CNN's step took 0.73x the time, ResNet-18's 0.67x.
# - reorder_for_peak_memory, reorder_for_locality: inductor moves each leaf's optimiser
#   update next to the matrix product that makes its gradient, and a C++ kernel ends at
#   each matrix product, so each update got a kernel (a C++ compile) of its own; in graph
#   order the updates share kernels (the MLP step: 5 kernels instead of 7, a quarter less
#   compile time, the same step time).
_INDUCTOR_DEFAULTS = {
    "layout_optimization": False,
    "reorder_for_peak_memory": False,
    "reorder_for_locality": False,
}


def _with_defaults(compile_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``compile_kwargs`` with fm.jit's inductor options under the caller's own (a new
    dict; none are added for another backend or with ``mode``, which torch.compile does
    not take together with ``options``)."""
    if compile_kwargs.get("backend", "inductor") != "inductor" or compile_kwargs.get("mode"):
        return compile_kwargs
    return {
        **compile_kwargs,
        "options": {**_INDUCTOR_DEFAULTS, **(compile_kwargs.get("options") or {})},
    }


class _Jitted:
    """The state of one ``fm.jit`` function: compiles seen, calls made."""

    def __init__(self, fn: Callable[..., Any], name: str, compile_kwargs: dict[str, Any]):
        import torch._dynamo  # noqa: F401  (its exceptions and records; slow to import)

        self.fn = fn
        self.name = name
        traced = _traced(fn, name)
        self.code = traced.__code__
        self.compiled = torch.compile(traced, fullgraph=True, **_with_defaults(compile_kwargs))
        self.compiles = 0
        self.calls = 0
        self.shapes = ""

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        from torch._dynamo.exc import FailOnRecompileLimitHit, Unsupported, UserError
        from torch._dynamo.utils import guard_failures

        _count_compiles()
        seen = len(guard_failures.get(self.code, ()))
        before, previous = self.compiles, getattr(_ACTIVE, "state", None)
        _ACTIVE.state = self
        try:
            out = self.compiled(*args, **kwargs)
        except (Unsupported, UserError, FailOnRecompileLimitHit) as e:
            raise ValueError(_break_message(self.name, e)) from e
        finally:
            _ACTIVE.state = previous
        shapes = _shapes(args, kwargs)
        if self.calls and self.compiles > before:
            reasons = guard_failures.get(self.code, [])[seen:]
            same = (
                " (the shapes of the previous call: a guard on strides, dtypes, aliasing or "
                "a Python value failed)"
                if shapes == self.shapes
                else ""
            )
            warnings.warn(
                f"fm.jit({self.name}): recompiling (compile {self.compiles}) for inputs of "
                f"shapes {shapes}{same}; the guard that failed: "
                f"{reasons[-1] if reasons else 'not recorded'}. Each new input shape or "
                "constant costs a compile; after one recompile for a size, dynamo compiles a "
                "kernel for any size.",
                stacklevel=3,
            )
        self.shapes = shapes
        self.calls += 1
        return out


def jit(fn: Callable[..., Any], **compile_kwargs: Any) -> Callable[..., Any]:
    """Compile ``fn`` (a whole training step: model, loss, optimiser) as one graph.

    :func:`torch.compile` with ``fullgraph=True``, and nothing runs eagerly in its stead:

    * a graph break raises ``ValueError`` naming its cause and the source line (the
      dynamo error is chained);
    * each recompile (a new input shape, dtype or Python constant) warns once, naming the
      input shapes and the guard that failed;
    * ``vmap(step)`` and other wrapped callables are traced through a frame of our own,
      so a graph break inside ``vmap`` (which makes plain ``torch.compile`` run the whole
      ``vmap`` eagerly, unannounced) is an error too.

    Called inside another compiled function, ``fn`` is traced into the caller's graph.

    With the inductor backend (the default) and no ``mode``, fm.jit sets three inductor
    options unless ``options`` sets them: ``layout_optimization=False`` (no channels-last
    copies of convolution inputs, which a one-graph step would make twice) and
    ``reorder_for_peak_memory=False``, ``reorder_for_locality=False`` (the optimiser's
    updates stay in graph order and share C++ kernels, fewer kernels to compile).

    Compile time is paid at the first call and at each recompile: on a CPU 7-9 s of
    CPU time for a small MLP's step with AdamW (plus about 10 s once per process for
    inductor itself), about 1.8x what ``torch.compile`` of the module alone takes (its
    loss and optimiser run eagerly), since the whole step (the gradient transform and the
    optimiser too) is traced and generated, one C++ kernel per group of fused ops; see
    NOTES.md. The compiled step then runs at 0.2-0.5x the eager one.
    Eager is the better choice when the run is short (the steps times the time saved per
    step do not pay the compile), while shapes keep changing (variable sequence lengths
    without padding to a few buckets), for data-dependent control flow (``EarlyExit`` in
    eval, ``.item()``), for a dropless ``transforms.MoE`` (``capacity_factor=None``: compiled,
    every expert runs on all tokens, so a top-2-of-8 step did 4x the expert products and
    took 1.3x the eager step on a CPU), and while debugging.

    Arguments:
        fn: the function to compile.
        **compile_kwargs: passed to :func:`torch.compile` (``mode``, ``dynamic``,
            ``backend``, ``options``, ...); ``fullgraph`` may only be ``True``.

    Returns:
        a function with ``fn``'s signature and results.

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: ``fullgraph=False`` or ``disable=True`` (at once); a graph break (when
            called).
        RuntimeError: from torch, when dynamo is disabled and nothing could be compiled.
    """
    if not callable(fn):
        raise TypeError(f"fm.jit: fn must be callable, got {type(fn).__name__}")
    if compile_kwargs.pop("fullgraph", True) is not True:
        raise ValueError("fm.jit compiles one whole graph: fullgraph must be True (or left out)")
    if compile_kwargs.get("disable", False):
        raise ValueError("fm.jit(..., disable=True): call the function itself to run eagerly")
    name = getattr(fn, "__name__", None) or type(fn).__name__
    state = _Jitted(fn, name, compile_kwargs)

    @functools.wraps(fn)
    def jitted(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return state(args, kwargs)

    return jitted
