"""One registry of data-spec parsers: ``kind[:rest]`` strings for 2AFC triplets, retrieval sets and images.

Every spec kind is a row: its parser and the usage text that error messages and ``--help`` show.
This module sits above the layouts (it imports them; none of them imports it), so ``mini``,
NIGHTS, BAPPS, CSV and the retrieval layouts never import each other to resolve a spec.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustsim.data import mini, mini_retrieval, sources
from robustsim.data.imageset import FolderImages, ImageSet, TripletImages
from robustsim.data.retrieval import RetrievalSet, open_plain, open_vsd
from robustsim.data.triplets import FileTriplets, TripletDataset
from robustsim.errors import DataError


@dataclass(frozen=True)
class Spec:
    """One spec kind: ``parse(rest, size, limit)`` builds the dataset; ``usage`` shows its form."""

    kind: str
    parse: Callable[..., object]
    usage: str
    needs_rest: bool = True


TRIPLET_SPECS: dict[str, Spec] = {}
RETRIEVAL_SPECS: dict[str, Spec] = {}


def register_triplet_spec(kind: str, parse: Callable[..., TripletDataset], usage: str, needs_rest: bool = True) -> None:
    """Add a 2AFC spec kind: ``parse(rest, size=, limit=, allow_outside=) -> TripletDataset``."""
    TRIPLET_SPECS[kind] = Spec(kind, parse, usage, needs_rest)


def register_retrieval_spec(kind: str, parse: Callable[..., RetrievalSet], usage: str, needs_rest: bool = True) -> None:
    """Add a retrieval spec kind: ``parse(rest, size) -> RetrievalSet``."""
    RETRIEVAL_SPECS[kind] = Spec(kind, parse, usage, needs_rest)


def triplet_usage() -> str:
    return ", ".join(s.usage for s in TRIPLET_SPECS.values())


def retrieval_usage() -> str:
    return ", ".join(s.usage for s in RETRIEVAL_SPECS.values())


CSV_EXAMPLE = "a CSV with header ref,x0,x1,p and lines like `ref.png,a.png,b.png,0.75` (csv:FILE)"


def _path(text: str, what: str = "data path") -> Path:
    """A path in a spec, as :func:`robustsim.checks.user_path` reads it (one DataError line when it cannot be one)."""
    from robustsim.checks import user_path
    from robustsim.errors import InputError

    try:
        return user_path(text, what)
    except InputError as err:
        raise DataError(str(err)) from None


def triplet_hint(spec: str) -> str:
    """What to type instead of a spec that is not one: the closest kind, or what a path on disk looks like."""
    try:
        path = _path(spec)
    except DataError as err:
        return str(err)
    if path.is_dir():
        if (path / "data.csv").is_file():
            return f"{path} looks like a NIGHTS root: use nights:{spec}"
        if (path / "2afc").is_dir():
            return f"{path} looks like a BAPPS root: use bapps:{spec}"
        images = any(p.suffix.lower() in sources.IMAGE_SUFFIXES for p in path.iterdir())
        what = "a folder of images" if images else "a folder"
        return f"{path} is {what}, not 2AFC triplets: triplets need {CSV_EXAMPLE}, or a NIGHTS / BAPPS root"
    if path.suffix.lower() == ".csv":
        return f"use csv:{spec}" if path.is_file() else f"{path} does not exist; triplets can be {CSV_EXAMPLE}"
    close = difflib.get_close_matches(spec.partition(":")[0], list(TRIPLET_SPECS), n=1)
    near = f"did you mean {close[0]}? " if close else ""
    return f"{near}use {triplet_usage()}"


def _split(spec: str, table: dict[str, Spec], usage: str, what: str) -> tuple[Spec, str]:
    kind, _, rest = spec.partition(":")
    entry = table.get(kind)
    if entry is None:
        if table is TRIPLET_SPECS:
            raise DataError(f"{spec!r} is not a {what} spec; {triplet_hint(spec)}")
        raise DataError(f"unknown {what} spec kind {kind!r} in {spec!r}; use {usage}")
    if entry.needs_rest and not rest:
        raise DataError(f"{what} spec {spec!r} needs a path; use {entry.usage}")
    return entry, rest


def open_triplets(
    spec: str, size: int | None = None, limit: int | None = None, allow_outside: bool = False
) -> TripletDataset:
    """Open a 2AFC dataset from a spec string; ``limit`` keeps the first N triplets (and stops reading
    annotation files there); ``allow_outside`` lets a CSV name images outside its folder.
    Raises DataError on a bad spec."""
    from robustsim.checks import count_arg, spec_arg

    spec_arg(spec, "data spec")
    count_arg(limit, "limit", allow_none=True)
    count_arg(size, "size", allow_none=True)
    entry, rest = _split(spec, TRIPLET_SPECS, triplet_usage(), "data")
    data = entry.parse(rest, size=size, limit=limit, allow_outside=allow_outside)
    assert isinstance(data, TripletDataset)
    return data.subset(limit) if limit is not None and limit < len(data) else data


def open_retrieval(spec: str, size: int | None = None) -> RetrievalSet:
    """Open a retrieval set from a spec; a bare folder is ``plain`` when it has positives.csv, else ``vsd``."""
    kind = spec.partition(":")[0]
    if kind not in RETRIEVAL_SPECS:
        root = _path(spec, "retrieval data")
        if not root.is_dir():
            raise DataError(f"retrieval data {spec!r}: {root} is not a folder; use {retrieval_usage()}")
        spec = f"{'plain' if (root / 'positives.csv').is_file() else 'vsd'}:{spec}"
    entry, rest = _split(spec, RETRIEVAL_SPECS, retrieval_usage(), "retrieval")
    data = entry.parse(rest, size)
    assert isinstance(data, RetrievalSet)
    return data


def open_images(spec: str, size: int) -> ImageSet:
    """Open an image folder, or the images (ref, x0, x1) of a 2AFC spec, at ``size`` x ``size``.
    ``mini`` alone means ``mini:train`` here (training images)."""
    path = _path(spec, "image folder") if spec else Path("")
    if spec and path.is_dir():
        return FolderImages(path, size)
    if ":" not in spec and ("/" in spec or spec.startswith(".")):
        raise DataError(f"image folder {path} does not exist; pass an existing folder or a 2AFC spec such as mini")
    if spec == "mini":
        spec = "mini:train"
    return TripletImages(open_triplets(spec, size=size), size)


def _root(rest: str) -> tuple[Path, list[str]]:
    parts = rest.split(":")
    return _path(parts[0]), parts[1:]


def _nights(rest: str, size: int | None, limit: int | None, **_: object) -> TripletDataset:
    root, parts = _root(rest)
    split = parts[0] if parts and parts[0] else "test"
    return FileTriplets(sources.nights_records(root, split, limit), f"nights:{split}", size, native_size=224)


def _bapps(rest: str, size: int | None, limit: int | None, **_: object) -> TripletDataset:
    root, parts = _root(rest)
    split = parts[0] if parts and parts[0] else "val"
    cats = tuple(parts[1].split(",")) if len(parts) > 1 and parts[1] else None
    return FileTriplets(sources.bapps_records(root, split, cats, limit), f"bapps:{split}", size, native_size=64)


def _csv(rest: str, size: int | None, limit: int | None, allow_outside: bool = False) -> TripletDataset:
    path = _path(rest, "csv:")
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"{path} {where}; csv: takes a file: {CSV_EXAMPLE}")
    return FileTriplets(sources.csv_records(path, limit, allow_outside), f"csv:{path.name}", size)


def _retrieval_root(rest: str, size: int | None, opener: Callable[[Path, int | None], RetrievalSet]) -> RetrievalSet:
    root = _path(rest, "retrieval data")
    if not root.is_dir():
        raise DataError(f"retrieval data {root} is not a folder; use {retrieval_usage()}")
    return opener(root, size)


register_triplet_spec("mini", lambda rest, size, **_: mini.mini_triplets(rest or "test", size), "mini[:split]", False)
register_triplet_spec("nights", _nights, "nights:PATH[:split]")
register_triplet_spec("bapps", _bapps, "bapps:PATH[:split[:cat,...]]")
register_triplet_spec("csv", _csv, "csv:FILE")
register_retrieval_spec("mini", lambda rest, size: mini_retrieval.mini_retrieval(size), "mini", False)
register_retrieval_spec(
    "vsd", lambda rest, size: _retrieval_root(rest, size, open_vsd), "vsd:ROOT (images/ + pairs.csv)"
)
register_retrieval_spec(
    "plain",
    lambda rest, size: _retrieval_root(rest, size, open_plain),
    "plain:ROOT (queries/, gallery/, positives.csv)",
)
