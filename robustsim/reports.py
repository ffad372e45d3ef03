"""One writer for every report folder (audit, certify, retrieval, bench).

A report is a value with ``to_json()`` (strict JSON: the numbers), ``markdown()`` (the tables a person reads)
and ``figures()`` (file name -> matplotlib figure). :func:`write_report` writes ``report.json``,
``report.md`` and the figures into a folder, each atomically (a temporary file renamed into place), and
returns the paths written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Report(Protocol):
    def to_json(self) -> dict: ...

    def markdown(self) -> str: ...

    def figures(self) -> dict[str, Any]: ...


def write_report(report: Report, out: Path) -> list[Path]:
    """``report.json``, ``report.md`` and every figure of ``report`` in ``out`` (atomically, each)."""
    from robustsim.io import atomic_write, write_json
    from robustsim.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "report.json", report.to_json())]
    text = report.markdown()
    files.append(atomic_write(out / "report.md", lambda tmp: tmp.write_text(text)))
    for name, fig in report.figures().items():
        files.append(save_figure(fig, out / name))
    return files
