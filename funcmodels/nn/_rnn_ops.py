"""The arithmetic shared by the recurrent layers and their cells: one step of each cell,
the scan over time, the initial states and the input and field checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .._shapes import Shape, fill, fit_rank, show
from .._spec import Spec
from ._check import (
    boolean,
    fan_in_bound,
    positive_int,
    uniform_param,
)

_NONLINEARITIES = ("tanh", "relu")

#: a cell step: (input projection at one step, state) -> new state; the output is state[0]
Step = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


# -- the cells' arithmetic (shared by the sequence layers and the cells) -----------------------


def _rnn_step(w_hh: torch.Tensor, relu: bool) -> Step:
    """``h' = act(xp + h W_hh^T)``; ``xp`` holds ``x W_ih^T`` and both biases."""
    w = w_hh.t()
    act = torch.relu if relu else torch.tanh

    def step(xp: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (act(torch.addmm(xp, state[0], w)),)

    return step


def _lstm_step(w_hh: torch.Tensor, w_hr: torch.Tensor | None) -> Step:
    """torch's LSTM cell, gates in the order (i, f, g, o); ``xp`` holds both biases.

    With a projection (``w_hr``), ``h' = (o * tanh(c')) W_hr^T``.
    """
    w = w_hh.t()
    proj = None if w_hr is None else w_hr.t()

    def step(xp: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h, c = state
        i, f, g, o = torch.addmm(xp, h, w).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if proj is not None:
            h = torch.mm(h, proj)
        return h, c

    return step


def _lstm_doubled_step(w_hh2: torch.Tensor, w_hr: torch.Tensor | None) -> Step:
    """The LSTM cell of the scan, on sigmoids only: ``xp`` and ``w_hh2`` hold the g gate
    doubled (see :func:`_double_g`) and the state is ``(h, 2 c)``.

    ``tanh(z) = 2 sigmoid(2 z) - 1``, so one sigmoid over all four gates gives ``i``,
    ``f``, ``o`` and ``(tanh(g) + 1) / 2``, and carrying ``2 c`` gives ``tanh(c)`` from a
    sigmoid too: 8 computing ops a step instead of 10, no ``tanh`` (which torch's CPU
    kernel computes about 5x slower than a sigmoid). With ``s_g = sigmoid(2 g)`` and
    ``s_c = sigmoid(2 c')``: ``2 c' = f (2 c) - 2 i + 4 i s_g`` and ``h' = 2 o s_c - o``.
    Each ``2 sigmoid(2 z) - 1`` is within about 2e-7 of ``tanh(z)`` in float32.
    """
    w = w_hh2.t()
    proj = None if w_hr is None else w_hr.t()

    def step(xp: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h, c2 = state
        i, f, g, o = torch.sigmoid(torch.addmm(xp, h, w)).chunk(4, 1)
        c2 = torch.addcmul(torch.sub(f * c2, i, alpha=2), i, g, value=4)
        h = torch.addcmul(torch.neg(o), o, torch.sigmoid(c2), value=2)
        if proj is not None:
            h = torch.mm(h, proj)
        return h, c2

    return step


def _double_g(t: torch.Tensor) -> torch.Tensor:
    """``t`` (an LSTM's weights or bias, gates (i, f, g, o) on dim 0) with the g gate
    doubled: exact, as a product by 2 is."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat((i, f, g + g, o))


def _lstm_scan(
    x: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    how: tuple[torch.Tensor | None, bool, int],
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    w_hr: torch.Tensor | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One LSTM layer and direction on ``x`` ``(L, N, H_in)`` from ``state`` ``(h, c)``
    (``how``: :func:`_scan`'s ``mask, reverse, time_dim``), by :func:`_lstm_doubled_step`:
    the g gate's weights and bias doubled and the cell state carried doubled (exact, as
    products by 2 are).

    Returns:
        the outputs and the final ``(h, c)``.
    """
    xp = F.linear(x, _double_g(w_ih), None if bias is None else _double_g(bias))
    h, c = state
    out, (h, c2) = _scan(_lstm_doubled_step(_double_g(w_hh), w_hr), xp, (h, c + c), *how)
    return out, (h, c2 * 0.5)


def _gru_step(w_hh: torch.Tensor, b_hh: torch.Tensor | None) -> Step:
    """torch's GRU cell, gates in the order (r, z, n); ``xp`` holds ``b_ih`` only, since
    ``b_hn`` sits inside the reset gate's product."""
    w = w_hh.t()

    def step(xp: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h = state[0]
        hp = torch.mm(h, w) if b_hh is None else torch.addmm(b_hh, h, w)
        xr, xz, xn = xp.chunk(3, 1)
        hr, hz, hn = hp.chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (n + z * (h - n),)

    return step


def _scan(
    step: Step,
    xp: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    reverse: bool,
    time_dim: int,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``step`` over the time steps of ``xp`` ``(L, N, G)``.

    Where ``mask[t]`` (``(N, 1)``, bool) is false the state is carried unchanged and the
    output is zero: a padded step, as torch's packed sequences leave it.

    Returns:
        the outputs stacked on ``time_dim`` and the final state.
    """
    steps = xp.unbind(0)  # one op for all steps (and one backward), not one select each
    length = len(steps)
    outs: list[torch.Tensor] = [xp] * length
    for t in range(length - 1, -1, -1) if reverse else range(length):
        new = step(steps[t], state)
        if mask is None:
            state = new
            outs[t] = new[0]
        else:
            m = mask[t]
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
            outs[t] = torch.where(m, new[0], 0.0)
    return torch.stack(outs, time_dim), state


def _shape_text(shape: Sequence[int]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def _initial_state(
    hx: Any,
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    lead: tuple[int, ...],
    batch: int,
    batched: bool,
    input: torch.Tensor,
    shape: tuple[int, ...],
) -> tuple[torch.Tensor, ...]:
    """The initial state, one ``(*lead, N, size)`` tensor per name (zeros without ``hx``).

    Arguments:
        hx: what the caller gave: ``None``, a tensor, or a pair of them when ``names``
            has two entries (an LSTM's ``(h_0, c_0)``).
        names: how messages call the parts.
        sizes: the last dim of each part.
        lead: the dims before the batch dim (``(D * num_layers,)`` or none for a cell).
        batch: ``N``.
        batched: whether the input had a batch dim; the parts then have one too.
        input: the input (its dtype and device make the zeros).
        shape: the input's shape as given, for messages.
    """
    if hx is None:
        return tuple(input.new_zeros(*lead, batch, size) for size in sizes)
    if len(names) == 1:
        parts: tuple[Any, ...] = (hx,)
    elif isinstance(hx, (tuple, list)) and len(hx) == len(names):
        parts = tuple(hx)
    else:
        count = f" of {len(hx)} items" if isinstance(hx, (tuple, list)) else ""
        raise TypeError(
            f"expected hx to be a pair ({', '.join(names)}) of tensors, got "
            f"{type(hx).__name__}{count}"
        )
    out = []
    for name, t, size in zip(names, parts, sizes, strict=True):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected {name} to be a tensor, got {type(t).__name__}")
        want = (*lead, batch, size) if batched else (*lead, size)
        if tuple(t.shape) != want:
            raise ValueError(
                f"expected {name} of shape {_shape_text(want)} for an input of shape "
                f"{_shape_text(shape)}, got shape {tuple(t.shape)}"
            )
        out.append(t if batched else t.unsqueeze(len(lead)))
    return tuple(out)


def _unpack(x: Any, most: int, forms: str) -> tuple[Any, ...]:
    """``(input, hx, ...)`` padded with ``None`` to ``most`` items; ``input`` a tensor."""
    if isinstance(x, PackedSequence):  # a tuple subclass: say what stands in for it
        raise TypeError(
            "got torch's PackedSequence: pass the padded batch and its lengths instead, "
            "(input, hx, lengths) (hx may be None), as torch.nn.utils.rnn."
            "pad_packed_sequence gives them"
        )
    if isinstance(x, (tuple, list)):
        if not 1 <= len(x) <= most:
            raise TypeError(f"expected {forms}, got a {type(x).__name__} of {len(x)} items")
        items = (*x, *(None,) * (most - len(x)))
    else:
        items = (x, *(None,) * (most - 1))
    if not isinstance(items[0], torch.Tensor):
        raise TypeError(f"expected {forms} with a tensor input, got {type(items[0]).__name__}")
    return items


def _check_fields(spec: Any) -> None:
    """The checks shared by every recurrent layer and cell."""
    layer = spec.type_name
    if spec.input_size is not None:
        positive_int(layer, "input_size", spec.input_size)
    positive_int(layer, "hidden_size", spec.hidden_size)
    boolean(layer, "bias", spec.bias)


def _check_example(spec: Any, path: str, in_shape: Shape, rank: int, dims: str) -> Shape:
    """One example's shape of ``rank`` dims whose last is ``input_size`` (when known)."""
    shape = fit_rank(spec, path, in_shape, rank, dims)
    n, got = spec.input_size, shape[-1]
    if n is not None and got is not None and got != n:
        where = dims.replace("H_in", str(n))
        raise spec._error(
            path,
            f"expected {n} input features (input_size={n}) in one example of shape ({where}), "
            f"got {show(in_shape)}",
        )
    return shape


def _resolve(spec: Any, path: str, shape: Shape) -> Spec:
    got = shape[-1]
    if spec.input_size is not None or got is None:
        return spec
    return fill(spec, path, input_size=got)


def _init_uniform(spec: Any, key: torch.Tensor, dtype, device) -> dict[str, torch.Tensor]:
    """torch's recurrent init: every tensor ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``."""
    bound = fan_in_bound(spec.hidden_size)
    return {
        name: uniform_param(key, name, shape, bound, dtype, device)
        for name, shape in spec.param_shapes().items()
    }


# -- sequence layers ----------------------------------------------------------------------------
