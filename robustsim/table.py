"""Plain-text and Markdown tables for the CLI and reports."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False, left: bool = False
) -> str:
    """Align columns (numbers right, the first column left; ``left`` aligns every column left);
    ``markdown=True`` gives a GitHub table."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if markdown:
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(headers), sep, *map(line, cells)])
    line = lambda r: "  ".join(  # noqa: E731
        c.rjust(w) if i and not left else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    ).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


def _fmt(c: object) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 10 else f"{c:.1f}"
    return str(c)


def percent(x: float) -> float:
    """A fraction in %, rounded to 10 decimals: 0.55 gives 55.0, not 55.00000000000001 (rows() of reports)."""
    return round(100 * x, 10)


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' for None)."""
    return "-" if x is None else f"{100 * x:.1f}"
