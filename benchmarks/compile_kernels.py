"""How many C++ kernels inductor generates for the fm.jit training step of one model of
``train_step.py``, and the compile's CPU time (the process and its ``g++`` children).

One compile in a fresh inductor cache (``compile_threads = 1``, graph caches off), after
a throwaway compile that pays inductor's one-time costs; the kernels are the ``.so``
files the compile adds to the cache. For the generated code itself, run it with
``TORCH_LOGS=output_code``.

Run: ``python benchmarks/compile_kernels.py --model mlp_dropout`` (one model per process,
so that no kernel is reused from another).
"""

from __future__ import annotations

import os
import tempfile

os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "0"
CACHE = tempfile.mkdtemp(prefix="compile_kernels_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE

import argparse  # noqa: E402
import glob  # noqa: E402

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
import train_step as T  # noqa: E402

import funcmodels as fm  # noqa: E402


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _kernels() -> int:
    return len(glob.glob(os.path.join(CACHE, "**", "*.so"), recursive=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp_dropout", choices=T.MODELS)
    model = parser.parse_args().model
    torch.set_num_threads(1)
    torch._inductor.config.compile_threads = 1
    torch.compile(lambda a: (a.sin() * 2).sum())(torch.ones(3))
    before = _kernels()
    problem = T.build(model)
    opt = fm.optim.adamw(T.LR, weight_decay=T.WEIGHT_DECAY)
    step = fm.jit(T.fm_step(problem, opt), dynamic=False)
    args = (problem.params, opt.init(problem.params), problem.state, problem.x, problem.y)
    start = _cpu()
    step(*args, fm.key(2))
    first = _cpu() - start
    start = _cpu()
    step(*args, fm.key(3))
    steady = _cpu() - start
    print(
        f"{model}: fm.jit step compile {first - steady:.2f} s CPU (with g++), "
        f"{_kernels() - before} C++ kernels; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
