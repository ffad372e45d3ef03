"""On-disk 2AFC layouts (science.md section 2) parsed into triplet records.

A record is (ref_path, x0_path, x1_path, p) with p = fraction of humans who found x1 closer.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from robustsim.errors import DataError

NIGHTS_SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")
BAPPS_SPLITS = ("train", "val")
BAPPS_CATEGORIES = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class Record(NamedTuple):
    ref: Path
    x0: Path
    x1: Path
    p: float
    group: str = ""


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; point the spec at the dataset root")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in required if c not in cols]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)}; expected columns {','.join(required)}")
        return list(reader)


def _float(value: str, path: Path, line: int, col: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: column {col} is {value!r}, not a number; fix the row") from None


def nights_records(root: Path, split: str = "test") -> list[Record]:
    """NIGHTS: root/data.csv; rows with votes >= 6; p = right_vote (counts are divided by votes)."""
    if split not in NIGHTS_SPLITS:
        raise DataError(f"unknown NIGHTS split {split!r}; choose one of {', '.join(NIGHTS_SPLITS)}")
    path = root / "data.csv"
    rows = _read_csv(
        path, ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
    )
    base, _, imagenet = split.partition("_")
    out = []
    for i, row in enumerate(rows, start=2):
        votes = _float(row["votes"], path, i, "votes")
        if votes < 6 or row["split"] != base:
            continue
        if imagenet:
            is_in = row["is_imagenet"].strip().lower() in {"1", "true", "yes"}
            if is_in != (imagenet == "imagenet"):
                continue
        right = _float(row["right_vote"], path, i, "right_vote")
        p = right / votes if right > 1 else right
        out.append(Record(root / row["ref_path"], root / row["left_path"], root / row["right_path"], p))
    return out


def bapps_records(root: Path, split: str = "val", categories: tuple[str, ...] | None = None) -> list[Record]:
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
    out = []
    for cat in categories:
        d = root / "2afc" / split / cat
        if not d.is_dir():
            raise DataError(f"BAPPS folder {d} does not exist; expected root/2afc/{split}/{cat}/ref|p0|p1|judge")
        for ref in sorted((d / "ref").iterdir()):
            if ref.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            judge = d / "judge" / f"{ref.stem}.npy"
            if not judge.is_file():
                raise DataError(f"{judge} is missing for {ref}; every ref needs a judge .npy")
            try:
                p = float(np.load(judge).reshape(-1)[0])
            except Exception as err:
                raise DataError(f"cannot read {judge} ({type(err).__name__}); replace the file") from err
            out.append(Record(ref, d / "p0" / ref.name, d / "p1" / ref.name, p, cat))
    return out


def csv_records(path: Path) -> list[Record]:
    """Generic CSV with columns ref,x0,x1,p (paths relative to the CSV file)."""
    rows = _read_csv(path, ("ref", "x0", "x1", "p"))
    base = path.parent
    out = []
    for i, row in enumerate(rows, start=2):
        p = _float(row["p"], path, i, "p")
        if not 0.0 <= p <= 1.0:
            raise DataError(f"{path}:{i}: p = {p} is outside [0, 1]; p is the fraction preferring x1")
        out.append(Record(base / row["ref"], base / row["x0"], base / row["x1"], p, row.get("group", "")))
    return out
