"""Executed docs: every Python block of README.md and of docs/ runs, so the docs cannot drift.

The rules, for anyone writing a page:

* A fenced block whose info string is ``python`` runs. The blocks of one page run in
  order, in one namespace (a module of their own, so dataclasses find it), in a scratch
  directory and with a scratch layer registry, as a reader would paste them.
* A block that must not run (a GPU-only line, a multi-process launch) says so in its
  info string, ```` ```python skip ````, and the page's count of such blocks is pinned in
  ``SKIPPED`` below: a new skipped block fails the test until it is counted there.
* Other languages (``bash``, ``text``, ``yaml``, ``json``) never run; any other info
  string is refused, so a typo cannot turn a Python block off.
* Every ``print(...)`` line of a running block ends with a comment stating what it
  prints (``print(x.shape)  # torch.Size([8, 10])``); the printed lines must be those
  comments, in order.
* Pages that take more than a second or two (``torch.compile``, ``torch.export``) are in
  ``SLOW``: they run in the full suite, not in the fast lane.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

LANGUAGES = {"python", "bash", "text", "yaml", "json"}

# Blocks marked ```python skip, per page (paths relative to the repository root), and why.
SKIPPED: dict[str, int] = {
    # fm.jit: the compile takes 20-70 s on a 2-core CPU (tests/test_jit.py covers it)
    "docs/guides/training.md": 1,
    # torch.compile of the int8 program with inductor's freezing: a long compile
    "docs/guides/deployment.md": 1,
    # a torchrun script: it needs a process group of several processes
    "docs/guides/distributed.md": 1,
}

# Pages whose blocks compile or export (seconds each): full suite only.
SLOW = {
    "docs/guides/deployment.md",  # torch.export and torchao's QAT flow
    "docs/guides/dp.md",  # DP-SGD steps and Opacus's accountant (its import alone)
    "docs/guides/early-exit.md",  # a deep-supervision training loop
    "docs/guides/moe.md",  # a training loop through the routing
}

INSTALL = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".'
)
QUICKSTART_COMMAND = INSTALL + '[examples]" && python examples/quickstart.py'
TEST_COMMAND = INSTALL + '[test]" && python -m pytest -q'

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.S | re.M)
PRINT = re.compile(r"^\s*print\(.*\)\s*#\s?(.*)$")


def blocks(text: str) -> list[tuple[str, str, str]]:
    """Fenced code blocks of a markdown text as ``(language, marker, code)``, in order."""
    out = []
    for info, code in FENCE.findall(text):
        language, _, marker = info.strip().partition(" ")
        out.append((language, marker.strip(), code))
    return out


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> tuple[list[str], int]:
    """The page's Python blocks to run, and how many are marked ``skip``."""
    run, skipped = [], 0
    for language, marker, code in blocks(page.read_text()):
        assert language in LANGUAGES, f"{name(page)}: unknown block language {language!r}"
        assert marker in ("", "skip"), f"{name(page)}: unknown block marker {marker!r}"
        assert marker == "" or language == "python", f"{name(page)}: only python skips"
        if language == "python":
            if marker == "skip":
                skipped += 1
            else:
                run.append(code)
    return run, skipped


def promised_output(code: str, where: str) -> list[str]:
    """What the block's ``print`` lines say they print, one entry per line."""
    promised = []
    for line in code.splitlines():
        if re.match(r"^\s*print\(", line):
            match = PRINT.match(line)
            assert match, f"{where}: a print line states its output in a comment: {line!r}"
            promised.append(match.group(1).strip())
    return promised


def page_params():
    for page in PAGES:
        marks = [pytest.mark.slow] if name(page) in SLOW else []
        yield pytest.param(page, id=name(page), marks=marks)


@pytest.mark.parametrize("page", list(page_params()))
def test_page_blocks_run(page, tmp_path, monkeypatch, capsys, scratch_registry):
    run, skipped = python_blocks(page)
    assert skipped == SKIPPED.get(name(page), 0), (
        f"{name(page)}: {skipped} blocks marked skip; pin the count in SKIPPED"
    )
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_page")
    monkeypatch.setitem(sys.modules, "docs_page", module)
    promised = []
    for i, code in enumerate(run):
        where = f"{name(page)} python block {i}"
        promised += promised_output(code, where)
        exec(compile(code, where, "exec"), module.__dict__)
    printed = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in printed] == promised


