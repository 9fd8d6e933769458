"""Converters between the recurrent layers of :mod:`funcmodels.nn` and :mod:`torch.nn`.

``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and the cells take the spec's fields as constructor
arguments and keep them as attributes of the same names; unlike other layers, ``bias`` is
kept as the flag itself, so the generic twin converters of :mod:`transforms._torch_layers`
(which read ``bias`` as a tensor) are not used as they are, only their tensor check. The
torch modules take ``(input, hx)`` as two arguments where ``fm.apply`` takes the tuple, and
a ``PackedSequence`` where ``fm.apply`` takes ``lengths``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

import funcmodels as fm
from funcmodels.extend import field_values

from ._module import register_converter
from ._twins import _check_tensors

_TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fm.nn.RNN: nn.RNN,
    fm.nn.LSTM: nn.LSTM,
    fm.nn.GRU: nn.GRU,
    fm.nn.RNNCell: nn.RNNCell,
    fm.nn.LSTMCell: nn.LSTMCell,
    fm.nn.GRUCell: nn.GRUCell,
}


def _build(spec: fm.Spec, child: Callable[[str], nn.Module]) -> nn.Module:
    return _TWINS[type(spec)](**field_values(spec))


def _infer(spec_type: type[fm.Spec]) -> Callable[[nn.Module, Callable], fm.Spec]:
    names = [f.name for f in dataclasses.fields(spec_type)]

    def infer(module: nn.Module, child: Callable[[str], fm.Spec]) -> fm.Spec:
        spec = spec_type(**{n: getattr(module, n) for n in names})
        _check_tensors(module, spec)
        return spec

    return infer


for _spec_type, _module_type in _TWINS.items():
    register_converter(_spec_type, _module_type, build=_build, infer=_infer(_spec_type))
