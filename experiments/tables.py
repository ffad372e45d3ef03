"""Shared by the experiments: Markdown tables, and ``--check`` against the committed table."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    fmt = lambda c: f"{c:.1f}" if isinstance(c, float) else str(c)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_numbers(text: str) -> list[tuple[str, list[float]]]:
    """(row label, numbers) for every Markdown table body row (header and separator rows skipped)."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.strip().startswith("|") or set(line.replace("|", "").strip()) <= {"-", " ", ":"}:
            continue
        values = [float(m) for c in cells[1:] for m in NUMBER.findall(c)]
        if values or cells[0]:
            out.append((cells[0], values))
    return [row for row in out if row[1]]


def check_table(generated: str, committed: Path, tol: float, rel: float = 0.0) -> bool:
    """True when every number of ``generated`` is within ``tol + rel * |committed|`` of the committed
    table's; prints why not."""
    got, want = table_numbers(generated), table_numbers(committed.read_text())
    if [r[0] for r in got] != [r[0] for r in want] or [len(r[1]) for r in got] != [len(r[1]) for r in want]:
        print(f"check: table layout differs from {committed}", file=sys.stderr)
        return False
    bad = [
        (label, a, b)
        for (label, xs), (_, ys) in zip(got, want, strict=True)
        for a, b in zip(xs, ys, strict=True)
        if abs(a - b) > tol + rel * abs(b)
    ]
    for label, a, b in bad:
        print(f"check: {label}: {a} vs committed {b} (tolerance {tol} + {rel} relative)", file=sys.stderr)
    if not bad:
        print(f"check: every number matches {committed} within {tol} + {rel} x the number")
    return not bad
