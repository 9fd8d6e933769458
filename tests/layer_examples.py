"""The one table of layer examples: every registered layer type with the samples the
contract (tests/test_contract.py) checks it on, and the models the family tests share.

A layer type whose constructor needs arguments, or whose input is not a plain
``DEFAULT_SHAPE`` tensor, is listed in :data:`EXAMPLES`; a new layer type adds its examples
here (the contract fails for a registered type without one). Inputs come from seeded
``torch.Generator`` objects, never from the funcmodels generator under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import funcmodels as fm
import transforms
from tests.helpers import MODELS, causal, example_input, randomised

nn = fm.nn

EXACT = {"atol": 0.0, "rtol": 0.0}
CLOSE = {"atol": 2e-6, "rtol": 1e-5}
RENORM = {"atol": 1e-6, "rtol": 1e-6}
STATS = {"atol": 1e-6, "rtol": 1e-6}
F64 = {"atol": 1e-12, "rtol": 1e-10}
F32 = {"atol": 1e-5, "rtol": 1e-5}
COMPILED_TOL = {"atol": 1e-5, "rtol": 1e-5}
DEFAULT_SHAPE = (3, 4, 6, 6)
EVAL, TRAIN, BOTH = ("eval",), ("train",), ("eval", "train")


@dataclass
class Example:
    """One sample of a layer type.

    Arguments:
        spec: a complete spec (every size known).
        input: what ``fm.apply`` takes.
        tol: how close the torch module's output is to ``fm.apply``'s.
        call: how the torch module takes ``input`` (default: a tensor as it is, a tuple
            as positional arguments, a mapping as keyword arguments).
        static: whether the layer compiles to one graph.
        runs: whether the layer runs here (``False``: it needs a process group).
        compiled: the modes (``'eval'``, ``'train'``) the compile check runs it in.
        make: builds ``(params, state)`` where random values would not do (a sparsity
            mask, compressed indices);
            by default the spec's tensors are random, in the input's dtype.
    """

    spec: fm.Spec
    input: Any
    tol: dict = field(default_factory=lambda: EXACT)
    call: Callable[[torch.nn.Module, Any], Any] | None = None
    static: bool = True
    runs: bool = True
    make: Callable[[], tuple[fm.Params, fm.State]] | None = None
    compiled: tuple[str, ...] = ()

    def trees(self) -> tuple[fm.Params, fm.State]:
        if self.make is not None:
            return self.make()
        leaves = pytree.tree_leaves(self.input)
        floats = [t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
        return randomised(self.spec, dtype=floats[0] if floats else torch.float32)


def x(*shape: int, seed: int = 1) -> torch.Tensor:
    return example_input(shape, seed=seed)


def x64(*shape: int, seed: int = 1) -> torch.Tensor:
    return example_input(shape, seed=seed, dtype=torch.float64)


def positive(*shape: int) -> torch.Tensor:
    """LP pools raise a window sum to ``1/p``: NaN for a negative sum, in torch as here."""
    return x(*shape).abs() + 0.1


def indices(shape: tuple[int, ...], n: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, n, shape, generator=torch.Generator().manual_seed(seed))


def _mapping_as_query(module: torch.nn.Module, inputs: Any) -> Any:
    # fm's mapping goes in whole: the module to_module makes takes it as fm.apply does
    return module(inputs)


def _packed(module: torch.nn.Module, inputs: Any) -> Any:
    # fm's lengths are torch's packed sequence, padded back to the input's length
    seq, hx, lengths = inputs
    first = module.batch_first
    packed = pack_padded_sequence(seq, lengths, batch_first=first, enforce_sorted=False)
    out, state = module(packed, hx)
    total = seq.shape[1 if first else 0]
    return pad_packed_sequence(out, batch_first=first, total_length=total)[0], state


def _compressed() -> tuple[fm.Params, fm.State]:
    params, state = fm.init_with_state(fm.key(0), transforms.SparseLinear(6, 4, sparsity=0.5))
    return transforms.compress(params, state, crossover=0.0)


def _sparse() -> tuple[fm.Params, fm.State]:
    """Random weights under the initial (magnitude) mask; the mask is a bool, so random
    values would keep every weight."""
    params, state = fm.init_with_state(fm.key(0), transforms.SparseLinear(6, 4, sparsity=0.5))
    return randomised(params.spec)[0], state


def _sparse_then_folded() -> tuple[fm.Params, fm.State]:
    spec = nn.Sequential(
        transforms.SparseLinear(6, 4, sparsity=0.5), transforms.FoldedBatchNorm1d()
    )
    params, state = fm.init_with_state(fm.key(0), spec)
    return randomised(spec)[0], state


ACTIVATIONS = nn.Sequential(
    nn.Conv2d(2, 4, 3),
    nn.PReLU(4, 0.1),
    nn.GLU(dim=1),
    nn.Softmax2d(),
    nn.Flatten(),
    nn.Linear(18, 8),
    nn.LeakyReLU(0.2),
    nn.ELU(0.5),
    nn.CELU(1.5),
    nn.SELU(),
    nn.Mish(),
    nn.Hardswish(),
    nn.Hardsigmoid(),
    nn.Hardtanh(-0.5, 2.0),
    nn.ReLU6(),
    nn.Softplus(2.0, 10.0),
    nn.Softsign(),
    nn.Softshrink(0.1),
    nn.Hardshrink(0.05),
    nn.Tanhshrink(),
    nn.Threshold(-1.0, 0.5),
    nn.LogSigmoid(),
    nn.RReLU(0.1, 0.2),
    nn.PReLU(),
    nn.Softmin(),
)
NORMS = nn.Sequential(
    nn.Conv2d(2, 4, 3),
    nn.InstanceNorm2d(4, affine=True, track_running_stats=True, momentum=0.2),
    nn.LocalResponseNorm(3, k=1.5),
    nn.Flatten(),
    nn.Linear(36, 6),
    nn.RMSNorm(6, eps=1e-4),
    nn.Linear(6, 8),
)
BN3D = nn.Sequential(nn.BatchNorm3d(2, momentum=None), nn.InstanceNorm3d(2), nn.Flatten())
IN1D = nn.Sequential(
    nn.Conv1d(2, 4, 3),
    nn.InstanceNorm1d(4, 1e-3, 0.3, affine=True, track_running_stats=True),
    nn.Flatten(),
    nn.Linear(20, 3),
)
DROPOUTS = nn.Sequential(
    nn.Conv2d(2, 4, 3),
    nn.Dropout2d(0.1),
    nn.FeatureAlphaDropout(0.2),
    nn.Flatten(2),
    nn.Dropout1d(0.3),
    nn.Flatten(),
    nn.AlphaDropout(0.4),
    nn.Linear(36, 2),
)
PADS_AND_RESAMPLING = nn.Sequential(
    nn.Conv2d(2, 8, 1),
    nn.ReflectionPad2d((1, 0, 2, 1)),
    nn.ReplicationPad2d(1),
    nn.CircularPad2d((0, 1, 1, 0)),
    nn.ConstantPad2d((-1, 1, 0, 0), 0.5),
    nn.PixelShuffle(2),
    nn.Upsample(scale_factor=1.5, mode="bicubic", align_corners=True),
    nn.UpsamplingBilinear2d(size=(8, 6)),
    nn.PixelUnshuffle(2),
    nn.Flatten(2),
    nn.Unflatten(2, (4, -1)),
    nn.UpsamplingNearest2d(scale_factor=2),
    nn.ZeroPad2d(1),
)
PADS_1D = nn.Sequential(
    nn.ZeroPad1d((1, 2)),
    nn.ConstantPad1d((2, -1), 0.25),
    nn.ReflectionPad1d(2),
    nn.ReplicationPad1d((0, 3)),
    nn.CircularPad1d((1, 2)),
    nn.InstanceNorm1d(2, affine=True),
    nn.Identity(),
)
PADS_3D = nn.Sequential(
    nn.ZeroPad3d((1, 0, 0, 1, 1, 0)),
    nn.ConstantPad3d(1, -0.5),
    nn.ReflectionPad3d((1, 1, 0, 1, 1, 0)),
    nn.ReplicationPad3d(1),
    nn.CircularPad3d((0, 1, 1, 0, 1, 1)),
    nn.AdaptiveMaxPool3d((2, None, 3)),
    nn.Dropout3d(0.3),
)
CONVOLUTIONS = nn.Sequential(
    nn.Conv3d(2, 4, 3, padding=1, padding_mode="circular"),
    nn.ConvTranspose3d(4, 2, 2, stride=2, output_padding=1, dilation=2),
    nn.Flatten(2),
    nn.ConvTranspose1d(2, 3, 2, stride=2),
    nn.Unflatten(2, (32, -1)),
    nn.ConvTranspose2d(3, 2, 2, groups=1),
)
POOLS = {
    n: nn.Sequential(
        {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n](2, 3, 1),
        nn.Sigmoid(),
        *{
            1: [nn.MaxPool1d(2, padding=1), nn.AvgPool1d(2, 1), nn.LPPool1d(2, 2, 1)],
            2: [nn.LPPool2d(2, 2, 1), nn.AdaptiveMaxPool2d((None, 3))],
            3: [nn.MaxPool3d(2, 1, ceil_mode=True), nn.AvgPool3d(2, 1), nn.LPPool3d(2, 1)],
        }[n],
        {1: nn.AdaptiveMaxPool1d(2), 2: nn.AdaptiveMaxPool2d(2), 3: nn.AdaptiveAvgPool3d(2)}[n],
    )
    for n in (1, 2, 3)
}
SMALL_CNN = nn.Sequential(
    nn.Conv2d(1, 4, 3),
    nn.BatchNorm2d(4),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(4 * 3 * 3, 10),
)
BN_NET = nn.Sequential(
    nn.Conv2d(1, 3, 3),
    nn.BatchNorm2d(3),
    nn.ReLU(),
    nn.Flatten(),
    nn.Dropout(0.5),
    nn.Linear(3 * 3 * 3, 2),
)


def einops_model(reduction: str) -> fm.Spec:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Rearrange("b c (h h2) (w w2) -> b (h w) (c h2 w2)", h2=2, w2=2),
        nn.Reduce("b s c -> b c", reduction),
        nn.Linear(16, 3),
    )


ENCODER = nn.TransformerEncoder(
    nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, nn.LayerNorm(8)
)
GRU = nn.GRU(3, 4, 2, dropout=0.5, bidirectional=True, batch_first=True)
SEQ = x(2, 5, 8)  # (N, L, E), batch first
SEQ_T = x(5, 2, 8, seed=2)  # (L, N, E)
TGT = x(2, 4, 8, seed=3)
TGT_T = x(4, 2, 8, seed=4)
PADDED = torch.zeros(2, 5, dtype=torch.bool).index_fill(1, torch.tensor([3, 4]), True)
PADDED[1] = False


def _recurrent(spec: fm.Spec, steps: tuple[int, ...], state_sizes: tuple[tuple[int, ...], ...]):
    """The layer on a float64 input, alone and with a random initial state."""
    first = x64(*steps)
    hx = tuple(x64(*size, seed=2 + i) for i, size in enumerate(state_sizes))
    return [
        Example(spec, first, tol=F64),
        Example(spec, (first, hx if len(hx) > 1 else hx[0]), tol=F64),
    ]


class Gated(torch.nn.Module):
    """A plain torch block no converter knows, for TorchModule: a gated projection with a
    running average of its inputs (a buffer updated in train mode)."""

    def __init__(self, dim: int = 6, hidden: int = 8):
        super().__init__()
        self.up = torch.nn.Linear(dim, 2 * hidden)
        self.down = torch.nn.Linear(hidden, dim, bias=False)
        self.register_buffer("average", torch.zeros(dim))

    def reset_parameters(self) -> None:
        self.average.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.average = 0.9 * self.average + 0.1 * x.detach().mean(0)
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(torch.nn.functional.silu(a) * b)


# registered so that from_module and from_config can rebuild it (the trust model of
# transforms.register_module_class); the class is this file's own, so no other test sees it
transforms.register_module_class(
    Gated, init_args=lambda m: {"dim": m.up.in_features, "hidden": m.down.in_features}
)
BLOCK = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh())


# type -> its examples. `compiled` marks those compiled, and in which modes: together they
# hold every static layer type (test_every_static_type_is_compiled); train mode where the
# layer has a path of its own there (running statistics, a key for each member or step).
# Dropout and RReLU compile in train mode in the contract's Inductor test.
EXAMPLES: dict[type, list[Example]] = {
    # pools
    nn.MaxPool1d: [
        Example(nn.MaxPool1d(3, 2, 1, 2, ceil_mode=True), x(2, 3, 9)),
        Example(POOLS[1], x(2, 2, 6), compiled=EVAL),
    ],
    nn.MaxPool2d: [Example(nn.MaxPool2d(2), x(2, 3, 6, 6))],
    nn.MaxPool3d: [
        Example(nn.MaxPool3d((3, 2, 2), (1, 2, 1), (1, 1, 0)), x(2, 2, 4, 5, 5)),
        Example(POOLS[3], x(2, 2, 6, 6, 6), compiled=EVAL),
    ],
    nn.AvgPool1d: [Example(nn.AvgPool1d(3, 2, 1, True, False), x(2, 3, 8))],
    nn.AvgPool2d: [
        Example(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), x(2, 3, 5, 5))
    ],
    nn.AvgPool3d: [Example(nn.AvgPool3d(2, divisor_override=3), x(2, 2, 4, 4, 4))],
    nn.LPPool1d: [Example(nn.LPPool1d(1.5, 2, 1, ceil_mode=True), positive(2, 2, 6))],
    nn.LPPool2d: [
        Example(nn.LPPool2d(2, (2, 3)), positive(2, 2, 5, 7)),
        Example(POOLS[2], x(2, 2, 6, 6), compiled=EVAL),
    ],
    nn.LPPool3d: [Example(nn.LPPool3d(1, (1, 2, 3), 1), positive(2, 2, 3, 3, 4))],
    nn.AdaptiveAvgPool1d: [Example(nn.AdaptiveAvgPool1d(3), x(2, 3, 7))],
    nn.AdaptiveAvgPool2d: [Example(nn.AdaptiveAvgPool2d((None, 2)), x(2, 3, 5, 7))],
    nn.AdaptiveAvgPool3d: [Example(nn.AdaptiveAvgPool3d((None, 1, 3)), x(2, 2, 3, 4, 5))],
    nn.AdaptiveMaxPool1d: [Example(nn.AdaptiveMaxPool1d(5), x(2, 2, 3))],
    nn.AdaptiveMaxPool2d: [Example(nn.AdaptiveMaxPool2d((2, 3)), x(2, 2, 5, 7))],
    nn.AdaptiveMaxPool3d: [
        Example(nn.AdaptiveMaxPool3d((1, None, 4)), x(2, 2, 3, 2, 6)),
        Example(PADS_3D, x(2, 2, 3, 3, 3), compiled=EVAL),
    ],
    # norms
    nn.BatchNorm1d: [Example(nn.BatchNorm1d(4, momentum=None), x(5, 4, 3))],
    nn.BatchNorm2d: [
        Example(nn.BatchNorm2d(3, affine=False), x(5, 3, 4, 4)),
        Example(SMALL_CNN, x(2, 1, 8, 8), compiled=BOTH),
    ],
    nn.BatchNorm3d: [Example(BN3D, x(5, 2, 2, 3, 2), compiled=BOTH)],
    nn.InstanceNorm1d: [
        Example(IN1D, x(5, 2, 7)),
        Example(nn.InstanceNorm1d(3, affine=True), x(2, 3, 5)),
        Example(PADS_1D, x(2, 2, 5), compiled=EVAL),
    ],
    nn.InstanceNorm2d: [Example(NORMS, x(5, 2, 5, 5), compiled=BOTH)],
    nn.InstanceNorm3d: [Example(nn.InstanceNorm3d(2, track_running_stats=True), x(3, 2, 2, 3, 4))],
    nn.LayerNorm: [Example(nn.LayerNorm((3, 4), bias=False), x(2, 5, 3, 4))],
    nn.RMSNorm: [Example(nn.RMSNorm(6, eps=1e-4), x(3, 6))],
    nn.GroupNorm: [Example(nn.GroupNorm(2, 4), x(3, 4, 5))],
    nn.LocalResponseNorm: [Example(nn.LocalResponseNorm(3, k=1.5), x(2, 4, 5, 5))],
    # convolutions
    nn.Conv1d: [Example(nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect"), x(3, 2, 7))],
    nn.Conv2d: [Example(nn.Conv2d(4, 6, (2, 3), 2, 1, groups=2, bias=False), x(2, 4, 7, 6))],
    nn.Conv3d: [
        Example(nn.Conv3d(2, 3, 2, padding=1, padding_mode="circular"), x(2, 2, 3, 3, 4)),
        Example(CONVOLUTIONS, x(2, 2, 3, 3, 3), compiled=EVAL),
    ],
    nn.ConvTranspose1d: [
        Example(nn.ConvTranspose1d(4, 6, 3, 3, 1, output_padding=2, groups=2), x(2, 4, 4))
    ],
    nn.ConvTranspose2d: [
        Example(
            nn.ConvTranspose2d(6, 4, (2, 3), (2, 1), (0, 1), dilation=(1, 2), groups=2),
            x(2, 6, 3, 4),
        ),
    ],  # fmt: skip
    nn.ConvTranspose3d: [
        Example(nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False), x(2, 2, 2, 3, 2))
    ],
    # linear layers
    nn.Linear: [Example(nn.Linear(5, 3), x(6, 5))],
    nn.Bilinear: [
        Example(
            nn.Sequential(nn.Bilinear(3, 4, 5, bias=bias), nn.ReLU(), nn.Linear(5, 2)),
            (x(4, 3), x(4, 4, seed=2)),
            call=lambda module, pair: module(pair),  # nn.Sequential passes the pair on
            compiled=EVAL if bias else (),
        )
        for bias in (True, False)
    ],
    nn.Embedding: [
        Example(nn.Embedding(10, 4), indices((2, 5), 10)),
        Example(nn.Embedding(10, 4, 3, 2.0, 1.0), indices((2, 5), 10), tol=RENORM),
        Example(nn.Embedding(3, 2, scale_grad_by_freq=True, sparse=True), indices((4,), 3)),
        Example(nn.Embedding(6, 4, 1, 1.0), indices((3, 4), 6), tol=RENORM, compiled=EVAL),
    ],
    # activations and the softmax family
    nn.Threshold: [Example(nn.Threshold(0.1, 20.0), x(*DEFAULT_SHAPE))],
    nn.PReLU: [Example(ACTIVATIONS, x(3, 2, 5, 5), compiled=EVAL)],
    nn.Softmax2d: [Example(nn.Softmax2d(), x(*DEFAULT_SHAPE))],
    # dropouts
    nn.Dropout: [
        Example(
            nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)),
            x(4, 3),
        ),
    ],  # fmt: skip
    nn.Dropout1d: [Example(DROPOUTS, x(3, 2, 5, 5), compiled=EVAL)],
    nn.Dropout3d: [
        Example(
            nn.Sequential(nn.Conv3d(2, 4, 2), nn.Dropout3d(0.3), nn.Flatten(), nn.Linear(32, 2)),
            x(3, 2, 3, 3, 3),
            compiled=TRAIN,
        )
    ],
    # containers, shapes
    nn.Sequential: [
        Example(spec, x(*shape), compiled={"mlp": EVAL, "conv1d": BOTH, "cnn": EVAL}.get(name, ()))
        for name, (spec, shape) in MODELS.items()
        if isinstance(spec, nn.Sequential)
    ],
    nn.Flatten: [Example(nn.Flatten(1, 2), x(*DEFAULT_SHAPE))],
    nn.Unflatten: [Example(nn.Unflatten(-1, (2, -1, 1)), x(2, 3, 8))],
    nn.Rearrange: [
        Example(nn.Rearrange("b (h w) c -> b h w c", w=2, h=4), x(2, 8, 3)),
        Example(nn.Rearrange("b c h w -> b (h w) c"), x(2, 3, 4, 5)),
    ],
    nn.Reduce: [
        Example(einops_model("mean"), x(3, 2, 4, 6), compiled=EVAL),
        Example(einops_model("max"), x(2, 2, 4, 6)),
    ],
    nn.ResidualBlock: [
        Example(MODELS["block"][0], x(*MODELS["block"][1])),
        Example(nn.ResidualBlock(4, 8, stride=2, use_se=True), x(2, 4, 6, 6), compiled=BOTH),
    ],
    nn.Repeat: [
        Example(nn.Repeat(BLOCK, 3), x(4, 6), compiled=BOTH),
        Example(nn.Sequential(nn.Repeat(nn.Sequential(nn.Linear(5, 5), nn.GELU()), 2)), x(3, 5)),
    ],
    nn.Remat: [
        Example(nn.Remat(BLOCK), x(4, 6), compiled=BOTH),
        Example(nn.Sequential(nn.Linear(3, 6), nn.Remat(nn.Repeat(BLOCK, 2))), x(4, 3)),
    ],
    nn.Stack: [
        Example(nn.Sequential({"ens": nn.Stack(BN_NET, 3), "out": nn.Identity()}), x(4, 1, 5, 5)),
        Example(nn.Stack(BN_NET, 2), x(4, 1, 5, 5), compiled=TRAIN),
    ],
    # padding and resampling
    **{
        getattr(nn, f"{kind}{n}d"): [
            Example(getattr(nn, f"{kind}{n}d")(*args), x(2, 2, *(5, 4, 6)[:n]))
        ]
        for n in (1, 2, 3)
        for kind, args in (
            ("ZeroPad", ((1, 2, -1, 2, 0, 1)[: 2 * n],)),
            ("ConstantPad", ((2, 1, 0, 1, 1, 0)[: 2 * n], 0.25)),
            ("ReflectionPad", ((1, 2, 3, 1, 1, 2)[: 2 * n],)),
            ("ReplicationPad", ((4, 0, 1, -1, 2, 1)[: 2 * n],)),
            ("CircularPad", ((1, -1, 2, 2, 3, 1)[: 2 * n],)),
        )
    },
    nn.Upsample: [
        Example(nn.Upsample(scale_factor=(1.5, 0.8), mode="bicubic"), x(2, 3, 4, 5)),
        Example(nn.Upsample(size=7), x(2, 3, 4, 5, 3)),
        Example(PADS_AND_RESAMPLING, x(2, 2, 4, 5), compiled=EVAL),
    ],
    nn.UpsamplingNearest2d: [Example(nn.UpsamplingNearest2d((5, 3)), x(2, 3, 4, 5))],
    nn.UpsamplingBilinear2d: [
        Example(nn.UpsamplingBilinear2d(scale_factor=(1.5, 2)), x(2, 3, 4, 5))
    ],
    nn.PixelShuffle: [Example(nn.PixelShuffle(2), x(2, 8, 3, 4))],
    nn.PixelUnshuffle: [Example(nn.PixelUnshuffle(3), x(2, 1, 2, 3, 6))],
    # recurrent layers (few steps: compile unrolls the loop over time)
    nn.RNN: [
        *_recurrent(nn.RNN(3, 4, 2, "relu", True, True, 0.0, True), (2, 5, 3), ((4, 2, 4),)),
        Example(nn.RNN(3, 4, batch_first=True), x(2, 3, 3), tol=F32, compiled=EVAL),
    ],
    nn.LSTM: [
        *_recurrent(
            nn.LSTM(3, 4, 2, bias=False, proj_size=2, bidirectional=True),
            (5, 2, 3),
            ((4, 2, 2), (4, 2, 4)),
        ),
        Example(nn.LSTM(3, 4, 2, bidirectional=True, proj_size=3), x(5, 2, 3), tol=F32),
        Example(nn.LSTM(3, 4, 2, False, True, 0.5, True, 2), x(2, 3, 3), tol=F32),
        Example(nn.LSTM(3, 4, proj_size=2), x(3, 2, 3), tol=F32, compiled=EVAL),
    ],
    nn.GRU: [
        *_recurrent(nn.GRU(3, 4, 3), (5, 2, 3), ((3, 2, 4),)),
        Example(GRU, x(2, 3, 3), tol=F32, compiled=EVAL),
        Example(
            GRU, (x(2, 3, 3), None, torch.tensor([3, 2])), tol=F32, call=_packed, compiled=TRAIN
        ),
    ],
    nn.RNNCell: [
        *_recurrent(nn.RNNCell(3, 4), (2, 3), ((2, 4),)),
        Example(nn.RNNCell(3, 4, False, "relu"), x(2, 3), tol=F32, compiled=EVAL),
    ],
    nn.LSTMCell: [
        *_recurrent(nn.LSTMCell(3, 4, bias=False), (2, 3), ((2, 4), (2, 4))),
        Example(nn.LSTMCell(3, 4), x(3, 3), tol=F32, compiled=EVAL),
    ],
    nn.GRUCell: [
        *_recurrent(nn.GRUCell(3, 4), (2, 3), ((2, 4),)),
        Example(nn.GRUCell(3, 4, bias=False), x(2, 3), tol=F32, compiled=EVAL),
    ],
    # attention and the transformer
    nn.MultiheadAttention: [
        Example(
            nn.MultiheadAttention(8, 2),
            {"query": TGT_T, "key": x(5, 2, 8, seed=5), "value": x(5, 2, 8, seed=6)},
            tol=CLOSE,
            call=_mapping_as_query,
        ),
        Example(
            nn.MultiheadAttention(6, 3, 0.1, False, True, True, 4, 5, True),
            {"query": x(2, 4, 6), "key": x(2, 5, 4, seed=2), "value": x(2, 5, 5, seed=3)},
            tol=CLOSE,
            call=_mapping_as_query,
        ),
        Example(
            nn.MultiheadAttention(8, 2, batch_first=True, add_zero_attn=True),
            SEQ,
            tol=CLOSE,
            compiled=EVAL,
        ),
        Example(
            nn.MultiheadAttention(8, 2, batch_first=True, add_zero_attn=True),
            {"query": SEQ, "key_padding_mask": PADDED, "need_weights": True},
            tol=CLOSE,
            call=_mapping_as_query,
            compiled=EVAL,
        ),
    ],
    nn.TransformerEncoderLayer: [
        Example(
            nn.TransformerEncoderLayer(8, 2, 16, activation=nn.GELU("tanh"), batch_first=True),
            {"src": SEQ},
            tol=CLOSE,
        )
    ],
    nn.TransformerDecoderLayer: [
        Example(
            nn.TransformerDecoderLayer(8, 4, 12, 0.2, "gelu", 1e-3, False, True, False),
            {"tgt": TGT_T, "memory": SEQ_T},
            tol=CLOSE,
        )
    ],
    nn.TransformerEncoder: [
        Example(ENCODER, {"src": SEQ, "mask": causal(5)}, tol=CLOSE),
        Example(ENCODER, {"src": SEQ, "src_key_padding_mask": PADDED}, tol=CLOSE),
        Example(
            nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1),
            {"src": SEQ, "mask": causal(5), "src_key_padding_mask": PADDED},
            tol=CLOSE,
            compiled=BOTH,
        ),
        Example(
            nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2, nn.LayerNorm(8), False),
            {"src": SEQ_T},
            tol=CLOSE,
        ),
    ],
    nn.TransformerDecoder: [
        Example(
            nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, norm_first=True), 3),
            {"tgt": TGT_T, "memory": SEQ_T},
            tol=CLOSE,
        ),
        Example(
            nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), 1),
            {"tgt": TGT, "memory": SEQ, "tgt_mask": causal(4), "tgt_is_causal": True},
            tol=CLOSE,
            compiled=EVAL,
        ),
    ],
    nn.Transformer: [
        Example(
            nn.Transformer(8, 2, 1, 2, 16, 0.0, nn.SiLU(), batch_first=True),
            {"src": SEQ, "tgt": TGT, "tgt_mask": causal(4)},
            tol=CLOSE,
        ),
        Example(
            nn.Transformer(
                8,
                2,
                2,
                1,
                16,
                custom_decoder=nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 4, 12), 1),
            ),
            {"src": SEQ_T, "tgt": TGT_T, "tgt_mask": causal(4)},
            tol=CLOSE,
        ),
        Example(
            nn.Transformer(8, 2, 1, 1, 16, batch_first=True),
            {"src": SEQ, "tgt": TGT, "tgt_mask": causal(4), "tgt_is_causal": True},
            tol=CLOSE,
            compiled=EVAL,
        ),
    ],  # fmt: skip
    # registered by transforms
    transforms.FoldedBatchNorm1d: [
        Example(transforms.FoldedBatchNorm1d(), x(3, 4)),
        Example(
            nn.Sequential(
                transforms.SparseLinear(6, 4, sparsity=0.5), transforms.FoldedBatchNorm1d()
            ),
            x(3, 6),
            make=_sparse_then_folded,
            compiled=EVAL,
        ),
    ],
    transforms.TorchModule: [
        Example(transforms.TorchModule(Gated()), x(4, 6), compiled=BOTH),
        Example(nn.Sequential(nn.Linear(3, 6), transforms.TorchModule(Gated(6, 4))), x(4, 3)),
    ],
    transforms.SparseLinear: [
        Example(transforms.SparseLinear(6, 4, sparsity=0.5), x(3, 6), make=_sparse)
    ],
    transforms.CompressedLinear: [
        # sparse tensors pass neither torch.func transforms nor torch.compile
        Example(transforms.CompressedLinear(6, 4, 12), x(3, 6), static=False, make=_compressed)
    ],
    transforms.MoE: [
        Example(
            transforms.MoE(
                nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 4)),
                4,
                2,
                capacity_factor=1.0,
            ),
            x(2, 5, 4),
        ),
        # dropless routing: how many tokens an expert takes is data
        Example(transforms.MoE(nn.Linear(4, 4), 4, 1, normalize=False), x(6, 4), static=False),
    ],  # fmt: skip
    transforms.EarlyExit: [
        Example(
            transforms.EarlyExit(
                (nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())),
                (nn.Linear(4, 3), nn.Linear(4, 3)),
                threshold=0.5,
            ),
            x(5, 4),
        )
    ],
    transforms.distributed.ExpertParallelMoE: [
        # its forward exchanges tokens over a process group (tests/transforms runs it)
        Example(
            transforms.distributed.ExpertParallelMoE(transforms.MoE(nn.Linear(4, 4), 4), 2),
            x(6, 4),
            runs=False,
            static=False,
        ),
    ],
}
# static layer types whose compile test lives with them (a larger model, or gradients)
COMPILED_ELSEWHERE = {
    transforms.MoE: "tests/transforms/test_moe.py::test_capacity_mode_compiles_to_one_graph",
    transforms.EarlyExit: "tests/transforms/test_early_exit.py::test_eval_compiles_to_one_graph",
}
