"""Plain torch modules no converter knows, for the TorchModule tests: a user's block
(SwiGLU), one with running statistics, one with a tied head and a constant buffer, one
with dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``: a block written as users write them."""

    def __init__(self, dim: int = 8, hidden: int = 16):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Tracking(nn.Module):
    """A BatchNorm child, a count of examples seen (assigned anew in forward) and an
    average of the inputs (updated in place): every kind of buffer update."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("average", torch.zeros(dim))

    def reset_parameters(self):
        self.seen.zero_()
        self.average.zero_()

    def forward(self, x):
        if self.training:
            self.seen = self.seen + x.shape[0]
            self.average.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return self.norm(x)


class TinyLM(nn.Module):
    """Token embedding, one projection, a head tied to the embedding, and a constant
    (non-persistent) buffer scaling the logits."""

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("temperature", torch.tensor(0.5), persistent=False)

    def forward(self, ids):
        return self.head(torch.tanh(self.proj(self.embed(ids)))) / self.temperature


class Noisy(nn.Module):
    """A linear map and dropout: randomness from torch's generator in train mode."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with its floating tensors drawn anew from a local generator (values away
    from any init, so a test sees which tensor went where)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        for t in module.buffers():
            if t.dtype.is_floating_point:  # positive: running variances among them
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return module
