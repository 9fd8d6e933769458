"""The bridge between funcmodels and :mod:`torch.nn`: ``to_module`` and ``from_module``.

A converter pairs a spec type with a module type and knows both directions:

* ``build(spec, child)`` returns the module for ``spec``, its children made by
  ``child(name)``; it only decides the structure, because the tensors are loaded
  afterwards from ``fm.to_state_dict`` (so every converter gets torch's naming for free);
* ``infer(module, child)`` returns the spec of ``module``, its children's specs given by
  ``child(name)``; the tensors are then read from ``module.state_dict()``.

The layers of :mod:`funcmodels.nn` and of :mod:`transforms` are registered by the other
files of this package, one per layer family; other spec types (a user's) may add theirs
with :func:`register_converter`. A spec without a converter still converts: it becomes a
:class:`FunctionalModule`, which holds the spec's tensors as parameters and buffers
under the spec's names and runs the functional forward. Hand-written converters remain
where they give plainer fx graphs (torch's own layers). In the other direction a module
without a converter becomes a :class:`TorchModule` (``opaque.py``), which ``to_module``
turns back into a module of its own type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import nn

import funcmodels as fm
from funcmodels.extend import expected_entries, layer_name, unchecked

from ._boundary import Opaque, broken_ties
from .opaque import TorchModule

Build = Callable[[fm.Spec, Callable[[str], nn.Module]], nn.Module]
Infer = Callable[[nn.Module, Callable[[str], fm.Spec]], fm.Spec]


class _Converter(NamedTuple):
    spec_type: type[fm.Spec]
    module_type: type[nn.Module]
    build: Build
    infer: Infer


_BY_SPEC: dict[type[fm.Spec], _Converter] = {}
_BY_MODULE: dict[type[nn.Module], _Converter] = {}


def register_converter(
    spec_type: type[fm.Spec], module_type: type[nn.Module], *, build: Build, infer: Infer
) -> None:
    """Teach :func:`to_module` and :func:`from_module` a layer type.

    Arguments:
        spec_type: the spec class (matched exactly, not by subclass).
        module_type: the ``nn.Module`` class it becomes (matched exactly as well, so a
            subclass with another ``forward`` is never taken for its parent).
        build: ``build(spec, child) -> module``. ``child(name)`` converts the spec's child
            ``name``. It runs under ``torch.device('meta')``: only the structure matters,
            the tensors are loaded afterwards under the spec's ``state_dict`` names, which
            the module must use too.
        infer: ``infer(module, child) -> spec``. ``child(name)`` converts the module's
            child ``name``. Raise ``ValueError`` or ``TypeError`` for a module the spec
            cannot express; the message is prefixed with the module's path and type.

    Registering a spec type or module type again replaces its converter.

    Raises:
        TypeError: ``spec_type`` is not a Spec subclass, or a converter is not callable.
    """
    if not (isinstance(spec_type, type) and issubclass(spec_type, fm.Spec)):
        raise TypeError(f"register_converter: spec_type must be a Spec subclass, got {spec_type!r}")
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"register_converter: module_type must be an nn.Module subclass, got {module_type!r}"
        )
    for name, fn in (("build", build), ("infer", infer)):
        if not callable(fn):
            raise TypeError(f"register_converter: {name} must be callable, got {fn!r}")
    conv = _Converter(spec_type, module_type, build, infer)
    _BY_SPEC[spec_type] = conv
    _BY_MODULE[module_type] = conv


class FunctionalModule(nn.Module):
    """A spec as an ``nn.Module``: its tensors as parameters and buffers, its forward
    :func:`funcmodels.run`.

    The tensors sit under the spec's names (a dotted name ``'0.weight'`` in a submodule
    ``'0'``), so ``state_dict()`` has the keys of ``fm.to_state_dict``. In train mode the
    forward takes a fresh key from torch's global generator (as ``nn.Dropout`` draws its
    masks) and writes the new buffers into the module's, in place (as ``nn.BatchNorm2d``
    does). ``transforms.to_module`` makes one for every layer type without a hand-written
    converter; ``transforms.from_module`` reads the spec back from ``self.spec``.
    ``module.run(x)`` returns what ``fm.run`` does (output, new state, aux).

    Arguments:
        spec: the layer's spec (complete: every size known).
        dtype: the dtype of the placeholder parameters (``to_module`` loads the real
            tensors afterwards).
    """

    def __init__(self, spec: fm.Spec, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(spec, fm.Spec):
            raise TypeError(f"FunctionalModule: expected a layer spec, got {type(spec).__name__}")
        self.spec = spec
        self._param_slots = [
            self._slot(name, shape, dtype, buffer=False)
            for name, (shape, _) in expected_entries(spec, "params").items()
        ]
        self._buffer_slots = [
            self._slot(name, shape, kind or dtype, buffer=True)
            for name, (shape, kind) in expected_entries(spec, "state").items()
        ]

    def _slot(self, name: str, shape, dtype, *, buffer: bool) -> tuple[str, nn.Module, str]:
        *path, leaf = name.split(".")
        owner: nn.Module = self
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        t = torch.zeros(shape, dtype=dtype)
        if buffer:
            owner.register_buffer(leaf, t)
        else:
            owner.register_parameter(leaf, nn.Parameter(t))
        return name, owner, leaf

    def _trees(self) -> tuple[fm.Params, fm.State | None]:
        params = {n: owner._parameters[leaf] for n, owner, leaf in self._param_slots}
        state = {n: owner._buffers[leaf] for n, owner, leaf in self._buffer_slots}
        return (
            unchecked(fm.Params, self.spec, params),
            unchecked(fm.State, self.spec, state) if self._buffer_slots else None,
        )

    def forward(self, x: Any) -> Any:
        proxy = next((t for t in pytree.tree_leaves(x) if isinstance(t, torch.fx.Proxy)), None)
        if proxy is not None and proxy.tracer.root is self:
            return self._traced_as_root(x)
        return _run_functional(self, x)

    def _traced_as_root(self, x: Any) -> Any:
        """``torch.fx`` traces the root's forward itself (a root is never a leaf): through
        ``fm.run``, which works where no layer looks at shapes or values."""
        try:
            return self.run(x).out
        except Exception as e:
            layer = type(self.spec).__name__
            raise TypeError(
                f"torch.fx cannot trace this converted {layer} as the root module: its "
                "layers look at their input's shapes or values (routing, checks), which an "
                f"fx Proxy does not have ({type(e).__name__}: {e}). Inside a parent it is "
                "one leaf call: trace torch.nn.Sequential(module) instead, or use "
                "torch.export.export(module, (x,))"
            ) from e

    def run(self, x: Any) -> fm.Output:
        """``forward`` with everything ``fm.run`` returns: the output, the new state and
        the sown aux values (an EarlyExit's per-sample ``depth``, an MoE's losses)."""
        params, state = self._trees()
        key = None
        if self.training:
            key = fm.key(int(torch.randint(0, 2**62, ())), device=_device(x, params))
        out = fm.run(params, x, state=state, key=key, train=self.training)
        if self.training and state is not None:
            with torch.no_grad():
                for name, owner, leaf in self._buffer_slots:
                    new = out.state[name]
                    if new is not state[name]:
                        owner._buffers[leaf].copy_(new)
        return out

    def extra_repr(self) -> str:
        return repr(self.spec)


def _run_functional(module: FunctionalModule, x: Any) -> Any:
    """A :class:`FunctionalModule`'s output; one opaque call for ``torch.fx``.

    ``torch.fx.symbolic_trace`` records this call as one node instead of tracing into
    ``fm.run``, whose layers look at their inputs' shapes and values (an MoE's routing),
    which a ``Proxy`` has not: the converted module is a leaf of the graph.
    """
    return module.run(x).out


torch.fx.wrap("_run_functional")


def _device(x: Any, params: fm.Params) -> torch.device:
    if isinstance(x, torch.Tensor):
        return x.device
    for t in params.flat().values():
        return t.device
    return torch.device("cpu")


def _build(spec: fm.Spec, path: str) -> nn.Module:
    if type(spec) is TorchModule:
        return spec.empty_module()
    conv = _BY_SPEC.get(type(spec))
    if conv is None:
        return FunctionalModule(spec)
    children = dict(spec.children())

    def child(name: str) -> nn.Module:
        return _build(children[name], f"{path}{name}.")

    module = conv.build(spec, child)
    if type(module) is not conv.module_type:
        raise TypeError(
            f"transforms.to_module: the converter of {spec.type_name} returned "
            f"{type(module).__name__}, expected {conv.module_type.__name__}"
        )
    return module


def to_module(params: fm.Params, state: fm.State | None = None) -> nn.Module:
    """A real :mod:`torch.nn` module computing what ``fm.apply(params, x, state=state)`` does.

    Layers become their ``torch.nn`` twins (``nn.Linear``, ``nn.Conv2d``,
    ``nn.BatchNorm2d``, ...) inside containers that mirror the spec (``nn.Sequential``; a
    small module for a ``ResidualBlock``), so ``state_dict()`` has the keys, order and
    values of ``fm.to_state_dict(params, state)``, and ``torch.fx.symbolic_trace`` and
    ``torch.export.export`` work on the result. A layer type without a converter becomes
    a :class:`FunctionalModule` running its functional forward (exportable; not
    symbolically traceable by fx); a :class:`TorchModule` becomes a module of its own
    type, tied tensors tied again. The tensors are copies: training the
    module leaves ``params`` and ``state`` unchanged. Dtype and device are those of
    ``params``; torch's global random generator is not touched.

    Outputs, gradients and BatchNorm updates equal those of ``fm.apply``/``fm.run`` in
    both modes, with one exception: in train mode ``nn.Dropout`` draws its masks from
    torch's global generator rather than from a funcmodels key, so it matches in
    distribution only.

    Arguments:
        params: the model's parameters (their spec says what to build).
        state: its buffers (BatchNorm running statistics); required when the spec has any.

    Returns:
        the module, in eval mode (as ``fm.apply`` defaults to ``train=False``); call
            ``.train()`` to fine-tune it.

    Raises:
        TypeError: ``params`` are not Params.
        ValueError: the spec has state and no ``state`` is given, or a layer cannot be converted
            (named in the message).
    """
    if not isinstance(params, fm.Params):
        raise TypeError(
            f"transforms.to_module: expected Params from fm.init, got {type(params).__name__}"
        )
    spec = params.spec
    if state is None and spec.has_state():
        raise ValueError(
            f"transforms.to_module: the spec {spec.type_name} has state (buffers such as "
            "BatchNorm running statistics) but none was given; use params, state = "
            "fm.init_with_state(key, spec) and transforms.to_module(params, state)"
        )
    entries = fm.to_state_dict(params, state)
    # On the meta device the layers allocate nothing and draw no random initial values;
    # assign=True then installs the copies below as the module's tensors.
    with torch.device("meta"):
        module = _build(spec, "")
    module.load_state_dict(
        {k: t.detach().clone() for k, t in entries.items()}, strict=True, assign=True
    )
    return module.eval()


def _infer(module: nn.Module, path: str, opaque: Opaque | None = None) -> fm.Spec:
    where = f"module '{layer_name(path)}' ({type(module).__name__})"
    opaque = Opaque(()) if opaque is None else opaque
    if type(module) is FunctionalModule:
        return module.spec
    conv = _BY_MODULE.get(type(module))
    if conv is None or opaque.holds(module, path):
        try:
            return TorchModule(module)
        except (TypeError, ValueError) as err:
            raise type(err)(f"transforms.from_module: {where}: {err}") from err
    # _modules rather than named_children(): a module used twice is a child twice.
    children = {n: m for n, m in module._modules.items() if m is not None}

    def child(name: str) -> fm.Spec:
        if name not in children:
            raise ValueError(
                f"transforms.from_module: {where} has no child '{name}'; children: {list(children)}"
            )
        return _infer(children[name], f"{path}{name}.", opaque)

    try:
        return conv.infer(module, child)
    except (TypeError, ValueError) as err:
        if str(err).startswith("transforms.from_module:"):
            raise  # a child's error, already named by its own path
        exc = TypeError if isinstance(err, TypeError) else ValueError
        raise exc(
            f"transforms.from_module: {where}: {err} (to keep it as it is, as a "
            f"TorchModule: from_module(module, opaque=['{path[:-1]}']))"
        ) from err


def from_module(
    module: nn.Module, *, opaque: Iterable[type[nn.Module] | str] = ()
) -> tuple[fm.Params, fm.State]:
    """The ``(params, state)`` of any module: known layers as their specs, the rest as
    :class:`TorchModule` layers.

    The spec is inferred from the module tree (nested ``nn.Sequential`` included, and
    everything :func:`to_module` makes). The first module on each path whose type has no
    converter becomes a :class:`TorchModule` holding its whole subtree, and so does the
    lowest module holding both ends of a tie (a weight shared by two layers); the rule and
    why are in ``transforms/bridge/_boundary.py``. The tensors are detached copies of
    ``module.state_dict()``, so later changes to the module do not leak into them.
    ``from_module(to_module(params, state))`` gives back the same spec and tensors (a
    TorchModule without a recipe, which equals only itself, comes back as a new one).

    Arguments:
        module: the module; its train/eval mode does not matter.
        opaque: module classes (matched exactly) or dotted paths (``''`` for the root) to
            keep whole as TorchModule layers even where a converter exists (exactly
            torch's numerics; a module whose settings no spec expresses).

    Returns:
        ``(params, state)``; ``state`` is empty when the model keeps no buffers.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``opaque`` holds something else
            than classes and paths.
        ValueError: a known module whose settings the spec cannot express (say
            ``nn.MaxPool2d(return_indices=True)``), named by path and type, with the way
            to keep it whole.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"transforms.from_module: expected an nn.Module, got {type(module).__name__}"
        )
    keep = Opaque(opaque)
    spec = _infer(module, "", keep)
    while ties := broken_ties(module, spec) - keep.paths:
        keep.paths |= ties
        spec = _infer(module, "", keep)
    return fm.from_state_dict(spec, module.state_dict())
