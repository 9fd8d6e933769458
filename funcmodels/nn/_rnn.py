"""The recurrent layers, matching :class:`torch.nn.RNN`, :class:`torch.nn.LSTM` and
:class:`torch.nn.GRU`: each is its cell's step and weights over the shared machinery of
``_recurrent.py`` (fused kernel, loop and scan paths, directions, layers, dropout)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._spec import Context
from ._check import (
    non_negative_int,
    torch_signature,
)
from ._recurrent import _Recurrent
from ._rnn_ops import (
    _NONLINEARITIES,
    Step,
    _gru_step,
    _lstm_scan,
    _rnn_step,
)


@torch_signature
@dataclass(frozen=True, init=False)
class RNN(_Recurrent):
    """An Elman RNN, as :class:`torch.nn.RNN`: per layer and direction,
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Arguments:
        input_size: ``H_in``, the features of one step; ``None`` (or left out, as in
            ``RNN(hidden_size=32)``) to infer it from the input shape given to
            :func:`funcmodels.init`.
        hidden_size: ``H_out``, the features of the hidden state.
        num_layers: stacked recurrent layers; layer ``k > 0`` reads layer ``k - 1``'s
            output.
        nonlinearity: ``'tanh'`` or ``'relu'``.
        bias: learn ``bias_ih`` and ``bias_hh``.
        batch_first: the input and output are ``(N, L, *)`` instead of ``(L, N, *)``
            (``hx`` and ``h_n`` keep the batch on dim 1, as in torch).
        dropout: in train mode, dropout of this probability on the output of every layer
            but the last (none with one layer, where torch warns), drawn from the layer's
            key with the layer index folded in; no key is needed when it is 0.
        bidirectional: also run each layer backwards in time (``D = 2``, else 1); the two
            directions' outputs are concatenated.

    Input: ``x`` is ``input``, ``(input, hx)`` or ``(input, hx, lengths)``, as torch's
    positional arguments; ``hx`` may be ``None`` (zeros).

    * ``input``: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, or one unbatched
      sequence ``(L, H_in)`` (what ``vmap`` over the batch passes). ``L > 0``; ``N`` may
      be 0.
    * ``hx``: ``h_0 (D * num_layers, N, H_out)``; ``(D * num_layers, H_out)`` for an
      unbatched input. Its batch dim is 1 whatever ``batch_first`` says (as in torch), so
      ``vmap`` it with ``in_dims=1``.
    * ``lengths``: in place of torch's ``PackedSequence`` (not a tensor, so it cannot
      travel through ``vmap`` or a pure function, and not supported): the valid length,
      in ``[1, L]``, of each sequence of a padded batch, an integer tensor ``(N,)`` (``()``
      unbatched) or a list of ints. A sample's steps past its length are skipped: its
      outputs there are 0 and its final state is that of its last valid step (the
      reverse direction starts there), which is what torch gives for
      ``pack_padded_sequence(input, lengths, enforce_sorted=False)`` unpacked with
      ``pad_packed_sequence(..., total_length=L)``. The range is checked in eager mode
      only (under ``vmap``, ``grad`` and ``torch.compile`` the values are not looked at).

    Output: ``(output, h_n)``, as torch: ``output (L, N, D * H_out)`` (``(N, L, D *
    H_out)`` with ``batch_first``, ``(L, D * H_out)`` unbatched), the last layer's ``h_t``
    at every step; ``h_n`` the final state of every layer and direction, shaped as
    ``h_0``. Shape inference (:func:`funcmodels.shapes`) gives the shapes of both for one
    example ``(L, H_in)``: ``((L, D * H_out), (D * num_layers, H_out))``.

    Params, for each layer ``k`` and direction (suffix ``''``, or ``'_reverse'`` for the
    backward one), in torch's order: ``weight_ih_l{k} (H_out, H_in)`` (``(H_out, D *
    H_out)`` for ``k > 0``), ``weight_hh_l{k} (H_out, H_out)``, ``bias_ih_l{k}`` and
    ``bias_hh_l{k} (H_out,)``; all ``U(-1/sqrt(H_out), 1/sqrt(H_out))``, as in torch.
    """

    _gates: ClassVar[int] = 1

    input_size: int | None = None
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self):
        self._check()
        if self.nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"RNN: nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )

    def _step(self, ctx: Context, layer: int, sfx: str) -> Step:
        return _rnn_step(ctx.param(f"weight_hh_l{layer}{sfx}"), self.nonlinearity == "relu")

    def _fused_op(self):
        return torch.rnn_relu if self.nonlinearity == "relu" else torch.rnn_tanh


@torch_signature
@dataclass(frozen=True, init=False)
class LSTM(_Recurrent):
    """A long short-term memory network, as :class:`torch.nn.LSTM`. Per layer and
    direction, with the gates in torch's order (i, f, g, o)::

        i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)        # then h_t W_hr^T with a projection

    Arguments:
        input_size: ``H_in``; ``None`` (or left out) to infer it, as :class:`RNN`.
        hidden_size: the features of the hidden state.
        num_layers: stacked recurrent layers.
        bias: learn ``bias_ih`` and ``bias_hh``.
        batch_first: the input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: dropout between layers in train mode, as :class:`RNN`.
        bidirectional: also run each layer backwards in time (``D = 2``, else 1).
        proj_size: if positive, ``h_t`` is projected by ``weight_hr`` to this many features,
            fewer than ``hidden_size``; ``H_out`` is ``proj_size`` if set, else ``hidden_size``.

    Input: as :class:`RNN`, with ``hx`` a pair ``(h_0, c_0)``: ``h_0 (D * num_layers, N,
    H_out)`` and ``c_0 (D * num_layers, N, hidden_size)`` (without ``N`` unbatched).

    Output: ``(output, (h_n, c_n))``, as torch: ``output`` as for :class:`RNN`; ``h_n``
    and ``c_n`` shaped as ``h_0`` and ``c_0``. For one example ``(L, H_in)``,
    :func:`funcmodels.shapes` gives ``((L, D * H_out), ((D * num_layers, H_out), (D *
    num_layers, hidden_size)))``.

    Params, for each layer ``k`` and direction (suffix ``''`` or ``'_reverse'``), in
    torch's order: ``weight_ih_l{k} (4 * hidden_size, H_in)`` (``D * H_out`` columns for
    ``k > 0``), ``weight_hh_l{k} (4 * hidden_size, H_out)``, ``bias_ih_l{k}`` and
    ``bias_hh_l{k} (4 * hidden_size,)``, and with a projection ``weight_hr_l{k}
    (proj_size, hidden_size)``; all ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.
    """

    _gates: ClassVar[int] = 4
    _hx_names: ClassVar[tuple[str, ...]] = ("h_0", "c_0")

    input_size: int | None = None
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    def __post_init__(self):
        self._check()
        non_negative_int("LSTM", "proj_size", self.proj_size)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"LSTM: proj_size must be smaller than hidden_size={self.hidden_size}, got "
                f"{self.proj_size}"
            )

    @property
    def _proj(self) -> int:
        return self.proj_size

    def _state_sizes(self) -> tuple[int, ...]:
        return (self._out_size, self.hidden_size)

    def _scan_layer(self, ctx, layer, sfx, x, state, *how):
        w_ih, w_hh = (ctx.param(f"weight_{n}_l{layer}{sfx}") for n in ("ih", "hh"))
        w_hr = ctx.param(f"weight_hr_l{layer}{sfx}") if self.proj_size else None
        bias = self._projection_bias(ctx, layer, sfx)
        return _lstm_scan(x, state, how, w_ih, w_hh, bias, w_hr)

    def _fused_op(self):
        return torch.lstm


@torch_signature
@dataclass(frozen=True, init=False)
class GRU(_Recurrent):
    """A gated recurrent unit network, as :class:`torch.nn.GRU`. Per layer and
    direction, with the gates in torch's order (r, z, n)::

        r = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)
        z = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)
        n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    Arguments:
        input_size: ``H_in``; ``None`` (or left out) to infer it, as :class:`RNN`.
        hidden_size: the features of the hidden state.
        num_layers: stacked recurrent layers.
        bias: learn ``bias_ih`` and ``bias_hh``.
        batch_first: the input and output are ``(N, L, *)`` instead of ``(L, N, *)``.
        dropout: dropout between layers in train mode, as :class:`RNN`.
        bidirectional: also run each layer backwards in time (``D = 2``, else 1).

    Input and output: as :class:`RNN` (``hx`` is ``h_0``; the output ``(output, h_n)``).

    Params, for each layer ``k`` and direction (suffix ``''`` or ``'_reverse'``), in
    torch's order: ``weight_ih_l{k} (3 * H_out, H_in)`` (``D * H_out`` columns for
    ``k > 0``), ``weight_hh_l{k} (3 * H_out, H_out)``, ``bias_ih_l{k}`` and
    ``bias_hh_l{k} (3 * H_out,)``; all ``U(-1/sqrt(H_out), 1/sqrt(H_out))``.
    """

    _gates: ClassVar[int] = 3

    input_size: int | None = None
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self):
        self._check()

    def _projection_bias(self, ctx: Context, layer: int, sfx: str) -> torch.Tensor | None:
        return ctx.param(f"bias_ih_l{layer}{sfx}") if self.bias else None

    def _step(self, ctx: Context, layer: int, sfx: str) -> Step:
        b_hh = ctx.param(f"bias_hh_l{layer}{sfx}") if self.bias else None
        return _gru_step(ctx.param(f"weight_hh_l{layer}{sfx}"), b_hh)

    def _fused_op(self):
        return torch.gru
