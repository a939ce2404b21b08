"""Docs are code: every ```python block in README.md and docs/*.md runs here, and
so do the ```bash blocks marked to run, so an example cannot drift from the API.

Each python example runs in its own copy of a directory holding `samples/` (the
repository's) where the README's Quickstart has run (`captions.csv`); each
marked bash block runs in a fresh directory holding `samples/`.
Markers, on the line just above a fence:

    <!-- docs-test: skip (why) -->   never run this block (say why)
    <!-- docs-test: run -->          run this ```bash block's `capbatch ...` lines
                                     (other lines, e.g. pip, are not run)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|run)\b(.*?)-->")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "skip" | "run" | None
    why: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def doc_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = _MARKER.search(lines[index - 1]) if index else None
        blocks.append(
            Block(
                doc=path,
                line=index + 1,
                lang=opening.group(1),
                code="\n".join(lines[index + 1 : end]) + "\n",
                marker=marker.group(1) if marker else None,
                why=marker.group(2).strip() if marker else "",
            )
        )
        index = end + 1
    return blocks


BLOCKS = [block for doc in DOCS for block in doc_blocks(doc)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang == "bash" and b.marker == "run"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The capbatch entry point of this interpreter's environment first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def run_shell_block(block: Block, cwd: Path) -> None:
    for line in block.code.splitlines():
        if not line.startswith("capbatch "):
            continue
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{block.id}: {line}\n{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory with samples/ where the README's Quickstart has run."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "samples", root / "samples")
    quickstart = [b for b in SHELL if b.doc.name == "README.md"]
    assert quickstart, "the README's Quickstart block is marked <!-- docs-test: run -->"
    run_shell_block(quickstart[0], root)
    return root


def test_markers_are_on_known_blocks_and_skips_say_why():
    for block in BLOCKS:
        if block.marker == "skip":
            assert block.why, f"{block.id}: say why a block must not run"
        if block.marker == "run":
            assert block.lang == "bash", f"{block.id}: python blocks always run"
    assert len(PYTHON) >= 4  # the parser still finds the blocks


def test_quickstart_output_shown_in_the_readme_is_what_the_run_writes(workspace):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = readme.split("writes `captions.csv`:", 1)[1].split("```", 2)[1].strip().splitlines()
    written = (workspace / "captions.csv").read_text(encoding="utf-8").splitlines()
    shown = [line for line in shown if line != "..."]
    assert written[: len(shown)] == shown


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block, workspace, tmp_path, monkeypatch, capsys):
    if block.marker == "skip":
        pytest.skip(block.why)
    if "capbatch.training" in block.code:
        pytest.importorskip("torch")
    here = tmp_path / "docs"
    shutil.copytree(workspace, here)  # a copy: one example's files never reach another's
    monkeypatch.chdir(here)
    code = compile(block.code, str(block.doc), "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102 - running the docs is the point


LATER_SHELL = [b for b in SHELL if b.doc.name != "README.md"]  # the Quickstart ran already


@pytest.mark.parametrize("block", LATER_SHELL, ids=[b.id for b in LATER_SHELL])
def test_marked_shell_block_runs(block, tmp_path):
    """Each in a fresh directory with samples/: a block's outputs must not collide
    with the Quickstart's (the refusal to overwrite is itself documented)."""
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    run_shell_block(block, tmp_path)
