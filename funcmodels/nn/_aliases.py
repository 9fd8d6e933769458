"""Config names of the built-in layers (see :func:`funcmodels.register_layer`).

Every layer is also found by its type name in any case, with or without ``_``/``-``
(``conv2d``, ``LayerNorm``, ``residual_block``); the short names of the seed article come
after the long ones, so configs written by ``to_config`` use the long ones.
"""

from __future__ import annotations

from .._registry import add_alias
from ._activation import (
    CELU,
    ELU,
    GELU,
    SELU,
    Hardshrink,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    Identity,
    LeakyReLU,
    LogSigmoid,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    RReLU,
    Sigmoid,
    SiLU,
    Softplus,
    Softshrink,
    Softsign,
    Tanh,
    Tanhshrink,
    Threshold,
)
from ._adaptive_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
)
from ._attention import MultiheadAttention
from ._batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from ._container import Flatten, Sequential, Unflatten
from ._conv import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from ._dropout import AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout
from ._einops import Rearrange, Reduce
from ._embedding import Embedding
from ._linear import Bilinear, Linear
from ._norm import GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm
from ._pad import (
    CircularPad1d,
    CircularPad2d,
    CircularPad3d,
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    ZeroPad1d,
    ZeroPad2d,
    ZeroPad3d,
)
from ._pool import (
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    LPPool1d,
    LPPool2d,
    LPPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from ._recurrent import GRU, LSTM, RNN
from ._resample import (
    PixelShuffle,
    PixelUnshuffle,
    Upsample,
    UpsamplingBilinear2d,
    UpsamplingNearest2d,
)
from ._residual import ResidualBlock
from ._rnn_cell import GRUCell, LSTMCell, RNNCell
from ._softmax import GLU, LogSoftmax, Softmax, Softmax2d, Softmin
from ._stack import Stack
from ._transformer import TransformerDecoderLayer, TransformerEncoderLayer
from ._transformer_stack import Transformer, TransformerDecoder, TransformerEncoder

_NAMES = (
    ("linear", Linear),
    ("conv1d", Conv1d),
    ("conv2d", Conv2d),
    ("batchnorm1d", BatchNorm1d),
    ("batchnorm2d", BatchNorm2d),
    ("layernorm", LayerNorm),
    ("groupnorm", GroupNorm),
    ("identity", Identity),
    ("relu", ReLU),
    ("gelu", GELU),
    ("silu", SiLU),
    ("sigmoid", Sigmoid),
    ("tanh", Tanh),
    ("softmax", Softmax),
    ("logsoftmax", LogSoftmax),
    ("dropout", Dropout),
    ("maxpool2d", MaxPool2d),
    ("avgpool2d", AvgPool2d),
    ("adaptiveavgpool1d", AdaptiveAvgPool1d),
    ("adaptiveavgpool2d", AdaptiveAvgPool2d),
    ("flatten", Flatten),
    ("rearrange", Rearrange),
    ("reduce", Reduce),
    ("sequential", Sequential),
    ("residual_block", ResidualBlock),
    ("stack", Stack),
    ("batchnorm3d", BatchNorm3d),
    ("instancenorm1d", InstanceNorm1d),
    ("instancenorm2d", InstanceNorm2d),
    ("instancenorm3d", InstanceNorm3d),
    ("rmsnorm", RMSNorm),
    ("localresponsenorm", LocalResponseNorm),
    ("leakyrelu", LeakyReLU),
    ("elu", ELU),
    ("celu", CELU),
    ("selu", SELU),
    ("glu", GLU),
    ("mish", Mish),
    ("hardswish", Hardswish),
    ("hardsigmoid", Hardsigmoid),
    ("hardtanh", Hardtanh),
    ("relu6", ReLU6),
    ("softplus", Softplus),
    ("softsign", Softsign),
    ("softshrink", Softshrink),
    ("hardshrink", Hardshrink),
    ("tanhshrink", Tanhshrink),
    ("threshold", Threshold),
    ("logsigmoid", LogSigmoid),
    ("softmin", Softmin),
    ("softmax2d", Softmax2d),
    ("prelu", PReLU),
    ("rrelu", RReLU),
    ("dropout1d", Dropout1d),
    ("dropout2d", Dropout2d),
    ("dropout3d", Dropout3d),
    ("alphadropout", AlphaDropout),
    ("featurealphadropout", FeatureAlphaDropout),
    ("bilinear", Bilinear),
    ("conv3d", Conv3d),
    ("convtranspose1d", ConvTranspose1d),
    ("convtranspose2d", ConvTranspose2d),
    ("convtranspose3d", ConvTranspose3d),
    ("maxpool1d", MaxPool1d),
    ("maxpool3d", MaxPool3d),
    ("avgpool1d", AvgPool1d),
    ("avgpool3d", AvgPool3d),
    ("adaptivemaxpool1d", AdaptiveMaxPool1d),
    ("adaptivemaxpool2d", AdaptiveMaxPool2d),
    ("adaptivemaxpool3d", AdaptiveMaxPool3d),
    ("adaptiveavgpool3d", AdaptiveAvgPool3d),
    ("lppool1d", LPPool1d),
    ("lppool2d", LPPool2d),
    ("lppool3d", LPPool3d),
    ("zeropad1d", ZeroPad1d),
    ("zeropad2d", ZeroPad2d),
    ("zeropad3d", ZeroPad3d),
    ("constantpad1d", ConstantPad1d),
    ("constantpad2d", ConstantPad2d),
    ("constantpad3d", ConstantPad3d),
    ("reflectionpad1d", ReflectionPad1d),
    ("reflectionpad2d", ReflectionPad2d),
    ("reflectionpad3d", ReflectionPad3d),
    ("replicationpad1d", ReplicationPad1d),
    ("replicationpad2d", ReplicationPad2d),
    ("replicationpad3d", ReplicationPad3d),
    ("circularpad1d", CircularPad1d),
    ("circularpad2d", CircularPad2d),
    ("circularpad3d", CircularPad3d),
    ("upsample", Upsample),
    ("upsamplingnearest2d", UpsamplingNearest2d),
    ("upsamplingbilinear2d", UpsamplingBilinear2d),
    ("pixelshuffle", PixelShuffle),
    ("pixelunshuffle", PixelUnshuffle),
    ("unflatten", Unflatten),
    ("rnn", RNN),
    ("lstm", LSTM),
    ("gru", GRU),
    ("rnncell", RNNCell),
    ("lstmcell", LSTMCell),
    ("grucell", GRUCell),
    ("embedding", Embedding),
    ("multiheadattention", MultiheadAttention),
    ("transformer", Transformer),
    ("transformerdecoder", TransformerDecoder),
    ("transformerdecoderlayer", TransformerDecoderLayer),
    ("transformerencoder", TransformerEncoder),
    ("transformerencoderlayer", TransformerEncoderLayer),
    # The seed article's short names.
    ("conv", Conv2d),
    ("bn", BatchNorm2d),
    ("pool", MaxPool2d),
    ("adaptive_pool", AdaptiveAvgPool2d),
)

for _name, _cls in _NAMES:
    add_alias(_name, _cls)
