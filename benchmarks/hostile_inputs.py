"""Time and memory of refusing hostile files and configs (issue-20 items 1-4): each case
runs in a fresh subprocess; reported are the wall time of the refusing call and the growth
of the peak resident set over it. The target: under 2 s and 200 MB each.

Also the YAML reading speed that decided the C loader: 100,000 entries read by PyYAML's
pure-Python ``SafeLoader`` and by ``CSafeLoader``.

Run: ``python benchmarks/hostile_inputs.py``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

SETUP = """
import json, resource, struct, sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
import funcmodels as fm
tmp = Path(sys.argv[1])
def stored(spec_json):
    path = tmp / "hostile.safetensors"
    meta = {"format": "funcmodels", "version": "2", "spec": spec_json}
    save_file({"w": torch.zeros(1)}, path, metadata=meta)
    return path
"""

CASES = {
    "fm.load: LSTM num_layers 10^9": (
        "p = stored(json.dumps([{'type': 'lstm', 'params': {'input_size': 4, "
        "'hidden_size': 4, 'num_layers': 10**9}}]))",
        "fm.load(p)",
    ),
    "fm.from_config: TransformerEncoder num_layers 10^9": (
        "layer = {'type': 'TransformerEncoderLayer', 'params': {'d_model': 8, 'nhead': 2}}\n"
        "cfg = [{'type': 'TransformerEncoder', 'params': {'encoder_layer': layer, "
        "'num_layers': 10**9}}]",
        "fm.from_config(cfg)",
    ),
    "fm.load_config: YAML alias bomb (10^9 ints, <1 kB)": (
        "ones = ', '.join(['1'] * 10)\n"
        "lines = ['- type: maxpool2d', '  params:', f'    kernel_size: &l0 [{ones}]']\n"
        "refs = lambda i: ', '.join([f'*l{i - 1}'] * 10)\n"
        "lines += [f'    p{i}: &l{i} [{refs(i)}]' for i in range(1, 10)]\n"
        "p = tmp / 'bomb.yaml'; p.write_text('\\n'.join(lines) + '\\n')",
        "fm.load_config(p)",
    ),
    "fm.load_config: 13 MB YAML of 10^6 entries": (
        "p = tmp / 'big.yaml'; p.write_text('- type: relu\\n  name: abc\\n' * 550_000)",
        "fm.load_config(p)",
    ),
    "fm.load_config + from_config: 512 KiB YAML, 40,000 one-line entries (under the limit)": (
        "p = tmp / 'near.yaml'; p.write_text('- type: relu\\n' * 40_000)",
        "fm.from_config(fm.load_config(p))",
    ),
    "fm.load_config + from_config: 4 MiB JSON, 230,000 entries (under the limit)": (
        "p = tmp / 'near.json'; p.write_text(json.dumps([{'type': 'relu'}] * 230_000))",
        "fm.from_config(fm.load_config(p))",
    ),
    "fm.load_config: 5000-digit int (JSON)": (
        'p = tmp / \'long.json\'; p.write_text(\'[{"type": "linear", "params": '
        "{\"out_features\": ' + '7' * 5000 + '}}]')",
        "fm.load_config(p)",
    ),
    "fm.load: 5000-digit int in the stored spec": (
        'p = stored(\'{"type": "linear", "params": {"in_features": 1, '
        "\"out_features\": ' + '7' * 5000 + '}}')",
        "fm.load(p)",
    ),
}

TIMED = """
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu = time.perf_counter(), time.process_time()
try:
    {call}
    outcome = "accepted"
except (ValueError, TypeError, OSError) as e:
    outcome = type(e).__name__ + ": " + str(e)[:90]
took, cpu = time.perf_counter() - start, time.process_time() - cpu
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{{took:.3f}} {{cpu:.3f}} {{grew:.1f}} {{outcome}}")
"""

YAML_SPEED = """
import time, yaml
text = "- type: relu\\n  name: abc\\n" * 100_000
for name in ("SafeLoader", "CSafeLoader"):
    loader = getattr(yaml, name)
    start, cpu = time.perf_counter(), time.process_time()
    yaml.load(text, Loader=loader)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{name}: 100,000 entries in {took:.2f} s wall, {cpu:.2f} s CPU")
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, (setup, call) in CASES.items():
            script = SETUP + setup + "\n" + TIMED.format(call=call)
            out = (
                subprocess.run(
                    [sys.executable, "-c", script, tmp], capture_output=True, text=True, check=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            took, cpu, grew, outcome = out.split(" ", 3)
            print(
                f"{name}: {took} s wall, {cpu} s CPU, peak RSS +{grew} MB; "
                f"{textwrap.shorten(outcome, 90)}"
            )
    print(subprocess.run([sys.executable, "-c", YAML_SPEED], capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
