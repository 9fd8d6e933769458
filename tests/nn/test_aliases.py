"""The config names of the built-in layers, pinned: every alias as registered, the class it
names, and the name ``to_config`` writes for each class (its first alias).

The table below is the registry's content as literal data, so a change in how the aliases
are registered (their order per class, a name lost or added) fails here.
"""

from __future__ import annotations

import funcmodels as fm
from funcmodels import _registry

# (alias as registered, class name), in the order of registration within each class.
ALIASES = [
    ("linear", "Linear"),
    ("conv1d", "Conv1d"),
    ("conv2d", "Conv2d"),
    ("batchnorm1d", "BatchNorm1d"),
    ("batchnorm2d", "BatchNorm2d"),
    ("layernorm", "LayerNorm"),
    ("groupnorm", "GroupNorm"),
    ("identity", "Identity"),
    ("relu", "ReLU"),
    ("gelu", "GELU"),
    ("silu", "SiLU"),
    ("sigmoid", "Sigmoid"),
    ("tanh", "Tanh"),
    ("softmax", "Softmax"),
    ("logsoftmax", "LogSoftmax"),
    ("dropout", "Dropout"),
    ("maxpool2d", "MaxPool2d"),
    ("avgpool2d", "AvgPool2d"),
    ("adaptiveavgpool1d", "AdaptiveAvgPool1d"),
    ("adaptiveavgpool2d", "AdaptiveAvgPool2d"),
    ("flatten", "Flatten"),
    ("rearrange", "Rearrange"),
    ("reduce", "Reduce"),
    ("sequential", "Sequential"),
    ("residual_block", "ResidualBlock"),
    ("stack", "Stack"),
    ("repeat", "Repeat"),
    ("remat", "Remat"),
    ("batchnorm3d", "BatchNorm3d"),
    ("instancenorm1d", "InstanceNorm1d"),
    ("instancenorm2d", "InstanceNorm2d"),
    ("instancenorm3d", "InstanceNorm3d"),
    ("rmsnorm", "RMSNorm"),
    ("localresponsenorm", "LocalResponseNorm"),
    ("leakyrelu", "LeakyReLU"),
    ("elu", "ELU"),
    ("celu", "CELU"),
    ("selu", "SELU"),
    ("glu", "GLU"),
    ("mish", "Mish"),
    ("hardswish", "Hardswish"),
    ("hardsigmoid", "Hardsigmoid"),
    ("hardtanh", "Hardtanh"),
    ("relu6", "ReLU6"),
    ("softplus", "Softplus"),
    ("softsign", "Softsign"),
    ("softshrink", "Softshrink"),
    ("hardshrink", "Hardshrink"),
    ("tanhshrink", "Tanhshrink"),
    ("threshold", "Threshold"),
    ("logsigmoid", "LogSigmoid"),
    ("softmin", "Softmin"),
    ("softmax2d", "Softmax2d"),
    ("prelu", "PReLU"),
    ("rrelu", "RReLU"),
    ("dropout1d", "Dropout1d"),
    ("dropout2d", "Dropout2d"),
    ("dropout3d", "Dropout3d"),
    ("alphadropout", "AlphaDropout"),
    ("featurealphadropout", "FeatureAlphaDropout"),
    ("bilinear", "Bilinear"),
    ("conv3d", "Conv3d"),
    ("convtranspose1d", "ConvTranspose1d"),
    ("convtranspose2d", "ConvTranspose2d"),
    ("convtranspose3d", "ConvTranspose3d"),
    ("maxpool1d", "MaxPool1d"),
    ("maxpool3d", "MaxPool3d"),
    ("avgpool1d", "AvgPool1d"),
    ("avgpool3d", "AvgPool3d"),
    ("adaptivemaxpool1d", "AdaptiveMaxPool1d"),
    ("adaptivemaxpool2d", "AdaptiveMaxPool2d"),
    ("adaptivemaxpool3d", "AdaptiveMaxPool3d"),
    ("adaptiveavgpool3d", "AdaptiveAvgPool3d"),
    ("lppool1d", "LPPool1d"),
    ("lppool2d", "LPPool2d"),
    ("lppool3d", "LPPool3d"),
    ("zeropad1d", "ZeroPad1d"),
    ("zeropad2d", "ZeroPad2d"),
    ("zeropad3d", "ZeroPad3d"),
    ("constantpad1d", "ConstantPad1d"),
    ("constantpad2d", "ConstantPad2d"),
    ("constantpad3d", "ConstantPad3d"),
    ("reflectionpad1d", "ReflectionPad1d"),
    ("reflectionpad2d", "ReflectionPad2d"),
    ("reflectionpad3d", "ReflectionPad3d"),
    ("replicationpad1d", "ReplicationPad1d"),
    ("replicationpad2d", "ReplicationPad2d"),
    ("replicationpad3d", "ReplicationPad3d"),
    ("circularpad1d", "CircularPad1d"),
    ("circularpad2d", "CircularPad2d"),
    ("circularpad3d", "CircularPad3d"),
    ("upsample", "Upsample"),
    ("upsamplingnearest2d", "UpsamplingNearest2d"),
    ("upsamplingbilinear2d", "UpsamplingBilinear2d"),
    ("pixelshuffle", "PixelShuffle"),
    ("pixelunshuffle", "PixelUnshuffle"),
    ("unflatten", "Unflatten"),
    ("rnn", "RNN"),
    ("lstm", "LSTM"),
    ("gru", "GRU"),
    ("rnncell", "RNNCell"),
    ("lstmcell", "LSTMCell"),
    ("grucell", "GRUCell"),
    ("embedding", "Embedding"),
    ("multiheadattention", "MultiheadAttention"),
    ("transformer", "Transformer"),
    ("transformerdecoder", "TransformerDecoder"),
    ("transformerdecoderlayer", "TransformerDecoderLayer"),
    ("transformerencoder", "TransformerEncoder"),
    ("transformerencoderlayer", "TransformerEncoderLayer"),
    ("conv", "Conv2d"),
    ("bn", "BatchNorm2d"),
    ("pool", "MaxPool2d"),
    ("adaptive_pool", "AdaptiveAvgPool2d"),
]


def _builtin(cls: type) -> bool:
    return cls.__module__.startswith("funcmodels.")


def test_every_builtin_alias_is_pinned():
    registered = [
        (shown, _registry._ALIASES[key].__name__)
        for key, shown in _registry._ALIAS_SHOWN.items()
        if _builtin(_registry._ALIASES[key])
    ]
    assert sorted(registered) == sorted(ALIASES)
    for cls_name in {c for _, c in ALIASES}:
        # The order within a class decides the name to_config writes.
        assert [a for a, c in registered if c == cls_name] == [
            a for a, c in ALIASES if c == cls_name
        ]


def test_config_names_are_the_first_aliases():
    first: dict[str, str] = {}
    for alias, cls_name in ALIASES:
        first.setdefault(cls_name, alias)
    written = {cls.__name__: name for cls, name in _registry._CONFIG_NAME.items() if _builtin(cls)}
    assert written == first
    assert first["ResidualBlock"] == "residual_block" and first["Conv2d"] == "conv2d"


def test_every_exported_layer_is_named_and_found():
    exported = {getattr(fm.nn, name) for name in fm.nn.__all__}
    assert {c for _, c in ALIASES} == {cls.__name__ for cls in exported}
    for alias, cls_name in ALIASES:
        assert _registry.lookup(alias) is getattr(fm.nn, cls_name)
