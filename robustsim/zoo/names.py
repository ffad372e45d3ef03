"""The zoo's names without building (or importing) any metric: the built-in rows', the shipped folders', and
the one-line error for a name that is none of them (with the closest names). The CLI checks ``--metric``
here before torch is imported; :func:`robustsim.zoo.load_metric` raises the same error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from robustsim.checks import existing_path
from robustsim.errors import RobustsimError


def shipped_checkpoints() -> list[Path]:
    """Checkpoint folders that ship inside the package (``robustsim/zoo/<name>/``)."""
    zoo = Path(__file__).resolve().parent
    return sorted(p for p in zoo.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file())


def builtin_names() -> list[str]:
    """The names of the built-in rows and shipped folders (what ``load_metric`` knows before any
    ``register_metric``)."""
    from robustsim.zoo.rows import BUILTIN

    return sorted({e.name for e in BUILTIN} | {p.name for p in shipped_checkpoints()})


def unknown_metric(key: str, known: Iterable[str], paths: bool = True, ensemble: str | None = None) -> RobustsimError:
    """The error for a metric ``key`` that is not among ``known`` (``paths``: nor an existing path; ``ensemble``:
    the ``a+b`` name it is a member of)."""
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `robustsim metrics` to list them"
    what = f" in the ensemble {ensemble!r}" if ensemble else " (not a zoo name nor an existing path)" if paths else ""
    return RobustsimError(f"unknown metric {key!r}{what}; {hint}")


def check_metric_name(key: str) -> None:
    """Raise :func:`unknown_metric`'s error unless ``key`` is one of :func:`builtin_names`, an ``a+b`` ensemble of
    them, or an existing path."""
    names = set(builtin_names())
    if key in names or ("+" in key and all(p in names for p in key.split("+"))):
        return
    if existing_path(key) is not None:
        return
    parts = key.split("+")
    if len(parts) > 1 and all(parts):
        bad = next(p for p in parts if p not in names)
        raise unknown_metric(bad, sorted(names), ensemble=key)
    raise unknown_metric(key, sorted(names))
