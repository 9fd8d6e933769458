"""Recurrent cells, matching :class:`torch.nn.RNNCell`, :class:`torch.nn.LSTMCell` and
:class:`torch.nn.GRUCell`: one step of the matching layer of :mod:`._recurrent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._shapes import Shape
from .._spec import Context, Spec
from ._check import (
    sizes_known,
    torch_signature,
)
from ._rnn_ops import (
    _NONLINEARITIES,
    Step,
    _check_example,
    _check_fields,
    _gru_step,
    _init_uniform,
    _initial_state,
    _lstm_step,
    _resolve,
    _rnn_step,
    _unpack,
)


class _Cell(Spec):
    """Shared by RNNCell, LSTMCell and GRUCell: one step of the matching layer."""

    example_ndim: ClassVar[int] = 1
    inferred_fields: ClassVar[tuple[str, ...]] = ("input_size",)
    _gates: ClassVar[int]
    _hx_names: ClassVar[tuple[str, ...]] = ("hx",)

    def param_shapes(self):
        sizes_known(self)
        gate = self._gates * self.hidden_size
        shapes = {
            "weight_ih": (gate, self.input_size),
            "weight_hh": (gate, self.hidden_size),
        }
        if self.bias:
            shapes["bias_ih"] = (gate,)
            shapes["bias_hh"] = (gate,)
        return shapes

    def init_params(self, key, *, dtype, device):
        return _init_uniform(self, key, dtype, device)

    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        return _resolve(self, path, _check_example(self, path, in_shape, 1, "H_in"))

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Any:
        _check_example(self, path, in_shape, 1, "H_in")
        h = (self.hidden_size,)
        return h if len(self._hx_names) == 1 else (h, h)

    def _projection_bias(self, ctx: Context) -> torch.Tensor | None:
        return ctx.param("bias_ih") + ctx.param("bias_hh") if self.bias else None

    def _step(self, ctx: Context) -> Step:
        raise NotImplementedError

    def forward(self, ctx: Context, x: Any) -> Any:
        input, hx = _unpack(x, 2, "input or (input, hx)")
        shape = tuple(input.shape)
        if input.dim() not in (1, 2) or shape[-1] != self.input_size:
            raise ValueError(
                f"expected input (N, {self.input_size}) or ({self.input_size},), got shape {shape}"
            )
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        sizes = (self.hidden_size,) * len(self._hx_names)
        state = _initial_state(hx, self._hx_names, sizes, (), input.shape[0], batched, input, shape)
        xp = F.linear(input, ctx.param("weight_ih"), self._projection_bias(ctx))
        new = self._step(ctx)(xp, state)
        if not batched:
            new = tuple(t.squeeze(0) for t in new)
        return new[0] if len(new) == 1 else new


@torch_signature
@dataclass(frozen=True, init=False)
class RNNCell(_Cell):
    """One step of an Elman RNN, as :class:`torch.nn.RNNCell`:
    ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    Arguments:
        input_size: ``H_in``; ``None`` (or left out) to infer it from the input shape
            given to :func:`funcmodels.init`.
        hidden_size: ``H``, the features of the hidden state.
        bias: learn ``bias_ih`` and ``bias_hh``.
        nonlinearity: ``'tanh'`` or ``'relu'``.

    Input: ``x`` is ``input`` or ``(input, hx)``: ``input (N, H_in)`` or ``(H_in,)``,
    ``hx (N, H)`` or ``(H,)`` (zeros when left out or ``None``). Output: ``h' (N, H)``
    or ``(H,)``.

    Params: ``weight_ih (H, H_in)``, ``weight_hh (H, H)``, ``bias_ih`` and ``bias_hh
    (H,)``; all ``U(-1/sqrt(H), 1/sqrt(H))``, as in torch.
    """

    _gates: ClassVar[int] = 1

    input_size: int | None = None
    hidden_size: int
    bias: bool = True
    nonlinearity: str = "tanh"

    def __post_init__(self):
        _check_fields(self)
        if self.nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )

    def _step(self, ctx: Context) -> Step:
        return _rnn_step(ctx.param("weight_hh"), self.nonlinearity == "relu")


@torch_signature
@dataclass(frozen=True, init=False)
class LSTMCell(_Cell):
    """One step of an LSTM, as :class:`torch.nn.LSTMCell` (the formulas of :class:`LSTM`,
    without projection).

    Arguments:
        input_size: ``H_in``; ``None`` (or left out) to infer it from the input shape
            given to :func:`funcmodels.init`.
        hidden_size: ``H``, the features of the hidden and cell states.
        bias: learn ``bias_ih`` and ``bias_hh``.

    Input: ``x`` is ``input`` or ``(input, (h, c))``: ``input (N, H_in)`` or ``(H_in,)``,
    ``h`` and ``c`` ``(N, H)`` or ``(H,)`` (zeros when left out or ``None``). Output:
    ``(h', c')``, each ``(N, H)`` or ``(H,)``.

    Params: ``weight_ih (4 * H, H_in)``, ``weight_hh (4 * H, H)``, ``bias_ih`` and
    ``bias_hh (4 * H,)``; all ``U(-1/sqrt(H), 1/sqrt(H))``, as in torch.
    """

    _gates: ClassVar[int] = 4
    _hx_names: ClassVar[tuple[str, ...]] = ("h_0", "c_0")

    input_size: int | None = None
    hidden_size: int
    bias: bool = True

    def __post_init__(self):
        _check_fields(self)

    def _step(self, ctx: Context) -> Step:
        return _lstm_step(ctx.param("weight_hh"), None)


@torch_signature
@dataclass(frozen=True, init=False)
class GRUCell(_Cell):
    """One step of a GRU, as :class:`torch.nn.GRUCell` (the formulas of :class:`GRU`).

    Arguments:
        input_size: ``H_in``; ``None`` (or left out) to infer it from the input shape
            given to :func:`funcmodels.init`.
        hidden_size: ``H``, the features of the hidden state.
        bias: learn ``bias_ih`` and ``bias_hh``.

    Input: ``x`` is ``input`` or ``(input, hx)``: ``input (N, H_in)`` or ``(H_in,)``,
    ``hx (N, H)`` or ``(H,)`` (zeros when left out or ``None``). Output: ``h' (N, H)``
    or ``(H,)``.

    Params: ``weight_ih (3 * H, H_in)``, ``weight_hh (3 * H, H)``, ``bias_ih`` and
    ``bias_hh (3 * H,)``; all ``U(-1/sqrt(H), 1/sqrt(H))``, as in torch.
    """

    _gates: ClassVar[int] = 3

    input_size: int | None = None
    hidden_size: int
    bias: bool = True

    def __post_init__(self):
        _check_fields(self)

    def _projection_bias(self, ctx: Context) -> torch.Tensor | None:
        return ctx.param("bias_ih") if self.bias else None

    def _step(self, ctx: Context) -> Step:
        return _gru_step(ctx.param("weight_hh"), ctx.param("bias_hh") if self.bias else None)