def test_every_page_is_checked():
    # The pinned tables name only pages that exist, and the counts add up.
    names = {name(p) for p in PAGES}
    assert set(SKIPPED) <= names and SLOW <= names
    counts = [python_blocks(p) for p in PAGES]
    assert sum(s for _, s in counts) == sum(SKIPPED.values())
    assert sum(len(r) for r, _ in counts) >= 54  # the blocks run today


def test_fence_parsing():
    text = "a\n```python\nx = 1\n```\n```python skip\ny\n```\n```bash\nls\n```\n"
    assert blocks(text) == [
        ("python", "", "x = 1\n"),
        ("python", "skip", "y\n"),
        ("bash", "", "ls\n"),
    ]
    assert promised_output("print(1)  # 1\nx = 2\n", "t") == ["1"]
    with pytest.raises(AssertionError, match="states its output"):
        promised_output("print(1)\n", "t")


def test_readme_starts_with_the_two_commands():
    found = blocks(README.read_text())
    assert [language for language, _, _ in found[:2]] == ["bash", "bash"]
    assert [code.strip() for _, _, code in found[:2]] == [QUICKSTART_COMMAND, TEST_COMMAND]


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text) <= 10_000, len(text)
    # Every package has its row in the map.
    for package in (
        "funcmodels",
        "funcmodels.nn",
        "funcmodels.optim",
        "funcmodels.tree",
        "funcmodels.random",
        "funcmodels.checkpoint",
        "funcmodels.extend",
        "transforms",
        "transforms.sparse",
        "transforms.dp",
        "transforms.bridge",
        "transforms.moe",
        "transforms.early_exit",
        "transforms.distributed",
        "transforms.qat",
    ):
        assert re.search(rf"^\| `{re.escape(package)}` \|", text, flags=re.M), package


@pytest.mark.parametrize("page", [README, DOCS / "index.md"], ids=name)
def test_relative_links_resolve(page):
    # mkdocs checks the links between pages of the site; this checks the README's and
    # the links that leave the site for files of the repository.
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{name(page)}: broken link {target}"


API_PAGES = {
    "funcmodels": "funcmodels",
    "funcmodels.nn": "nn",
    "funcmodels.optim": "optim",
    "funcmodels.tree": "tree",
    "funcmodels.random": "random",
    "funcmodels.checkpoint": "checkpoint",
    "funcmodels.extend": "extend",
    "transforms.sparse": "sparse",
    "transforms.dp": "dp",
    "transforms.bridge": "bridge",
    "transforms.moe": "moe",
    "transforms.early_exit": "early-exit",
    "transforms.distributed": "distributed",
    "transforms.qat": "qat",
}


@pytest.mark.slow
def test_every_public_name_has_its_reference_entry(tmp_path):
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    import importlib
    import subprocess

    # Not --strict here: .ci/run builds strictly; this test is about coverage.
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    missing = []
    for module_name, page in API_PAGES.items():
        module = importlib.import_module(module_name)
        html = (tmp_path / "api" / page / "index.html").read_text()
        anchors = set(re.findall(r'id="([\w.]+)"', html))
        for public in getattr(module, "__all__", ()):
            if isinstance(getattr(module, public), types.ModuleType):
                continue  # subpackages have pages of their own
            if f"{module_name}.{public}" not in anchors:
                missing.append(f"{module_name}.{public}")
    # The names transforms re-exports link to their entries on the subpackages' pages.
    import transforms

    html = (tmp_path / "api" / "transforms" / "index.html").read_text()
    for public in transforms.__all__:
        if not isinstance(getattr(transforms, public), types.ModuleType):
            if f">{public}</code></a>" not in html:
                missing.append(f"transforms.{public}")
    assert not missing, missing
    # The layer specs show the constructor torch_signature gives them (docs/_ext), in
    # torch's order, and the docstrings' Sphinx roles are printed as code.
    text = re.sub(r"<[^>]+>", "", (tmp_path / "api" / "nn" / "index.html").read_text())
    assert "Linear(in_features: int | None = None, out_features: int, bias: bool = True)" in (
        text.replace("&gt;", ">")
    )
    assert ":class:" not in text
