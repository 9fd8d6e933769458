"""Peak memory of a CPU init of ``fm.nn.Stack``: the stacked tensors and one member, not
every member and then their stack.

Each measurement runs in a fresh subprocess: the growth of the peak resident set
(``ru_maxrss``) over the init, against the size of the stacked params.

Run: ``python benchmarks/stack_init_memory.py [--members 100] [--width 500]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import resource, sys
import funcmodels as fm
n, w = int(sys.argv[1]), int(sys.argv[2])
spec = fm.nn.Stack(fm.nn.Linear(w, w), n)
fm.init(fm.key(0), fm.nn.Stack(fm.nn.Linear(4, 4), 2))  # warm up the code paths
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = fm.init(fm.key(0), spec)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def peak_growth(members: int, width: int) -> int:
    """Bytes the peak resident set grew by during ``fm.init`` of the Stack (Linux kB units)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(members), str(width)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--width", type=int, default=500)
    args = parser.parse_args()
    stacked = args.members * (args.width * args.width + args.width) * 4
    growth = peak_growth(args.members, args.width)
    print(
        f"Stack(Linear({args.width}, {args.width}), {args.members}): stacked params "
        f"{stacked / 1e6:.1f} MB, peak RSS growth over fm.init {growth / 1e6:.1f} MB "
        f"({growth / stacked:.2f}x the stacked size)"
    )


if __name__ == "__main__":
    main()
