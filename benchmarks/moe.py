"""transforms.MoE against its FLOP floor and against the seed article's routing loop.

The layer: E = 8 experts Linear(D, H)-GELU-Linear(H, D), top-2, default gate
``Linear(D, E, bias=False)``, eval, float32; on the CPU T = 2048 tokens (8 x 256), D = 256,
H = 512; on CUDA (``--device cuda``) the issue's GPU shapes, T = 8192 (8 x 1024), D = 1024,
H = 2048 (``--gpu-shapes`` forces them on the CPU, for a dry run with ``--quick``). The
floor is one dense expert MLP over the T·k routed tokens (the same shapes): the compute
the layer cannot avoid. Contenders, timed interleaved in one run:

* dropless forward (eager: sort by expert, a loop over the 8 groups);
* dropless forward + backward (gradients of the params; the floor's forward + backward);
* capacity 1.25 forward (the static-shape dispatch through an (E, C, D) buffer);
* on CUDA: the dropless forward under bf16 autocast against the floor under bf16
  autocast, and the peak extra memory of the dispatch (``torch.cuda.max_memory_allocated``
  of the layer's forward minus the floor's, over the routed activations' T·k·D floats);
* the seed article's ``DynamicRouterNetwork.forward`` loops (per-token Python loops), with
  the same weights, checked equal first, at T = 512 on the CPU (where it finishes in
  seconds) and at the full T on CUDA; the ratio to our dropless forward at the same size
  is reported.

A GPU figure depends on TF32: the script prints ``torch.backends.cuda.matmul.allow_tf32``
and ``torch.backends.cudnn.allow_tf32``; ``--strict-fp32`` turns both off.

Run: ``python benchmarks/moe.py [--quick] [--threads 2] [--device cpu|cuda]
[--gpu-shapes] [--strict-fp32]``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from common import cuda_sync, parse_args, report, row, time_interleaved
from torch.func import grad

import funcmodels as fm
import transforms

nn = fm.nn
E, K = 8, 2
CPU_SHAPES = (8, 256, 256, 512)  # batch, sequence, D, H
GPU_SHAPES = (8, 1024, 1024, 2048)
D, H = CPU_SHAPES[2:]  # set by main()


def layer(capacity_factor=None) -> transforms.MoE:
    expert = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D))
    return transforms.MoE(expert, num_experts=E, top_k=K, capacity_factor=capacity_factor)


def article_forward(params: fm.Params, x: torch.Tensor) -> torch.Tensor:
    """The seed article's routing loops, on our params (its per-token weighting loop)."""
    tokens = x.reshape(-1, D)
    gates = tokens @ params["gate.weight"].T
    top_k_vals, top_k_indices = torch.topk(gates, K, dim=-1)
    top_k_weights = F.softmax(top_k_vals, dim=-1)
    expert_mask = F.one_hot(top_k_indices, num_classes=E)
    outputs = torch.zeros_like(tokens)
    w1, b1 = params["experts.0.weight"], params["experts.0.bias"]
    w2, b2 = params["experts.2.weight"], params["experts.2.bias"]
    for expert_idx in range(E):
        idx_mask = expert_mask[:, :, expert_idx].sum(dim=-1) > 0
        if not idx_mask.any():
            continue
        expert_input = tokens[idx_mask]
        hidden = F.gelu(F.linear(expert_input, w1[expert_idx], b1[expert_idx]))
        expert_output = F.linear(hidden, w2[expert_idx], b2[expert_idx])
        sample_indices = idx_mask.nonzero(as_tuple=True)[0]
        for i, sample_idx in enumerate(sample_indices):
            for k in range(K):
                if top_k_indices[sample_idx, k] == expert_idx:
                    weight = top_k_weights[sample_idx, k]
                    outputs[sample_idx] += weight * expert_output[i]
    return outputs.reshape(x.shape)


def floor_fns(device: str, tokens: int) -> tuple:
    """One dense expert MLP over ``tokens`` routed tokens: forward, forward + backward."""
    params = fm.init(
        fm.key(1), nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D)), device=device
    )
    x = torch.randn(tokens, D, device=device)

    def forward():
        with torch.no_grad():
            return fm.apply(params, x)

    def backward():
        return grad(lambda p: fm.apply(p, x).sum())(params)

    return forward, backward


