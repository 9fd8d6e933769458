"""Masked-sparse linear layers on the CPU: compressed inference, sparse training, sizes.

Float32, CPU, weights of a magnitude mask drawn by ``transforms.SparseLinear`` (init key 0).
Contenders, timed interleaved in one run:

* **inference** (``no_grad``): ``fm.apply`` of what ``transforms.compress`` makes of the
  layer (a ``CompressedLinear``, CSR, at or above the crossover sparsity 0.9; below it a
  plain ``Linear`` with the pruned weights zeroed) against ``F.linear`` with a plain dense
  weight of the same shape. 4096x4096 at batch 64 and 1024x1024 at batch 256, sparsities
  0.5, 0.8, 0.9, 0.95, 0.99. Targets: dense / compressed >= 2.5x at 0.9 and >= 8x at 0.99
  (4096), >= 1.5x at 0.9 (1024), and never slower than 1.05x dense: dense / compressed
  >= 1 / 1.05 = 0.952 at every sparsity.
* **training step** (forward + backward to the gradients of weight and bias, plain torch
  autograd on leaf tensors, input without gradient), 4096x4096, batch 64, sparsity 0.95:
  ``fm.apply`` of a ``SparseLinear`` with ``kernel='auto'`` (eager, plain tensors: the CSR
  kernel, checked from the autograd graph) against ``F.linear`` with a plain dense weight
  (target: >= 2x faster), and the masked dense kernel (``kernel='dense'``) for reference;
  and the compressed form trained directly (``transforms.compress`` of the same layer:
  gradients of the kept values, ``(nnz,)``, and of the bias, by sparse products and an
  SDDMM; target >= 2x): sparse training with a fixed mask without any dense weight or
  dense gradient.
* **size** at sparsity 0.9, 4096x4096: bytes in memory (the ``nbytes`` of every params
  and state tensor) and of the ``fm.save`` file, compressed against the dense ``Linear``
  (target: <= 0.25x); the uncompressed ``SparseLinear`` (weight, bias, bool mask) is shown
  for reference.

Before timing, every compressed layer's output is checked against the masked dense
product ``F.linear(x, W * M, b)`` (``rtol=1e-5, atol=1e-5``; the CSR kernel sums in
another order), and the training gradients of both kernels against those of
``F.linear(x, W * M, b)`` (the weight gradient zero outside the mask).

Run: ``python benchmarks/sparse.py [--quick] [--threads 2]``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings

import torch
import torch.nn.functional as F
from common import parse_args, ratio, report, row, time_interleaved

import funcmodels as fm
import transforms

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
# (size, batch, {sparsity: target on dense / compressed}); the rest get NOT_SLOWER.
SHAPES = ((4096, 64, {0.9: ">= 2.5", 0.99: ">= 8"}), (1024, 256, {0.9: ">= 1.5"}))
NOT_SLOWER = f">= {1 / 1.05:.3f}"
TRAIN_SIZE, TRAIN_BATCH, TRAIN_SPARSITY = 4096, 64, 0.95
SIZE_SPARSITY = 0.9

# torch warns on first use that its sparse CSR support is in beta.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def sparse_layer(n: int, sparsity: float, kernel: str = "auto") -> tuple[fm.Params, fm.State]:
    """A ``SparseLinear(n, n)`` with a magnitude mask of ``sparsity``, from key 0."""
    spec = transforms.SparseLinear(n, n, sparsity=sparsity, kernel=kernel)
    return fm.init_with_state(fm.key(0), spec)


def sparse_layers(n: int) -> dict[float, tuple[fm.Params, fm.State]]:
    """``sparse_layer(n, s)`` for every ``s`` in ``SPARSITIES``, with one sort of the weights.

    The weights do not depend on the sparsity, so the magnitude masks nest: each keeps the
    first ``n * n - round(s * n * n)`` weights of one ranking (largest magnitude first, ties
    to the lower flat index, as ``SparseLinear`` ranks them). Drawing each mask anew sorts
    the 16.8M weights of the 4096 layer once per sparsity, seconds each.
    """
    specs = {s: transforms.SparseLinear(n, n, sparsity=s) for s in SPARSITIES}
    weights = fm.init(fm.key(0), specs[SPARSITIES[0]]).flat()
    order = torch.argsort(weights["weight"].abs().reshape(-1), descending=True, stable=True)
    layers = {}
    for s, spec in specs.items():
        mask = torch.zeros(n * n, dtype=torch.bool)
        mask[order[: n * n - round(s * n * n)]] = True
        state = fm.State(spec, {"mask": mask.view(n, n)})
        layers[s] = (fm.Params(spec, weights), state)
    return layers


def check_layers(n: int) -> None:
    """``sparse_layers`` draws what ``fm.init_with_state`` does (checked at a small ``n``)."""
    for s, (params, state) in sparse_layers(n).items():
        want_params, want_state = sparse_layer(n, s)
        for got, want in ((params, want_params), (state, want_state)):
            if got.spec != want.spec or any(
                not torch.equal(got.flat()[k], t) for k, t in want.flat().items()
            ):
                raise AssertionError(f"sparse_layers({n}) differs from fm.init_with_state at {s}")


def masked_dense(params: fm.Params, state: fm.State) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain dense weight ``W * M`` and the bias."""
    return params["weight"] * state["mask"], params["bias"]


