"""The docs' generated blocks: every number a page quotes from a run sits between

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

and is rendered here from a kept run (``docs/runs/<name>.json``, made by ``experiments/docs_runs.py``) or from the
shipped cards. ``python experiments/tables.py --docs`` rewrites every block; ``tests/test_docs_numbers.py`` checks
that each page shows what its sources hold and that no table outside a block quotes a run's numbers by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "runs"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)
SHIPPED = ("lipsim-nano-aoc", "lipsim-nano-cert", "lipsim-nano")
RADII = ("36/255", "72/255", "108/255")


def run(name: str) -> dict:
    return json.loads((RUNS / f"{name}.json").read_text())


def card(name: str) -> dict:
    return json.loads((ROOT / "robustsim" / "zoo" / name / "card.json").read_text())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def output(name: str) -> str:
    """A kept run as the reader would see it in a terminal: the command, then its stdout."""
    r = run(name)
    return f"```\n$ {r['command']}\n{r['stdout'].rstrip()}\n```\n"


def shipped_table() -> str:
    """The shipped metrics, float32 and float64 deployed, from their cards, with the baselines' clean accuracy."""
    lines = [
        "| metric on `mini:test` | deployed in | clean 2AFC | certified 36/255 | certified 72/255 | certified 108/255 "
        "| ms per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SHIPPED:
        c = card(name)
        for dtype, key, label in (("float32", "certified", f"**{name}**"), ("float64", "certified_float64", name)):
            cert = " | ".join(pct(c[key][r]) for r in RADII)
            lines.append(f"| {label} | {dtype} | {pct(c['clean'])} | {cert} | {c['ms_per_image'][dtype]:.2f} |")
    for base, score in card(SHIPPED[0])["baselines_clean"].items():
        lines.append(f"| {base} | float32 | {pct(score)} | - | - | - | |")
    note = card(SHIPPED[0])["ms_per_image_note"]
    return "\n".join(lines) + f"\n\nms per image: {note}; from each metric's `card.json`.\n"


def stitched(*names: str) -> Callable[[], str]:
    return lambda: "\n".join(output(n) for n in names)


BLOCKS: dict[str, Callable[[], str]] = {
    "shipped": shipped_table,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from its source."""

    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise KeyError(f"unknown generated block {name!r}")
        return m.group(1) + BLOCKS[name]() + m.group(4)

    return BLOCK.sub(one, text)


def write_pages() -> list[Path]:
    changed = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed
