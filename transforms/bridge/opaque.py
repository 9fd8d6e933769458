"""Any torch module as a layer: :class:`TorchModule`, run by ``torch.func.functional_call``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

import funcmodels as fm

from ._recipes import GRAPH_TARGET, STYLES, Recipe, build, recipe_of
from ._skeleton import Skeleton

__all__ = ["TorchModule"]


@dataclass(frozen=True, eq=False, init=False, repr=False)
class TorchModule(fm.Spec):
    """A torch module as a layer: its structure kept, its tensors in Params and State.

    The layer holds a skeleton of the module on the ``meta`` device and runs it with
    :func:`torch.func.functional_call` on the tensors of the call, so ``vmap``, ``grad``,
    ``vmap(grad)``, ``torch.compile`` and :mod:`transforms.dp` (per-example gradients
    formed with ``vmap``) see exactly torch.func's own recipe. Parameters and persistent
    buffers keep the module's names (``state_dict`` keys unchanged; a tied tensor is held
    once, under its first name); non-persistent buffers are constants of the layer.
    :func:`transforms.from_module` makes one for every module of a type it does not know;
    :func:`transforms.to_module` gives back a module of the original type.

    * **Input.** ``x`` is passed to ``forward`` as its one positional argument; the output
      is whatever the module returns (a pytree of tensors works under the transforms).
    * **Train mode.** ``train=True`` runs the module in train mode. Randomness inside it
      (dropout) draws from torch's global generator, as the module itself would: it cannot
      take funcmodels keys, so the layer needs no key and ignores one. For repeatable
      draws seed torch (``torch.manual_seed``) before the call; under ``vmap`` pass
      ``randomness='different'`` or ``'same'``, as torch.func requires.
    * **State.** Buffers the module changes in ``forward`` (running statistics, in place
      or by assignment) come back in the new state; the given state is never changed (the
      module works on copies).
    * **Init.** ``fm.init`` (and ``fm.nn.Stack``) runs ``reset_parameters()`` of every
      submodule that has one, children first, on a materialised copy; every draw comes from
      a local ``torch.Generator`` seeded by ``fm.random.bits(fm.fold_in(key,
      name_hash('torch.Generator')), 2)`` (two 32-bit words, high first), so member ``i``
      of a Stack is the module re-initialised from its own key, and torch's global
      generator is not touched. A tensor no hook sets is an error naming it. Params are
      drawn in the module's dtype and then cast to ``dtype``.
    * **Equality.** A layer with a recipe (its class path and constructor arguments, see
      :mod:`transforms.bridge._recipes`) equals any layer with the same recipe: the
      constructor makes the structure. A layer without one equals only itself (the same
      skeleton object), since two modules of one class may differ in ways no field shows.
    * **Files.** Written as the recipe; ``fm.save`` refuses a layer without one, naming the
      way out. Reading builds a module only of a class registered with
      :func:`transforms.register_module_class` (the trust model is in ``_recipes.py``).

    Arguments:
        module: the torch module (not changed; its tensors are not kept, so convert with
            ``transforms.from_module`` to keep its values).
        init_args: the keyword arguments of ``type(module)`` that rebuild it (JSON
            values), to make the layer writable; by default those of a class registered
            with ``init_args``, or a Hugging Face ``config``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``init_args`` that do not rebuild the module.
    """

    target: str
    args: str | None = None
    style: str = "kwargs"

    def __init__(self, module: nn.Module, *, init_args: Mapping[str, Any] | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"TorchModule: expected an nn.Module, got {type(module).__name__}")
        recipe = recipe_of(module, init_args)
        self._set(recipe, Skeleton(module))

    def _set(self, recipe: Recipe, skeleton: Skeleton | None) -> None:
        object.__setattr__(self, "target", recipe.target)
        object.__setattr__(self, "args", recipe.args)
        object.__setattr__(self, "style", recipe.style)
        object.__setattr__(self, "_fm_problem", recipe.problem)
        object.__setattr__(self, "_fm_skeleton", skeleton)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> TorchModule:
        """The layer a config or file describes: built when its class is registered,
        else a layer that knows only its recipe (see the class docstring)."""
        target, args, style = fields.get("target"), fields.get("args"), fields.get("style")
        style = "kwargs" if style is None else style
        if not isinstance(target, str) or not isinstance(args, str) or style not in STYLES:
            raise ValueError(
                f"TorchModule: expected target and args strings and a style in {STYLES}, "
                f"got target={target!r}, args={type(args).__name__}, style={style!r}"
            )
        try:
            json.loads(args)
        except json.JSONDecodeError as err:
            raise ValueError(f"TorchModule {target}: args is not JSON ({err})") from err
        recipe = Recipe(target, args, style)
        self = object.__new__(cls)
        try:
            module = build(recipe, "meta")
        except ValueError as err:
            self._set(recipe._replace(problem=str(err)), None)
            return self
        persistent = module.state_dict(keep_vars=True)
        if any(n not in persistent for n, _ in module.named_buffers()):
            # constant buffers (rotary frequencies, masks) are computed by the constructor
            module = build(recipe, "cpu")
        self._set(recipe, Skeleton(module))
        return self

    # -- identity ---------------------------------------------------------------------
    def _identity(self) -> tuple:
        if self.args is not None:
            return (self.target, self.style, self.args)
        return (self.target, id(self._fm_skeleton))

    def __eq__(self, other: object) -> bool:
        return type(other) is TorchModule and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"TorchModule({self.target})"

    # -- structure --------------------------------------------------------------------
    @property
    def skeleton(self) -> Skeleton:
        """The module's skeleton (``ValueError`` for a layer read from a file whose class
        is not registered)."""
        skeleton = self._fm_skeleton
        if skeleton is None:
            raise ValueError(f"TorchModule({self.target}) cannot run: {self._fm_problem}")
        return skeleton

    @property
    def module_type(self) -> type[nn.Module]:
        """The class of the module."""
        return type(self.skeleton.eval_module)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: shape for n, (shape, _) in self.skeleton.params.items()}

    def state_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        return {
            n: (shape, None if dtype.is_floating_point else dtype)
            for n, (shape, dtype) in self.skeleton.buffers.items()
        }

    def init_params(self, key, *, dtype, device):
        made = self._reinitialised(key, dtype, device)
        return {n: made[n] for n in self.skeleton.params}

    def init_state(self, key, *, dtype, device):
        if not self.skeleton.buffers:
            return {}
        made = self._reinitialised(key, dtype, device)
        return {n: made[n] for n in self.skeleton.buffers}

    def _reinitialised(self, key, dtype, device) -> dict[str, torch.Tensor]:
        try:
            return self.skeleton.reinitialised(key, dtype=dtype, device=device)
        except ValueError as err:
            raise ValueError(f"TorchModule({self.target}): {err}") from err

    def empty_module(self) -> nn.Module:
        """A copy of the module in eval mode, on the meta device, for
        ``load_state_dict(state_dict, assign=True)`` (what ``to_module`` does): tied
        tensors need one name in ``state_dict`` and are tied again after the load."""
        return self.skeleton.empty_copy()

    # -- computation ------------------------------------------------------------------
    def forward(self, ctx: fm.Context, x: Any) -> Any:
        skeleton = self.skeleton
        module = skeleton.train_module if ctx.train else skeleton.eval_module
        own = ctx.own_params()
        tensors = {n: own[held] for n, held in skeleton.param_names.items()}
        copies = {n: ctx.buffer(n).clone() for n in skeleton.buffers}
        tensors.update((n, copies[held]) for n, held in skeleton.buffer_names.items())
        if skeleton.constants:
            tensors.update(skeleton.constants_on(_device(x, own, copies)))
        out = functional_call(module, tensors, (x,), tie_weights=False)
        # functional_call writes a buffer the module assigned back into ``tensors``; one
        # changed in place is the copy itself.
        for n in skeleton.buffers:
            ctx.set_buffer(n, tensors[n])
        return out

    # -- shapes and files -------------------------------------------------------------
    def out_shape(self, in_shape, path: str = "", record: dict | None = None):
        if any(not isinstance(s, int) for s in in_shape):
            # the module's forward is opaque: from an unknown input, the output is unknown
            # too, which lets a config chain through the layer (as through one without a
            # shape rule) rather than refusing it
            return (...,)
        skeleton = self.skeleton
        meta = {n: torch.empty(s, dtype=d, device="meta") for n, (s, d) in skeleton.params.items()}
        meta.update(skeleton.constants_on(torch.device("meta")))
        for dtype in (torch.float32, torch.int64):
            x = torch.zeros((1, *in_shape), dtype=dtype, device="meta")
            try:
                out = functional_call(skeleton.eval_module, meta, (x,))
            except Exception:  # the module's forward: it may need another input dtype
                continue
            if isinstance(out, torch.Tensor):
                return tuple(out.shape[1:])
        return super().out_shape(in_shape, path, record)

    def adapt_state_dict(self, entries: dict[str, Any], prefix: str) -> None:
        """Drop the aliases of tied tensors (held once), or rename one to its first name."""
        if self._fm_skeleton is None:
            return
        for alias, name in self.skeleton.aliases.items():
            if prefix + alias not in entries:
                continue
            value = entries.pop(prefix + alias)
            held = entries.setdefault(prefix + name, value)
            if not _same(held, value):
                entries[prefix + alias] = value  # a tie broken in the file: reported

    def config_problem(self) -> str | None:
        if self.args is not None:
            return None
        if self.target == GRAPH_TARGET:
            return f"the torch module cannot be written: {self._fm_problem}"
        return (
            f"the torch module {self.target} cannot be written: {self._fm_problem}. Give "
            "its constructor arguments: transforms.register_module_class(cls, "
            "init_args=lambda m: {...}) before transforms.from_module, or "
            "transforms.TorchModule(module, init_args={...}); or save the tensors without "
            "the spec: safetensors.torch.save_file(fm.to_state_dict(params, state), path), "
            "and load them with fm.load(path, spec)"
        )


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and bool(torch.equal(a, b))
    )


def _device(x: Any, *trees: Mapping[str, torch.Tensor]) -> torch.device:
    if isinstance(x, torch.Tensor):
        return x.device
    for tree in trees:
        for t in tree.values():
            return t.device
    return torch.device("cpu")
