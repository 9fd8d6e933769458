"""Small models covering every funcmodels.nn layer, with non-trivial params and state."""

from __future__ import annotations

import torch

import funcmodels as fm

nn = fm.nn

# name -> (spec, input shape); the batch of 6 gives BatchNorm real batch statistics.
MODELS: dict[str, tuple[fm.Spec, tuple[int, ...]]] = {
    "mlp": (
        nn.Sequential(
            nn.Linear(6, 8),
            nn.LayerNorm(8),
            nn.GELU("tanh"),
            nn.Dropout(0.0),
            nn.Linear(8, 4, bias=False),
            nn.SiLU(),
            nn.Linear(4, 3),
            nn.LogSoftmax(),
        ),
        (6, 6),
    ),
    "conv1d": (
        nn.Sequential(
            nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect"),
            nn.BatchNorm1d(4, momentum=None),
            nn.Tanh(),
            nn.AdaptiveAvgPool1d(3),
            nn.Flatten(),
            nn.Linear(12, 5),
            nn.BatchNorm1d(5),
            nn.Softmax(),
        ),
        (6, 2, 7),
    ),
    "cnn": (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, groups=2, bias=False),
            nn.GroupNorm(2, 8),
            nn.Sigmoid(),
            nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            nn.Flatten(),
            nn.Linear(8, 4),
        ),
        (6, 3, 8, 8),
    ),
    "resnet": (
        nn.Sequential(
            nn.ResidualBlock(3, 8, stride=2, use_se=True),
            nn.ResidualBlock(8, 8, norm="group", norm_groups=2, activation=nn.GELU()),
            nn.ResidualBlock(8, 8, norm="none"),
            nn.AdaptiveAvgPool2d((1, None)),
            nn.Flatten(),
            nn.Linear(32, 3),
        ),
        (6, 3, 8, 8),
    ),
    "nested": (
        nn.Sequential(
            {
                "stem": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False)),
                "head": nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(4 * 4 * 4, 6),
                    nn.BatchNorm1d(6, eps=1e-3),
                    nn.ReLU(),
                    nn.Linear(6, 2),
                ),
            }
        ),
        (6, 1, 6, 6),
    ),
    "block": (nn.ResidualBlock(4, 6, use_se=True, se_ratio=0.5), (6, 4, 5, 5)),
    "linear": (nn.Linear(5, 3), (6, 5)),
}


def perturbed(spec: fm.Spec, seed: int = 0, dtype=torch.float32) -> tuple[fm.Params, fm.State]:
    """Params and state of ``spec`` with every tensor moved off its initial value.

    BatchNorm and LayerNorm start at weight 1, bias 0, mean 0, var 1, where a wrong
    mapping of those tensors would go unnoticed; random values expose it.
    """
    params, state = fm.init_with_state(fm.key(seed), spec, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    flat_params = {
        k: v + 0.2 * torch.randn(v.shape, generator=g, dtype=dtype)
        for k, v in params.flat().items()
    }
    flat_state = {}
    for k, v in state.flat().items():
        if k.endswith("running_var"):
            v = torch.rand(v.shape, generator=g, dtype=dtype) + 0.5
        elif k.endswith("running_mean"):
            v = 0.3 * torch.randn(v.shape, generator=g, dtype=dtype)
        elif k.endswith("num_batches_tracked"):
            v = torch.tensor(7)
        flat_state[k] = v
    return fm.Params(spec, flat_params), fm.State(spec, flat_state)


def example_input(shape: tuple[int, ...], seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
