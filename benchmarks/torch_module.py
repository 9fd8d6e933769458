"""Per-sample gradients of a plain torch model through ``transforms.TorchModule``: against
torch.func's own recipe on the same module, and Opacus.

Figures, each measured side by side in one run:

* a GPT-2-shaped model written in plain torch (no transformers needed): token and position
  embeddings, 2 pre-LayerNorm blocks (causal self-attention with 4 heads, a 4x GELU MLP,
  residuals), a final LayerNorm and a head tied to the token embedding; width 128,
  vocabulary 1024, 64 tokens, batch 32. Its type is unknown to funcmodels, so
  ``transforms.from_module`` makes the whole model one ``TorchModule``. Contenders, each
  giving every example's gradient of its mean next-token loss:

  - ``TorchModule``: ``vmap(grad(loss))`` with ``fm.apply`` on the converted params;
  - ``torch.func``: the tutorial recipe, ``vmap(grad(loss))`` with
    ``torch.func.functional_call(model, params, ...)`` on the module itself;
  - ``opacus``: ``opacus.GradSampleModule`` (hooks on its supported layers, here
    Embedding, Linear and LayerNorm) and one backward of the summed loss, which leaves
    ``grad_sample``.

* what the opaque boundary costs DP: ``transforms.dp.clipped_grad`` on an MLP over
  sequences (batch 32 x 64 tokens, 256-1024-256-10) converted layer by layer (the Linear
  layers' closed forms, no per-example gradient formed) against the same model kept whole
  as one ``TorchModule`` (``from_module(model, opaque=[''])``: per-example gradients
  formed with ``vmap``, as inside any opaque part).

All contenders are checked to agree before anything is timed (``TorchModule`` and
torch.func to ``1e-6`` relative: the same kernels; Opacus to ``1e-3``: it sums in another
order; the two clipped gradients to ``1e-4``).

Run: ``python benchmarks/torch_module.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import assert_trees_close, parse_args, report, row, time_interleaved
from torch import nn
from torch.func import functional_call, grad, vmap

import funcmodels as fm
import transforms

Grads = dict[str, torch.Tensor]
VOCAB, WIDTH, HEADS, TOKENS, BATCH = 1024, 128, 4, 64, 32


class Block(nn.Module):
    """A GPT-2 block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, tokens: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)
        causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """Token ids ``(B, T)`` to next-token logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int = VOCAB, width: int = WIDTH, layers: int = 2):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(TOKENS, width)
        self.blocks = nn.ModuleList(Block(width, HEADS, TOKENS) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # The positions get the batch dim too: Opacus's hooks take every layer's first
        # dim for the examples (a bare arange gives a wpe "per-sample" gradient per position).
        b, t = ids.shape
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device).expand(b, t))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one example, ``logits (1, T, V)``."""
    return F.cross_entropy(logits[0], targets)


def torch_module_fn(params: fm.Params, ids, targets) -> Callable[[], Grads]:
    def loss(p, i, t):
        return token_loss(fm.apply(p, i[None]), t)

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    return lambda: per_example(params, ids, targets).flat()


def torch_func_fn(model: nn.Module, ids, targets) -> Callable[[], Grads]:
    weights = {k: v.detach() for k, v in model.named_parameters()}

    def loss(w, i, t):
        return token_loss(functional_call(model, w, (i[None],)), t)

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    return lambda: per_example(weights, ids, targets)


def opacus_fn(model: nn.Module, ids, targets) -> Callable[[], Grads]:
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, loss_reduction="sum")
    named = list(model.named_parameters())

    def step() -> Grads:
        gsm.zero_grad(set_to_none=True)
        logits = gsm(ids)
        F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1).sum().backward()
        return {k: p.grad_sample for k, p in named}

    return step


def gpt_figure(repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = GPT().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g)
    targets = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g)
    params, _ = transforms.from_module(model)
    assert type(params.spec) is transforms.TorchModule
    twin = GPT().train()  # Opacus records activations in train mode only (no dropout here)
    twin.load_state_dict(model.state_dict())
    fns = {
        "TorchModule": torch_module_fn(params, ids, targets),
        "torch.func": torch_func_fn(model, ids, targets),
        "opacus": opacus_fn(twin, ids, targets),
    }
    want = fns["torch.func"]()
    assert_trees_close(fns["TorchModule"](), want, "TorchModule", rtol=1e-6, atol=1e-7)
    assert_trees_close(fns["opacus"](), want, "opacus", rtol=1e-3, atol=1e-6)
    timings = time_interleaved(fns, repeats=repeats)
    what = f"GPT-2-shaped, 2 blocks, d {WIDTH}, {TOKENS} tokens, batch {BATCH}, CPU"
    return [
        row(what, timings, "TorchModule", ratio_of=("TorchModule", "torch.func"), target="<= 1.05"),
        row(what, timings, "torch.func"),
        row(what, timings, "opacus", ratio_of=("opacus", "TorchModule")),
    ]


def dp_figure(repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    x = torch.randn(BATCH, TOKENS, 256, generator=torch.Generator().manual_seed(2))
    y = torch.arange(BATCH) % 10
    layered, _ = transforms.from_module(model)
    whole, _ = transforms.from_module(model, opaque=[""])

    def losses(p, x, y):
        return F.cross_entropy(fm.apply(p, x).mean(1), y, reduction="none")

    clipped = transforms.dp.clipped_grad(losses, 1.0)
    fns = {
        "layer by layer": lambda: clipped(layered, x, y)[0].flat(),
        "one TorchModule": lambda: clipped(whole, x, y)[0].flat(),
    }
    want = fns["layer by layer"]()
    assert_trees_close(fns["one TorchModule"](), want, "dp", rtol=1e-4, atol=1e-6)
    timings = time_interleaved(fns, repeats=repeats)
    what = f"dp.clipped_grad, MLP 256-1024-256-10 on {TOKENS} tokens, batch {BATCH}, CPU"
    return [
        row(what, timings, "layer by layer"),
        row(what, timings, "one TorchModule", ratio_of=("one TorchModule", "layer by layer")),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (3 if args.quick else 15)
    # Opacus warns about its RNG and about full backward hooks on inputs that need no grad.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    report(gpt_figure(repeats) + dp_figure(repeats), args.threads)


if __name__ == "__main__":
    main()
