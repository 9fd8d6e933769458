"""Converters of the recurrent layers: RNN, LSTM, GRU and their cells.

``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and the cells take the spec's fields as constructor
arguments and keep them as attributes of the same names (``bias`` as the flag itself). The
torch modules take ``(input, hx)`` as two arguments where ``fm.apply`` takes the tuple, and
a ``PackedSequence`` where ``fm.apply`` takes ``lengths``.

Importing this module registers the converters.
"""

from __future__ import annotations

from torch import nn

import funcmodels as fm

from ._twins import register_twins

fnn = fm.nn

# Spec type -> module type; the spec's fields are the module's constructor arguments.
TWINS: dict[type[fm.Spec], type[nn.Module]] = {
    fnn.RNN: nn.RNN,
    fnn.LSTM: nn.LSTM,
    fnn.GRU: nn.GRU,
    fnn.RNNCell: nn.RNNCell,
    fnn.LSTMCell: nn.LSTMCell,
    fnn.GRUCell: nn.GRUCell,
}
register_twins(TWINS)