def peak_extra_bytes(fn) -> int:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main(argv: list[str] | None = None) -> None:
    global D, H
    argv = sys.argv[1:] if argv is None else list(argv)
    gpu_shapes = "--gpu-shapes" in argv
    strict = "--strict-fp32" in argv
    argv = [a for a in argv if a not in ("--gpu-shapes", "--strict-fp32")]
    args = parse_args(__doc__.splitlines()[0], argv, device=(str, "cpu", "cpu or cuda"))
    repeats = args.repeats or (5 if args.quick else 15)
    dev = args.device
    cuda = torch.device(dev).type == "cuda"
    if cuda and strict:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    b, s, D, H = GPU_SHAPES if cuda or gpu_shapes else CPU_SHAPES
    t = b * s
    sync = cuda_sync(dev)
    params = fm.init(fm.key(0), layer(), device=dev)
    cap_params = params.with_spec(layer(1.25))
    x = torch.randn(b, s, D, device=dev)
    precision = "float32"
    if cuda:
        precision += (
            f", TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cudnn {torch.backends.cudnn.allow_tf32}, {torch.cuda.get_device_name()}"
        )

    def dropless():
        with torch.no_grad():
            return fm.apply(params, x)

    def dropless_backward():
        return grad(lambda p: fm.apply(p, x).sum())(params)

    def capacity():
        with torch.no_grad():
            return fm.apply(cap_params, x)

    floor_fwd, floor_bwd = floor_fns(dev, t * K)
    fns = {
        "floor forward": floor_fwd,
        "dropless forward": dropless,
        "floor forward+backward": floor_bwd,
        "dropless forward+backward": dropless_backward,
        "capacity 1.25 forward": capacity,
    }
    if cuda:

        def bf16(fn):
            def run():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fn()

            return run

        fns["floor forward, bf16 autocast"] = bf16(floor_fwd)
        fns["dropless forward, bf16 autocast"] = bf16(dropless)
    timings = time_interleaved(fns, repeats=repeats, min_sample_s=0.1, sync=sync)
    what = f"MoE T={t} D={D} H={H} E={E} k={K}, eval, {precision}, {dev}, {args.threads} threads"
    rows = [
        row(what, timings, "floor forward"),
        row(
            what,
            timings,
            "dropless forward",
            ratio_of=("dropless forward", "floor forward"),
            target="<= 1.5" if cuda else "<= 1.3",
        ),
        row(
            what,
            timings,
            "capacity 1.25 forward",
            ratio_of=("capacity 1.25 forward", "floor forward"),
            target="<= 1.6",
        ),
        row(what, timings, "floor forward+backward"),
        row(
            what,
            timings,
            "dropless forward+backward",
            ratio_of=("dropless forward+backward", "floor forward+backward"),
            target="<= 1.6",
        ),
    ]
    notes = []
    if cuda:
        rows += [
            row(what, timings, "floor forward, bf16 autocast"),
            row(
                what,
                timings,
                "dropless forward, bf16 autocast",
                ratio_of=("dropless forward, bf16 autocast", "floor forward, bf16 autocast"),
                target="<= 2",
            ),
        ]
        routed = t * K * D * x.element_size()
        extra = peak_extra_bytes(dropless) - peak_extra_bytes(floor_fwd)
        notes.append(
            f"peak extra memory of the dropless dispatch: {extra / 2**20:.1f} MiB = "
            f"{extra / routed:.2f}x the routed activations T·k·D ({routed / 2**20:.1f} MiB); "
            "target <= 2x"
        )
    # The article's loop (T = 512 on the CPU, the full T on CUDA), checked equal, against
    # our dropless forward at the same size.
    small = x if cuda else x[:2]
    with torch.no_grad():
        torch.testing.assert_close(
            fm.apply(params, small), article_forward(params, small), atol=1e-4, rtol=1e-4
        )

    def ours_small():
        with torch.no_grad():
            return fm.apply(params, small)

    def article_small():
        with torch.no_grad():
            return article_forward(params, small)

    loop = time_interleaved(
        {"article loop": article_small, "funcmodels": ours_small},
        repeats=max(3, repeats // 5),
        sync=sync,
    )
    n_small = small.shape[0] * small.shape[1]
    small_what = f"MoE T={n_small}, same layer, eval, {precision}, {dev}, {args.threads} threads"
    rows += [
        row(small_what, loop, "funcmodels"),
        row(
            small_what,
            loop,
            "article loop",
            ratio_of=("article loop", "funcmodels"),
            target=">= 300" if cuda else ">= 50",
        ),
    ]
    print(f"the article's loop and funcmodels agree at T = {n_small} (atol=rtol=1e-4)")
    for note in notes:
        print(note)
    report(rows, args.threads)


if __name__ == "__main__":
    main()
