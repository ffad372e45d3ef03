"""Every number the docs quote from a run is generated from that run: the pages' generated blocks
(experiments/docs_blocks.py) equal what the kept runs (docs/runs/*.json, experiments/docs_runs.py) and the shipped
cards hold; no table or terminal output outside a block quotes a run's numbers by hand; and the cheap runs, run
again here, print the numbers kept."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from docs_blocks import BLOCK, BLOCKS, PAGES, render  # noqa: E402
from docs_runs import RUNS  # noqa: E402

DECIMAL = re.compile(r"(?<![\w.-])\d+\.\d+(?![\w.])")
PUBLISHED = "<!-- published figures -->"  # a table of the papers' numbers (science.md), not of a run


def _outside_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside the generated blocks."""
    spans = [(m.start(), m.end()) for m in BLOCK.finditer(text)]
    out, at = [], 0
    for no, line in enumerate(text.splitlines(keepends=True), 1):
        if not any(a <= at < b for a, b in spans):
            out.append((no, line.rstrip("\n")))
        at += len(line)
    return out


def hand_written_numbers(page: Path) -> list[str]:
    """Table rows and terminal output lines outside generated blocks that quote several decimals (a run's results
    by hand; a single setting such as ``margin 0.5`` is not one)."""
    if page.name == "results.md":  # generated whole by experiments/tables.py --docs (tests/test_experiments.py)
        return []
    found, in_fence, published = [], False, False
    for no, line in _outside_blocks(page.read_text()):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if line.strip() == PUBLISHED:
            published = True
            continue
        if not line.strip():
            published = False
        command = line.lstrip().startswith(("robustsim ", "torchrun", "$ ", "make ", "#"))
        quoting = (in_fence and not command and "=" not in line) or (line.startswith("|") and not published)
        if quoting and len(DECIMAL.findall(line)) >= 2 and not in_python(page, no):  # results come in rows
            found.append(f"{page.relative_to(ROOT)}:{no}: {line.strip()[:90]}")
    return found


def in_python(page: Path, no: int) -> bool:
    """Whether line ``no`` sits in a ```python block (code, not a run's output)."""
    fence = None
    for i, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        if i == no:
            return fence == "python"
    return False


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_generated_block_shows_what_its_run_holds(page):
    text = page.read_text()
    assert render(text) == text, f"{page.name}: run `python experiments/tables.py --docs` and commit the result"


def test_every_block_a_page_names_exists_and_every_block_is_shown():
    named = {m.group(2) for page in PAGES for m in BLOCK.finditer(page.read_text())}
    assert named == set(BLOCKS), named ^ set(BLOCKS)
    kept = {p.stem for p in (ROOT / "docs" / "runs").glob("*.json")}
    assert kept == set(RUNS), kept ^ set(RUNS)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_run_number_is_written_by_hand(page):
    assert hand_written_numbers(page) == []


CHEAP = [name for name, run in RUNS.items() if run.cheap]


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP)
def test_a_cheap_run_prints_the_numbers_kept_for_the_docs(name, tmp_path):
    """The kept run, run again: the same numbers in its output (timings aside)."""
    kept = json.loads((ROOT / "docs" / "runs" / f"{name}.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "robustsim", *RUNS[name].argv], cwd=tmp_path, capture_output=True, text=True, check=True
    )

    def numbers(text: str) -> list[str]:
        lines = [ln for ln in text.splitlines() if not re.search(r"\d+(\.\d+)?s\b|seconds|wrote ", ln)]
        return DECIMAL.findall("\n".join(lines))

    assert numbers(done.stdout) == numbers(kept["stdout"])
