"""Recurrent layers, matching :class:`torch.nn.RNN`, :class:`torch.nn.LSTM`,
:class:`torch.nn.GRU` and their cells :class:`torch.nn.RNNCell`,
:class:`torch.nn.LSTMCell` and :class:`torch.nn.GRUCell`.

The recurrence is a pure scan over time: the input projection of a whole sequence is one
matrix product, then a Python loop over the time steps applies the cell with functional
ops only (no state kept between calls, nothing mutated). The loop works the same in
eager mode, under ``torch.func`` transforms (``vmap(grad(...))`` for per-sample
gradients) and under ``torch.compile``, which unrolls it: compile time grows with the
sequence length. ``torch._higher_order_ops.scan`` would keep the compiled graph small,
but it is a prototype and fails under ``torch.func.grad`` (eager and compiled), so it is
not used.

Where the scan is not needed, torch's fused kernel runs instead (``torch.lstm``,
``torch.gru``, ``torch.rnn_tanh``, ``torch.rnn_relu``: what the ``torch.nn`` layers call,
oneDNN on the CPU): on the CPU, in eager mode (autograd included) or compiled under
``no_grad``, without per-sample lengths and without a dropout that draws. It gives torch's
results to the last bit and runs about twice as fast as the scan (``benchmarks/lstm.py``).

Inputs follow torch's positional arguments: ``x`` is the input tensor, or a tuple
``(input, hx)`` (``hx`` is ``h_0``, or ``(h_0, c_0)`` for an LSTM, or ``None``); the
sequence layers also take ``(input, hx, lengths)``, the per-sample lengths of a padded
batch, in place of torch's ``PackedSequence``. Outputs are torch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import random as _random
from .._shapes import Shape
from .._spec import Context, Spec
from ..random._samplers import keep_mask
from ._check import (
    boolean,
    number,
    positive_int,
    sizes_known,
    within_layer_budget,
)
from ._rnn_ops import (
    Step,
    _check_example,
    _check_fields,
    _init_uniform,
    _initial_state,
    _resolve,
    _scan,
    _shape_text,
    _unpack,
)


def _fused_allowed(spec: _Recurrent, ctx: Context, input: torch.Tensor) -> bool:
    """Whether ``spec`` may run torch's fused kernel rather than the scan.

    Only on the CPU (on a GPU, cuDNN wants its weights in one flat buffer, which would be a
    copy per call), only in eager mode (under ``torch.func`` transforms the kernel has no
    batching rule or functional backward; compiled with autograd on, inductor fails on its
    oneDNN op, so compiled code takes it only under ``no_grad``), and never with a dropout
    that draws (torch's kernel draws from the global generator, ours from the key).
    """
    if not _FUSED or input.device.type != "cpu":
        return False
    if ctx.mode == "transform" or (ctx.mode == "compile" and torch.is_grad_enabled()):
        return False
    return not (ctx.train and spec.dropout > 0.0 and spec.num_layers > 1)


#: Switch for the tests, which check the scan and the fused kernel separately.
_FUSED = True


class _Recurrent(Spec):
    """Shared by RNN, LSTM and GRU: parameters, checks, the layer loop and shapes."""

    inferred_fields: ClassVar[tuple[str, ...]] = ("input_size",)
    #: rows of the gate matrices per hidden unit (1, 4 or 3)
    _gates: ClassVar[int]
    #: names of the parts of ``hx`` (an LSTM has two)
    _hx_names: ClassVar[tuple[str, ...]] = ("hx",)

    def _check(self) -> None:
        _check_fields(self)
        layer = self.type_name
        positive_int(layer, "num_layers", self.num_layers)
        boolean(layer, "batch_first", self.batch_first)
        object.__setattr__(self, "dropout", number(layer, "dropout", self.dropout, 0.0, 1.0))
        boolean(layer, "bidirectional", self.bidirectional)
        within_layer_budget(self, "num_layers")

    def layer_count(self) -> int:
        """One layer per stacked layer and direction (each holds its own tensors)."""
        return self.num_layers * self._directions

    @property
    def _proj(self) -> int:
        """The projection size (LSTM's ``proj_size``; 0: none)."""
        return 0

    @property
    def _out_size(self) -> int:
        """``H_out``, the size of ``h``: ``proj_size`` when set, else ``hidden_size``."""
        return self._proj or self.hidden_size

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _state_sizes(self) -> tuple[int, ...]:
        """The last dim of each part of ``hx``."""
        return (self._out_size,)

    # -- tensors --------------------------------------------------------------------------
    def param_shapes(self):
        sizes_known(self)
        gate = self._gates * self.hidden_size
        out = self._out_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else out * self._directions
            for sfx in self._suffixes():
                shapes[f"weight_ih_l{layer}{sfx}"] = (gate, in_size)
                shapes[f"weight_hh_l{layer}{sfx}"] = (gate, out)
                if self.bias:
                    shapes[f"bias_ih_l{layer}{sfx}"] = (gate,)
                    shapes[f"bias_hh_l{layer}{sfx}"] = (gate,)
                if self._proj:
                    shapes[f"weight_hr_l{layer}{sfx}"] = (self._proj, self.hidden_size)
        return shapes

    def init_params(self, key, *, dtype, device):
        return _init_uniform(self, key, dtype, device)

    # -- shapes ---------------------------------------------------------------------------
    def resolve(self, in_shape: Shape, path: str = "") -> Spec:
        return _resolve(self, path, _check_example(self, path, in_shape, 2, "L, H_in"))

    def out_shape(self, in_shape: Shape, path: str = "", record: dict | None = None) -> Any:
        length = _check_example(self, path, in_shape, 2, "L, H_in")[0]
        d = self._directions * self.num_layers
        states = tuple((d, size) for size in self._state_sizes())
        return (length, self._directions * self._out_size), (
            states[0] if len(states) == 1 else states
        )

    # -- computation ------------------------------------------------------------------------
    def _step(self, ctx: Context, layer: int, sfx: str) -> Step:
        """The cell of one layer and direction."""
        raise NotImplementedError

    def _projection_bias(self, ctx: Context, layer: int, sfx: str) -> torch.Tensor | None:
        """The bias added to the input projection: both biases, where the cell allows."""
        if not self.bias:
            return None
        return ctx.param(f"bias_ih_l{layer}{sfx}") + ctx.param(f"bias_hh_l{layer}{sfx}")

    def _mask(
        self,
        ctx: Context,
        lengths: Any,
        shape: tuple[int, ...],
        steps: int,
        batch: int,
        batched: bool,
        device: torch.device,
    ) -> torch.Tensor | None:
        """``(L, N, 1)`` bool, true on the valid steps; ``None`` without lengths."""
        if lengths is None:
            return None
        if isinstance(lengths, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in lengths
        ):
            lengths = torch.tensor(lengths, dtype=torch.int64)
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(
                f"expected lengths to be an integer tensor (or a list of ints), got "
                f"{type(lengths).__name__}"
            )
        dtype = lengths.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise TypeError(f"expected lengths to be an integer tensor, got dtype {dtype}")
        want = (batch,) if batched else ()
        if tuple(lengths.shape) != want:
            raise ValueError(
                f"expected lengths of shape {_shape_text(want)} for an input "
                f"of shape {_shape_text(shape)}, got shape {tuple(lengths.shape)}"
            )
        lengths = lengths.to(device)
        # Values are data: only eager mode may look at them.
        if ctx.mode == "eager" and not bool(((lengths >= 1) & (lengths <= steps)).all()):
            raise ValueError(
                f"expected lengths in [1, {steps}] (the sequence length), got {lengths.tolist()}"
            )
        valid = torch.arange(steps, device=device).unsqueeze(1) < lengths.reshape(1, -1)
        return valid.unsqueeze(2)

    def _dropout(self, ctx: Context, layer: int, out: torch.Tensor) -> torch.Tensor:
        """torch's dropout between layers, drawn from the layer key with ``layer`` folded in."""
        p = self.dropout
        if not ctx.train or p == 0.0 or layer == self.num_layers - 1:
            return out
        if p == 1.0:
            # A product rather than new zeros, as torch, so NaN and inf still propagate.
            return out * 0.0
        # Dropout's mask rule (16 bits an entry), as every dropout mask.
        k = _random.fold_in(ctx.key(), layer)
        keep = keep_mask(k, 1.0 - p, tuple(out.shape), device=out.device)
        return out * keep.to(out.dtype).div_(1.0 - p)

    def forward(self, ctx: Context, x: Any) -> Any:
        input, hx, lengths = _unpack(x, 3, "input, (input, hx) or (input, hx, lengths)")
        shape = tuple(input.shape)
        if input.dim() not in (2, 3) or shape[-1] != self.input_size:
            dims = "N, L" if self.batch_first else "L, N"
            raise ValueError(
                f"expected input ({dims}, {self.input_size}) or (L, {self.input_size}), "
                f"got shape {shape}"
            )
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        steps, batch = input.shape[0], input.shape[1]
        if steps == 0:
            raise ValueError(f"expected a sequence length larger than 0, got input shape {shape}")
        initial = _initial_state(
            hx,
            self._hx_names,
            self._state_sizes(),
            (self._directions * self.num_layers,),
            batch,
            batched,
            input,
            shape,
        )
        mask = self._mask(ctx, lengths, shape, steps, batch, batched, input.device)
        batch_major = batched and self.batch_first
        if mask is None and _fused_allowed(self, ctx, input):
            output, states = self._fused(ctx, input, initial, batch_major)
        else:
            output, states = self._loop(ctx, input, initial, mask, batch_major)
        if not batched:
            output = output.squeeze(1)
            states = [s.squeeze(1) for s in states]
        return output, (states[0] if len(states) == 1 else tuple(states))

    def _scan_layer(self, ctx: Context, layer: int, sfx: str, x: torch.Tensor, state, *how):
        """One layer and direction of the scan on ``x`` ``(L, N, H_in)`` from ``state``
        (``how``: :func:`_scan`'s ``mask, reverse, time_dim``): the input projection of
        every step in one product, then the cell step by step."""
        w_ih = ctx.param(f"weight_ih_l{layer}{sfx}")
        xp = F.linear(x, w_ih, self._projection_bias(ctx, layer, sfx))
        return _scan(self._step(ctx, layer, sfx), xp, state, *how)

    def _fused(self, ctx: Context, input: torch.Tensor, initial: tuple, batch_major: bool):
        """torch's own kernel (``torch.lstm``, ...; oneDNN on the CPU), as ``nn.LSTM`` calls
        it: ``input`` is ``(L, N, H_in)``; the output is ``(N, L, *)`` if ``batch_major``."""
        weights = [ctx.param(n) for n in self.param_shapes()]  # torch's ``_flat_weights``
        hx: Any = list(initial) if len(initial) > 1 else initial[0]
        if batch_major:
            input = input.transpose(0, 1)
        args = (self.bias, self.num_layers, 0.0, ctx.train, self.bidirectional, batch_major)
        out = self._fused_op()(input, hx, weights, *args)
        return out[0], list(out[1:])

    def _fused_op(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """The ``torch`` function of this layer's kernel (``torch.lstm``, ...)."""
        raise NotImplementedError

    def _loop(
        self, ctx: Context, input: torch.Tensor, initial: tuple, mask: Any, batch_major: bool
    ) -> tuple:
        """The scan over time on ``(L, N, H_in)``; the output is ``(N, L, *)`` if
        ``batch_major``, else ``(L, N, *)``."""
        directions = self._directions
        finals: list[tuple[torch.Tensor, ...]] = []
        layer_in = input
        for layer in range(self.num_layers):
            # The last layer stacks its steps where the output has them, so the output is
            # contiguous (as torch's) without a copy.
            last = layer == self.num_layers - 1
            time_dim = 1 if last and batch_major else 0
            outs = []
            for direction, sfx in enumerate(self._suffixes()):
                state = tuple(s[layer * directions + direction] for s in initial)
                how = (mask, direction == 1, time_dim)
                out, state = self._scan_layer(ctx, layer, sfx, layer_in, state, *how)
                outs.append(out)
                finals.append(state)
            out = outs[0] if directions == 1 else torch.cat(outs, -1)
            layer_in = self._dropout(ctx, layer, out)
        states = [torch.stack(parts) for parts in zip(*finals, strict=True)]
        return layer_in, states