def dense_layer(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of a plain ``Linear(n, n)`` (key 0), as plain tensors."""
    params = fm.init(fm.key(0), fm.nn.Linear(n, n))
    return params["weight"].detach(), params["bias"].detach()


def nbytes(params: fm.Params, state: fm.State | None) -> int:
    tensors = list(params.flat().values()) + (list(state.flat().values()) if state else [])
    return sum(t.nbytes for t in tensors)


def file_bytes(params: fm.Params, state: fm.State | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.safetensors")
        fm.save(path, params, state)
        return os.path.getsize(path)


def inference(n: int, batch: int, targets: dict[float, str], layers: dict, repeats: int):
    """Rows for one shape, and the worst compressed / dense ratio over its sparsities.
    ``layers``: sparsity -> ``(params, state)`` of the ``SparseLinear(n, n)``."""
    x = torch.randn(batch, n, generator=torch.Generator().manual_seed(0))
    dense_w, dense_b = dense_layer(n)
    fns = {"dense F.linear": lambda: F.linear(x, dense_w, dense_b)}
    kinds = {}
    for s in SPARSITIES:
        params, state = layers[s]
        c_params, c_state = transforms.compress(params, state)
        kinds[s] = type(c_params.spec).__name__
        w, b = masked_dense(params, state)
        with torch.no_grad():
            torch.testing.assert_close(
                fm.apply(c_params, x, state=c_state), F.linear(x, w, b), rtol=1e-5, atol=1e-5
            )
        fns[f"compress {s}"] = lambda p=c_params, st=c_state: fm.apply(p, x, state=st)
    with torch.no_grad():
        timings = time_interleaved(fns, repeats=repeats)
    what = f"inference {n}x{n}, batch {batch}, fp32, CPU, no_grad"
    rows = [row(what, timings, "dense F.linear")]
    worst = 0.0
    for s in SPARSITIES:
        name = f"compress {s}"
        rows.append(
            row(
                what,
                timings,
                name,
                ratio_of=("dense F.linear", name),
                target=targets.get(s, NOT_SLOWER),
            ).replace(f"| {name} |", f"| {name} ({kinds[s]}) |", 1)
        )
        worst = max(worst, ratio(timings, name, "dense F.linear"))
    return rows, worst


def uses_csr(y: torch.Tensor) -> bool:
    """Whether the CSR kernel's autograd node is in ``y``'s graph."""
    stack, seen = [y.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_CSRValuesLinearBackward":
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def training(layer: tuple[fm.Params, fm.State], repeats: int) -> list[str]:
    """Rows of the training step; ``layer``: the ``SparseLinear`` at ``TRAIN_SPARSITY``."""
    n, batch, s = TRAIN_SIZE, TRAIN_BATCH, TRAIN_SPARSITY
    gen = torch.Generator().manual_seed(1)
    x, grad_out = torch.randn(batch, n, generator=gen), torch.randn(batch, n, generator=gen)

    def leaves(params: fm.Params) -> fm.Params:
        return fm.Params(
            params.spec, {k: v.detach().requires_grad_() for k, v in params.flat().items()}
        )

    def sparse_step(params: fm.Params, state: fm.State) -> tuple[torch.Tensor, torch.Tensor]:
        y = fm.apply(params, x, state=state)
        return torch.autograd.grad(y, (params["weight"], params["bias"]), grad_out)

    auto_p, state = layer
    if auto_p.spec.kernel != "auto":
        raise AssertionError(f"expected kernel='auto', got {auto_p.spec.kernel!r}")
    dense_spec = dataclasses.replace(auto_p.spec, kernel="dense")
    dense_kernel = (
        leaves(auto_p.with_spec(dense_spec)),
        state.with_spec(dense_spec),
    )
    auto = (leaves(auto_p), state)
    if not uses_csr(fm.apply(auto[0], x, state=auto[1])):
        raise AssertionError("kernel='auto' at sparsity 0.95 did not take the CSR kernel")
    # The same gradients as the masked dense product, by both kernels.
    w, b = (t.detach().requires_grad_() for t in (auto_p["weight"], auto_p["bias"]))
    want = torch.autograd.grad(F.linear(x, w * state["mask"], b), (w, b), grad_out)
    for p in (auto, dense_kernel):
        got = sparse_step(*p)
        for g, h in zip(got, want, strict=True):
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-4)
        if bool(got[0][~state["mask"]].any()):
            raise AssertionError("a pruned weight got a nonzero gradient")

    # The compressed form trains its kept values: (nnz,) gradients, no dense weight.
    c_params, c_state = transforms.compress(auto_p, state)
    compressed = (leaves(c_params), c_state)

    def compressed_step():
        p, st = compressed
        y = fm.apply(p, x, state=st)
        return torch.autograd.grad(y, (p["values"], p["bias"]), grad_out)

    got_v, got_b = compressed_step()
    torch.testing.assert_close(got_v, want[0][state["mask"]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_b, want[1], rtol=1e-4, atol=1e-4)

    dense_w, dense_b = (t.requires_grad_() for t in dense_layer(n))

    def dense_step():
        return torch.autograd.grad(F.linear(x, dense_w, dense_b), (dense_w, dense_b), grad_out)

    fns = {
        "dense F.linear": dense_step,
        "SparseLinear auto (CSR)": lambda: sparse_step(*auto),
        "SparseLinear kernel='dense'": lambda: sparse_step(*dense_kernel),
        "CompressedLinear (kept values)": compressed_step,
    }
    timings = time_interleaved(fns, repeats=repeats)
    what = f"training step {n}x{n}, batch {batch}, sparsity {s}, fp32, CPU, grads of W, b"
    return [
        row(what, timings, "dense F.linear"),
        row(
            what,
            timings,
            "SparseLinear auto (CSR)",
            ratio_of=("dense F.linear", "SparseLinear auto (CSR)"),
            target=">= 2",
        ),
        row(
            what,
            timings,
            "SparseLinear kernel='dense'",
            ratio_of=("dense F.linear", "SparseLinear kernel='dense'"),
        ),
        row(
            what,
            timings,
            "CompressedLinear (kept values)",
            ratio_of=("dense F.linear", "CompressedLinear (kept values)"),
            target=">= 2",
        ),
    ]


def sizes(layer: tuple[fm.Params, fm.State]) -> list[str]:
    """Rows of the sizes; ``layer``: the ``SparseLinear(4096, 4096)`` at ``SIZE_SPARSITY``."""
    n, s = TRAIN_SIZE, SIZE_SPARSITY
    dense = fm.init(fm.key(0), fm.nn.Linear(n, n))
    params, state = layer
    c_params, c_state = transforms.compress(params, state)
    if type(c_params.spec) is not transforms.CompressedLinear:
        raise AssertionError(f"compress kept {c_params.spec.type_name} at sparsity {s}")
    models = {
        "dense Linear": (dense, None),
        "SparseLinear (weight, bias, mask)": (params, state),
        "CompressedLinear": (c_params, c_state),
    }
    rows = []
    for where, measure in (("in memory (nbytes)", nbytes), ("fm.save file", file_bytes)):
        got = {name: measure(*m) for name, m in models.items()}
        what = f"size {n}x{n}, sparsity {s}, {where}"
        base = got["dense Linear"]
        for name, size in got.items():
            r = size / base
            if name == "dense Linear":
                rows.append(f"| {what} | {name} | {size / 2**20:.2f} MiB |  |  |  |")
            elif name == "CompressedLinear":
                met = "yes" if r <= 0.25 else "no"
                rows.append(
                    f"| {what} | {name} | {size / 2**20:.2f} MiB | "
                    f"{name} / dense Linear = {r:.3f}x | <= 0.25x | {met} |"
                )
            else:
                rows.append(
                    f"| {what} | {name} | {size / 2**20:.2f} MiB | {name} / dense Linear = "
                    f"{r:.3f}x |  |  |"
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = args.repeats or (3 if args.quick else 15)
    check_layers(256)
    rows, worst, big = [], [], {}
    for n, batch, targets in SHAPES:
        layers = sparse_layers(n)
        shape_rows, w = inference(n, batch, targets, layers, repeats)
        rows += shape_rows
        worst.append(w)
        if n == TRAIN_SIZE:
            big = layers
    print("compressed outputs equal the masked dense product (rtol=atol=1e-5)")
    rows += training(big[TRAIN_SPARSITY], repeats)
    print("training gradients of both kernels equal the masked dense product's (1e-4)")
    rows += sizes(big[SIZE_SPARSITY])
    report(rows, args.threads)
    slowest = max(worst)
    met = "yes" if slowest <= 1.05 else "no"
    print(
        f"slowest compress / dense over all sparsities and shapes: {slowest:.3f}x "
        f"(target: <= 1.05x): {met}"
    )


if __name__ == "__main__":
    main()
