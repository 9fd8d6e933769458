"""The torch side of :class:`~transforms.TorchModule`: a module's skeleton on the meta
device, its tied names and constant buffers, and the copies made from it (a materialised,
re-initialised one for ``init``, an empty one for ``to_module``).

* **Skeleton.** A deep copy of the module whose parameters and persistent buffers are
  meta tensors (no memory, no values): the structure and the Python attributes that
  ``forward`` reads. Two copies are kept, one in train mode and one in eval mode, so a
  call never flips the ``training`` flags of a shared object.
* **Names.** Parameters and persistent buffers keep the module's own names. A tensor
  registered under several names (tied weights: a language model's head and its token
  embedding) is held once, under the first name ``named_parameters()`` gives; the other
  names are its *aliases*, filled with the same tensor on every call (so
  ``functional_call`` runs with ``tie_weights=False`` and does not search for ties).
* **Constants.** Non-persistent buffers (a causal mask, rotary frequencies) are not in
  the ``state_dict``: they are part of the structure, kept as real tensors (copied from
  the module) and moved once per device.
* **Re-initialisation.** ``reset_parameters()`` of every submodule that has one
  (children before parents, so a parent's own init has the last word; torch.nn's
  ``_reset_parameters`` for its own classes), run on a materialised copy with every
  random draw taken from a local ``torch.Generator`` seeded from the layer's key (see
  :func:`seed_of`). Torch's global generator is never read or advanced.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import funcmodels as fm
from funcmodels.extend import name_hash, under_vmap

_META = torch.device("meta")


class Skeleton:
    """A module's structure without its tensors (see the module docstring).

    Arguments:
        module: the module (not changed; its tensors are not kept).

    Attributes:
        eval_module, train_module: the meta copies in each mode.
        params: ``{name: (shape, dtype)}`` of the parameters, tied ones once.
        buffers: ``{name: (shape, dtype)}`` of the persistent buffers, tied ones once.
        param_names, buffer_names: every name a tensor is registered under (aliases
            included) -> the name it is held under.
        aliases: the alias names -> the names held.
        constants: the non-persistent buffers by every name, as real tensors.
    """

    def __init__(self, module: nn.Module):
        persistent = set(module.state_dict(keep_vars=True))
        self.param_names = _names(module.named_parameters(remove_duplicate=False))
        buffers = [(n, t) for n, t in module.named_buffers(remove_duplicate=False)]
        self.buffer_names = _names([(n, t) for n, t in buffers if n in persistent])
        self.constants = {n: t.detach().clone() for n, t in buffers if n not in persistent}
        self.aliases = {
            n: c for n, c in {**self.param_names, **self.buffer_names}.items() if n != c
        }
        own = dict(module.named_parameters())
        self.params = {n: (tuple(own[n].shape), own[n].dtype) for n in own}
        held = dict(module.named_buffers())
        self.buffers = {
            n: (tuple(held[n].shape), held[n].dtype) for n in held if n in self.buffer_names
        }
        memo: dict[int, Any] = {}
        for _, p in module.named_parameters(remove_duplicate=False):
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device=_META), p.requires_grad)
        for n, b in buffers:
            memo[id(b)] = self.constants[n] if n in self.constants else b.to(_META)
        self.eval_module = copy.deepcopy(module, memo).eval()
        self.train_module = copy.deepcopy(self.eval_module).train()
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def constants_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The constant buffers on ``device`` (copied there once)."""
        found = self._on_device.get(device)
        if found is None:
            found = self._on_device[device] = {n: t.to(device) for n, t in self.constants.items()}
        return found

    def empty_copy(self) -> nn.Module:
        """A copy in eval mode with meta tensors, which ``load_state_dict(sd, assign=True)``
        fills: the loaded state_dict may hold each tied tensor once (its aliases are
        filled in before the load and tied to it after), and the constant buffers follow
        the loaded tensors' device. The two hooks doing this remove themselves."""
        module = copy.deepcopy(self.eval_module)
        aliases = self.aliases
        handles = []

        def before(mod, state_dict, prefix, *args):
            for alias, name in aliases.items():
                if prefix + alias not in state_dict and prefix + name in state_dict:
                    state_dict[prefix + alias] = state_dict[prefix + name]

        def after(mod, incompatible):
            for alias, name in aliases.items():
                _set(mod, alias, _get(mod, name), persistent=True)
            device = next((t.device for t in mod.parameters() if t.device != _META), None)
            for name, t in self.constants_on(device or torch.device("cpu")).items():
                _set(mod, name, t.clone(), persistent=False)
            for handle in handles:
                handle.remove()

        handles.append(module.register_load_state_dict_pre_hook(before))
        handles.append(module.register_load_state_dict_post_hook(after))
        return module

    def reinitialised(
        self, key: torch.Tensor, *, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Every parameter and persistent buffer (by the names they are held under) as the
        module's reset hooks make them on a materialised copy, under a local generator
        seeded by :func:`seed_of` (``key``). Floating tensors are then cast to ``dtype``.

        Raises:
            ValueError: a tensor no reset hook sets (named, with the fix).
        """
        held = {**self.params, **self.buffers}
        if device.type == "meta":
            return {
                n: torch.empty(s, dtype=_cast(d, dtype), device=device)
                for n, (s, d) in held.items()
            }
        module = copy.deepcopy(self.eval_module).to_empty(device=device)
        for name, t in self.constants_on(device).items():
            _set(module, name, t.clone(), persistent=False)
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with torch.no_grad():
            for n in held:
                tensors[n].fill_(_unset(tensors[n].dtype))
            generator = torch.Generator(device=device).manual_seed(seed_of(key))
            with LocalGenerator(generator):
                for hook in _reset_hooks(module):
                    hook()
        missing = [n for n in held if _still_unset(tensors[n])]
        if missing:
            raise ValueError(
                f"cannot initialise {missing}: no reset hook of the module sets them. "
                "TorchModule initialises a module by calling reset_parameters() on each of "
                "its submodules that has one (with a generator seeded from the key); define "
                "reset_parameters() on the module that owns them, or convert a module that "
                "already holds trained values with transforms.from_module"
            )
        return {n: tensors[n].detach().to(_cast(tensors[n].dtype, dtype)) for n in held}


def seed_of(key: torch.Tensor) -> int:
    """The seed of the ``torch.Generator`` a TorchModule's init draws from.

    ``fm.random.bits(fm.fold_in(key, name_hash("torch.Generator")), 2)`` read as one 64-bit
    number, high word first: a pure function of the key, the same in every process.
    """
    if under_vmap(key):
        raise ValueError(
            "a torch module is initialised with torch's generator, which takes one seed: "
            "it cannot run under vmap over keys; use fm.nn.Stack(spec, n), which initialises "
            "its members one by one"
        )
    high, low = fm.random.bits(fm.fold_in(key, name_hash("torch.Generator")), (2,)).tolist()
    return (high << 32) | low


class LocalGenerator(TorchDispatchMode):
    """Every random operator run inside takes ``generator`` unless given one; an operator
    that draws but has no generator argument raises ``RuntimeError`` (it would read
    torch's global generator)."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.generator = generator

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if any(a.name == "generator" for a in func._schema.arguments):
            if kwargs.get("generator") is None:
                kwargs["generator"] = self.generator
        elif torch.Tag.nondeterministic_seeded in func.tags:
            raise RuntimeError(
                f"{func} draws from torch's global generator and takes no other; it cannot "
                "run in a TorchModule's reset hooks"
            )
        return func(*args, **kwargs)


def _names(named) -> dict[str, str]:
    """Every name -> the first name its tensor was registered under."""
    first: dict[int, str] = {}
    return {n: first.setdefault(id(t), n) for n, t in named}


def _reset_hooks(module: nn.Module) -> list:
    """The reset hooks of every submodule, children before parents."""
    hooks = []
    for child in module.children():
        hooks += _reset_hooks(child)
    hook = getattr(module, "reset_parameters", None)
    if hook is None and type(module).__module__.startswith("torch.nn."):
        hook = getattr(module, "_reset_parameters", None)  # MultiheadAttention, Transformer
    if callable(hook):
        hooks.append(hook)
    return hooks


def _unset(dtype: torch.dtype) -> Any:
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return False
    return torch.iinfo(dtype).min


def _still_unset(t: torch.Tensor) -> bool:
    if t.dtype.is_floating_point or t.dtype.is_complex:
        return bool(torch.isnan(t).any())
    if t.dtype == torch.bool:
        return False
    return bool((t == torch.iinfo(t.dtype).min).any())


def _cast(found: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    return dtype if found.is_floating_point else found


def _get(module: nn.Module, name: str) -> torch.Tensor:
    *path, leaf = name.split(".")
    return getattr(module.get_submodule(".".join(path)), leaf)


def _set(module: nn.Module, name: str, value: torch.Tensor, *, persistent: bool) -> None:
    """Register ``value`` under ``name``: a parameter as it is, a tensor as a buffer."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path))
    if isinstance(value, nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.register_buffer(leaf, value, persistent=persistent)
