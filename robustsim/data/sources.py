"""On-disk 2AFC layouts (NIGHTS, BAPPS, CSV: docs/data.md) parsed into triplet records, every label validated.

A record is (ref_path, x0_path, x1_path, p) with p = fraction of humans who found x1 closer.
A bad row (p outside [0, 1], NaN, more right votes than votes, too few fields) is refused with its
file and line; ``limit`` stops reading once that many triplets are kept.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from robustsim.errors import DataError

NIGHTS_SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")
BAPPS_SPLITS = ("train", "val")
BAPPS_CATEGORIES = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
NIGHTS_COLUMNS = (
    "id",
    "left_vote",
    "right_vote",
    "votes",
    "ref_path",
    "left_path",
    "right_path",
    "split",
    "is_imagenet",
)


class Record(NamedTuple):
    ref: Path
    x0: Path
    x1: Path
    p: float
    group: str = ""


def read_csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) of a UTF-8 CSV lazily; a missing file, column or field is one DataError."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; point the spec at the dataset root")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in required if c not in cols]
            if missing:
                raise DataError(f"{path} lacks column(s) {', '.join(missing)}; expected columns {','.join(required)}")
            for row in reader:
                line = reader.line_num
                short = [c for c in required if row.get(c) is None]
                if short:
                    raise DataError(f"{path}:{line}: the row has too few fields (no {short[0]}); fix or remove it")
                yield line, {c: row[c].strip() for c in row if c is not None and isinstance(row[c], str)}
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV ({err}); fix the file") from None


def _float(value: str, path: Path, line: int, col: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: column {col} is {value!r}, not a number; fix the row") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{line}: column {col} is {value!r}; it must be a finite number")
    return v


def nights_label(left: float, right: float, votes: float, where: str) -> float:
    """p from a NIGHTS row: vote *counts* (left + right == votes) give right / votes, *fractions*
    (left + right == 1, each in [0, 1]) give right. Anything else is refused (negative counts, more
    right votes than votes, inconsistent columns), never guessed."""
    if min(left, right) < 0:
        raise DataError(f"{where}: negative vote (left_vote {left:g}, right_vote {right:g}); fix the row")
    if votes <= 0:
        raise DataError(f"{where}: votes is {votes:g}; it must be a positive count")
    if right > votes:
        raise DataError(f"{where}: right_vote {right:g} exceeds votes {votes:g}; fix the row")
    if abs(left + right - votes) < 1e-6 and votes > 1:
        return right / votes
    if abs(left + right - 1) < 1e-6 and right <= 1:
        return right
    raise DataError(
        f"{where}: left_vote {left:g} + right_vote {right:g} is neither votes ({votes:g}, counts) nor 1 "
        "(fractions); fix the row"
    )


def nights_records(root: Path, split: str = "test", limit: int | None = None) -> list[Record]:
    """NIGHTS: root/data.csv; rows with votes >= 6; p from the vote columns (:func:`nights_label`)."""
    if split not in NIGHTS_SPLITS:
        raise DataError(f"unknown NIGHTS split {split!r}; choose one of {', '.join(NIGHTS_SPLITS)}")
    path = root / "data.csv"
    base, _, imagenet = split.partition("_")
    out: list[Record] = []
    for line, row in read_csv_rows(path, NIGHTS_COLUMNS):
        votes = _float(row["votes"], path, line, "votes")
        if votes < 0:
            raise DataError(f"{path}:{line}: votes is {votes:g}; it must be a positive count")
        if votes < 6 or row["split"] != base:
            continue
        if imagenet:
            is_in = row["is_imagenet"].lower() in {"1", "true", "yes"}
            if is_in != (imagenet == "imagenet"):
                continue
        left = _float(row["left_vote"], path, line, "left_vote")
        right = _float(row["right_vote"], path, line, "right_vote")
        p = nights_label(left, right, votes, f"{path}:{line}")
        out.append(Record(root / row["ref_path"], root / row["left_path"], root / row["right_path"], p))
        if limit is not None and len(out) >= limit:
            break
    return out


def _judgement(path: Path) -> float:
    try:
        p = float(np.load(path, allow_pickle=False).reshape(-1)[0])
    except Exception as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}); replace the file") from err
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise DataError(f"{path}: judgement {p} is outside [0, 1] (fraction preferring p1); replace the file")
    return p


def bapps_records(
    root: Path, split: str = "val", categories: tuple[str, ...] | None = None, limit: int | None = None
) -> list[Record]:
    """BAPPS 2AFC: root/2afc/<split>/<category>/{ref,p0,p1,judge}; judge .npy = fraction preferring p1.

    ``categories=None`` takes every category folder present; named categories must exist.
    """
    if split not in BAPPS_SPLITS:
        raise DataError(f"unknown BAPPS split {split!r}; choose one of {', '.join(BAPPS_SPLITS)}")
    if categories is None:
        categories = tuple(c for c in BAPPS_CATEGORIES if (root / "2afc" / split / c).is_dir())
        if not categories:
            raise DataError(
                f"no BAPPS categories under {root / '2afc' / split}; expected folders like traditional/, cnn/"
            )
    bad = [c for c in categories if c not in BAPPS_CATEGORIES]
    if bad:
        raise DataError(f"unknown BAPPS category {bad[0]!r}; choose from {','.join(BAPPS_CATEGORIES)}")
    out: list[Record] = []
    for cat in categories:
        d = root / "2afc" / split / cat
        for sub in ("ref", "p0", "p1", "judge"):
            if not (d / sub).is_dir():
                raise DataError(
                    f"BAPPS folder {d / sub} does not exist; expected root/2afc/{split}/{cat}/ref|p0|p1|judge"
                )
        for ref in sorted((d / "ref").iterdir()):
            if ref.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            judge = d / "judge" / f"{ref.stem}.npy"
            if not judge.is_file():
                raise DataError(f"{judge} is missing for {ref}; every ref needs a judge .npy")
            out.append(Record(ref, d / "p0" / ref.name, d / "p1" / ref.name, _judgement(judge), cat))
            if limit is not None and len(out) >= limit:
                return out
    return out


def confined(base: Path, rel: str, where: str, allow_outside: bool) -> Path:
    """``base / rel``, refused when it resolves outside ``base`` (``..``, absolute paths, symlinks) unless
    ``allow_outside``."""
    path = base / rel
    if allow_outside:
        return path
    try:
        path.resolve().relative_to(base.resolve())
    except ValueError:
        raise DataError(
            f"{where}: {rel!r} points outside {base}; keep images under the CSV's folder or pass --allow-outside"
        ) from None
    return path


def csv_records(path: Path, limit: int | None = None, allow_outside: bool = False) -> list[Record]:
    """Generic CSV with columns ref,x0,x1,p (paths relative to the CSV file, confined to its folder)."""
    base = path.parent
    out: list[Record] = []
    for line, row in read_csv_rows(path, ("ref", "x0", "x1", "p")):
        where = f"{path}:{line}"
        p = _float(row["p"], path, line, "p")
        if not 0.0 <= p <= 1.0:
            raise DataError(f"{where}: p = {p} is outside [0, 1]; p is the fraction preferring x1")
        ref, x0, x1 = (confined(base, row[k], where, allow_outside) for k in ("ref", "x0", "x1"))
        out.append(Record(ref, x0, x1, p, row.get("group", "")))
        if limit is not None and len(out) >= limit:
            break
    return out
