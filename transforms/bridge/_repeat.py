"""The torch form of :class:`funcmodels.nn.Repeat`: :class:`RepeatModule`.

``transforms.to_module`` of a Repeat gives a :class:`RepeatModule`: the stacked tensors
under the Repeat's own names (so ``state_dict()`` has the keys, order and shapes of
``fm.to_state_dict``) and the member as real torch layers (``to_module`` of the member
spec), run once per member on that member's slices with
:func:`torch.func.functional_call`. ``from_module`` gives the Repeat back. A state_dict of
an ``nn.Sequential`` of the members (``'{i}.<name>'``) loads into a Repeat with
``fm.from_state_dict``.

Importing this module registers the converter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

import funcmodels as fm

from ._module import FunctionalModule, register_converter, to_module


class RepeatModule(FunctionalModule):
    """A :class:`funcmodels.nn.Repeat` as an ``nn.Module``: members in sequence.

    The tensors are stacked as the Repeat stacks them (``0.weight (n, ...)``); member
    ``i`` runs the member module (``self.member``: torch's layers, not a submodule, its
    own tensors placeholders) on the slices at ``i``. In train mode BatchNorm updates each
    member's slice of the stacked statistics in place and dropout draws from torch's
    global generator (as torch's layers do); with ``remat=True`` and autograd recording,
    each member runs under ``torch.utils.checkpoint``.

    Arguments:
        spec: the Repeat spec (complete: every size known).
        dtype: the dtype of the placeholder tensors (``to_module`` loads the real ones).
    """

    def __init__(self, spec: fm.nn.Repeat, dtype: torch.dtype = torch.float32):
        super().__init__(spec, dtype)
        # The member's module from member 0's placeholders (on the meta device under
        # to_module): only its structure matters, the tensors come per call.
        params, state = fm.from_state_dict(
            spec.spec, {k: t[0] for k, t in self.state_dict().items()}
        )
        member = to_module(params, state)
        # Not registered: its tensors would join the state_dict; it only gives the code.
        self.__dict__["member"] = member.train(self.training)

    def train(self, mode: bool = True) -> RepeatModule:
        super().train(mode)
        self.member.train(mode)
        return self

    def forward(self, x: Any) -> Any:
        slots = [(n, o._parameters[leaf]) for n, o, leaf in self._param_slots]
        slots += [(n, o._buffers[leaf]) for n, o, leaf in self._buffer_slots]
        # unbind: views, so in-place BatchNorm updates reach the stacked buffers, and one
        # backward for all the members' gradients
        per_member = (
            [
                dict(zip([n for n, _ in slots], ts, strict=True))
                for ts in zip(*(t.unbind(0) for _, t in slots), strict=True)
            ]
            if slots
            else [{}] * self.spec.n
        )
        remat = self.spec.remat and self.training and torch.is_grad_enabled()
        for tensors in per_member:
            if remat:
                x = checkpoint(self._member, tensors, x, use_reentrant=False)
            else:
                x = self._member(tensors, x)
        return x

    def _member(self, tensors: dict[str, torch.Tensor], x: Any) -> Any:
        return torch.func.functional_call(self.member, tensors, (x,), strict=True)


def _build(spec: fm.nn.Repeat, child) -> RepeatModule:
    return RepeatModule(spec)


def _infer(module: RepeatModule, child) -> fm.Spec:
    return module.spec


register_converter(fm.nn.Repeat, RepeatModule, build=_build, infer=_infer)
