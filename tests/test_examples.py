"""The examples run end to end, and the README's commands and snippets stay true."""

from __future__ import annotations

import importlib
import re
import sys
import types

import pytest
import torch

import funcmodels as fm
from tests.helpers import ROOT, parse_float, run_example

README = ROOT / "README.md"

INSTALL = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".'
)
QUICKSTART_COMMAND = INSTALL + '[examples]" && python examples/quickstart.py'
TEST_COMMAND = INSTALL + '[test]" && python -m pytest -q'


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Fenced code blocks of a markdown text as ``(language, code)``, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def import_example(monkeypatch, name: str):
    """An example imported as a module (its ``main`` does not run)."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    return importlib.import_module(name)


@pytest.fixture
def dp(monkeypatch):
    return import_example(monkeypatch, "per_sample_grads")


@pytest.mark.slow
def test_quickstart_trains_and_round_trips(monkeypatch):
    out = run_example("quickstart.py", "--epochs", "1")
    # One epoch of Adam already lands far above chance (0.1), 0.82-0.94 over seeds 0-5;
    # a broken step would not.
    assert parse_float(r"test accuracy: ([0-9.]+)", out) > 0.5
    assert parse_float(r"relative difference ([0-9.e+-]+)", out) < 1e-4
    assert "predictions identical: True" in out
    # One line per parameter tensor: its name and (batch of 32, *parameter shape).
    spec = import_example(monkeypatch, "quickstart").SPEC
    want = [(n, (32, *t.shape)) for n, t in fm.to_state_dict(fm.init(fm.key(0), spec)).items()]
    got = re.findall(r"^  (\S+)\s+(\([0-9, ]+\))$", out, flags=re.M)
    assert [(n, tuple(map(int, re.findall(r"\d+", shape)))) for n, shape in got] == want, out


@pytest.mark.slow
def test_dp_sgd_example_trains_both_models_far_above_chance():
    # Three epochs, as one leaves the noisy DP-SGD run near chance for some seeds (0.22
    # for seed 3). Over seeds 0-5, three epochs reach 0.76-0.89 with DP-SGD and
    # 0.92-0.97 without: both bounds hold for every seed with a wide margin.
    out = run_example("per_sample_grads.py", "--epochs", "3")
    private = parse_float(r"test accuracy \(dp-sgd\): ([0-9.]+)", out)
    baseline = parse_float(r"test accuracy \(non-private\): ([0-9.]+)", out)
    assert private > 0.5
    assert baseline > 0.8
    # The privacy spent, against Opacus's RDP accountant asked directly for the same
    # sampling rate, noise and steps the example reports.
    from opacus.accountants import RDPAccountant

    q = parse_float(r"\(q=([0-9.]+)\)", out)
    steps = int(parse_float(r"\(([0-9]+) steps\)", out))
    accountant = RDPAccountant()
    accountant.history = [(1.0, q, steps)]  # (noise multiplier, sample rate, steps)
    want = accountant.get_epsilon(delta=1e-5)
    assert parse_float(r"epsilon = ([0-9.]+) at delta = 1e-5", out) == pytest.approx(want, abs=0.01)


@pytest.mark.slow
def test_ensemble_example_trains_every_member():
    # Checked over seeds 0-5: the mean member loss falls every epoch (2.08-2.10, then
    # 1.44-1.47, then 0.86-0.91), mean member accuracy 0.87-0.91, and the ensemble is never
    # worse than its weakest member.
    out = run_example("ensemble.py", "--epochs", "3")
    losses = [float(v) for v in re.findall(r"mean member loss ([0-9.]+)", out)]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], out
    assert losses[2] < 0.6 * losses[0], out
    members = [
        float(a) for a in re.search(r"member test accuracies: (.*)", out).group(1).split(",")
    ]
    assert len(members) == 8 and sum(members) / 8 > 0.8, out
    assert parse_float(r"ensemble test accuracy: ([0-9.]+)", out) >= min(members), out
    assert "same spec and predictions: True" in out


@pytest.mark.slow
def test_moe_example_trains_both_models_and_plots_utilisation(tmp_path):
    # Checked over seeds 0-2 at 5 epochs: MoE 0.94-0.96, dense 0.93-0.97, every expert
    # used (shares 0.035-0.475).
    plot = tmp_path / "utilisation.png"
    out = run_example("moe.py", "--epochs", "5", "--plot", str(plot))
    assert parse_float(r"test accuracy \(moe\): ([0-9.]+)", out) > 0.85
    assert parse_float(r"test accuracy \(dense\): ([0-9.]+)", out) > 0.85
    shares = [
        float(v) for v in re.search(r"expert shares, last epoch: (.*)", out).group(1).split(",")
    ]
    assert len(shares) == 4 and abs(sum(shares) - 1.0) < 0.01, out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_early_exit_example_saves_compute_per_sample(tmp_path):
    # Checked over seeds 0-2 at 10 epochs: full depth 0.947-0.955; calibrated 0.925-0.955 at
    # 1.00-1.06 of 8 blocks; the batch-mean rule needs 1.18-2.00 blocks for that accuracy.
    plot = tmp_path / "curve.png"
    out = run_example("early_exit.py", "--epochs", "10", "--plot", str(plot))
    full = parse_float(r"full depth \(8 blocks\): test accuracy ([0-9.]+)", out)
    acc = parse_float(r"calibrated: test accuracy ([0-9.]+)", out)
    blocks = parse_float(r"calibrated: test accuracy [0-9.]+, mean blocks ([0-9.]+)", out)
    assert full > 0.85 and acc > full - 0.05, out
    assert blocks <= 4.0, out  # at most half the full depth
    # The article's rule needs at least as many blocks for the same accuracy, or never
    # reaches it.
    match = re.search(
        r"batch-mean rule at accuracy >= [0-9.]+: (never reached|mean blocks ([0-9.]+))", out
    )
    assert match, out
    assert match.group(2) is None or float(match.group(2)) >= blocks, out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_starts_with_the_two_commands():
    blocks = code_blocks(README.read_text())
    assert [lang for lang, _ in blocks[:2]] == ["bash", "bash"]
    assert [code.strip() for _, code in blocks[:2]] == [QUICKSTART_COMMAND, TEST_COMMAND]


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys, scratch_registry):
    snippets = [code for lang, code in code_blocks(README.read_text()) if lang == "python"]
    assert len(snippets) >= 8
    # The snippets form one session, as a reader would paste them, in a module of their
    # own (dataclasses look their module up); files land in tmp_path.
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("readme")
    monkeypatch.setitem(sys.modules, "readme", module)
    namespace = module.__dict__
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
    printed = capsys.readouterr().out
    # The shapes the README promises in its comments are the ones printed.
    promised = re.findall(r"# (torch\.Size\(\[[0-9, ]+\]\))", "".join(snippets))
    assert promised and printed.split() == " ".join(promised).split()


def test_dp_step_reduces_to_the_plain_step(dp):
    """Without noise, with a clip no example reaches and the batch's own size as the
    expected one, the DP-SGD step is the plain one (SGD at rate 1: the params move by the
    gradient)."""
    params = fm.init(fm.key(0), dp.SPEC)
    x = fm.random.uniform(fm.key(1), (6, 1, 8, 8))
    y = torch.arange(6)
    opt = fm.optim.sgd(1.0)
    got, _ = dp.private_step_fn(opt, 1e6, 0.0, 6)(fm.key(2), params, opt.init(params), x, y)
    want, _ = dp.plain_step_fn(opt)(fm.key(2), params, opt.init(params), x, y)
    for name, w in fm.to_state_dict(want).items():
        torch.testing.assert_close(got[name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_dp_step_takes_an_empty_poisson_batch(dp):
    """An empty batch is a step of noise alone: std noise_multiplier * clip / expected
    batch size = 0.5 on every coordinate (the model's 3,850 coordinates give the sample std
    within 2% of it; the bound allows 20%)."""
    params = fm.init(fm.key(0), dp.SPEC)
    opt = fm.optim.sgd(1.0)
    step = dp.private_step_fn(opt, 1.0, 2.0, 4.0)
    x, y = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)
    new, _ = step(fm.key(3), params, opt.init(params), x, y)
    moved = torch.cat([(new[k] - params[k]).reshape(-1) for k in params.flat()])
    assert 0.4 < moved.std().item() < 0.6  # 0.5 expected
