"""The weights manager: one manifest of weight files (data, ``manifest.json``), where they live, how their
bytes are verified, and the only code in robustsim that downloads anything.

A file is usable when it is on disk and its hash matches its pin (:class:`WeightFile`): the full sha256
the upstream publishes, the hash prefix of torchvision's file names, the git blob id of a file committed to a
repository (the commit's tree publishes it: the URL names the commit), or, where the upstream publishes
none, the sha256 recorded at the first verified download (``pins.json`` in the weights folder). Files live
in :func:`weights_dir` (``$ROBUSTSIM_WEIGHTS``, else ``$XDG_CACHE_HOME/robustsim/weights``); files that
torchvision or piq also load (``torch_hub``) live in torch's hub cache (``$TORCH_HOME/hub/checkpoints``)
and are found in either place. A missing file is fetched on first use with a progress bar unless
``ROBUSTSIM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``); then the error names the file and both the
``robustsim weights fetch`` and ``robustsim weights add`` commands. ``ROBUSTSIM_WEIGHTS_URL`` replaces every
upstream location by ``<url>/<file name>`` (a mirror, or a local test server).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from robustsim.cache import file_sha256
from robustsim.checks import user_path
from robustsim.errors import OutputError, WeightsError
from robustsim.io import atomic_write, inside, parse_json, read_inside, write_json

PINS = ("sha256", "sha256-prefix", "git-blob", "first-download")
UNPACK_FACTOR = 20  # a release zip of weights barely compresses; more is a zip bomb


@dataclass(frozen=True)
class WeightFile:
    """One weight file of the manifest."""

    name: str
    urls: tuple[str, ...]
    size: int | None
    pin: str
    sha256: str | None
    license: str
    source: str
    torch_hub: bool = False
    unpack: bool = False
    max_size: int | None = None  # bytes a download may have when its size is unknown (default DEFAULT_CAP)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for key, kinds in _FIELD_TYPES.items():
            value = getattr(self, key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise ValueError(f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.40}")
        if any(not isinstance(u, str) for u in self.urls):
            raise ValueError("field 'urls' must be a list of strings")
        for key in ("size", "max_size"):
            if (getattr(self, key) or 0) < 0:
                raise ValueError(f"field {key!r} must be >= 0")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{6,64}", self.sha256):
            raise ValueError(f"field 'sha256' must be lower-case hex, got {self.sha256!r:.40}")
        if not plain_file_name(self.name):
            raise ValueError(f"record name {self.name!r} is not a plain file name (no folders, no leading dot)")
        if self.pin not in PINS:
            raise ValueError(f"{self.name}: pin must be one of {PINS}, got {self.pin!r}")
        if self.pin != "first-download" and not self.sha256:
            raise ValueError(f"{self.name}: a {self.pin} pin needs its sha256")


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "urls": (tuple,),
    "size": (int, type(None)),
    "pin": (str,),
    "sha256": (str, type(None)),
    "license": (str,),
    "source": (str,),
    "torch_hub": (bool,),
    "unpack": (bool,),
    "max_size": (int, type(None)),
}


def plain_file_name(name: object) -> bool:
    """A name that stays inside its folder: one path component, not hidden, no separators or NUL."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0:")
        and Path(name).name == name
    )


def weights_dir() -> Path:
    """``$ROBUSTSIM_WEIGHTS``, else ``$XDG_CACHE_HOME/robustsim/weights`` (~/.cache/robustsim/weights)."""
    env = os.environ.get("ROBUSTSIM_WEIGHTS")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(cache) / "robustsim" / "weights"


def torch_hub_dir() -> Path:
    """Where torchvision caches checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("ROBUSTSIM_OFFLINE", "HF_HUB_OFFLINE")
    )


def _records(data: object) -> dict[str, WeightFile]:
    """The manifest's records, each checked field by field (a wrong type or range refuses the manifest in one line)."""
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise WeightsError("a manifest is {\"files\": [records]}; the manifest is refused")
    out = {}
    for rec in files:
        if not isinstance(rec, dict):
            raise WeightsError(f"manifest record {rec!r:.40} is not an object; the manifest is refused")
        known = {k: rec[k] for k in WeightFile.__dataclass_fields__ if k in rec and k != "extra"}
        if isinstance(known.get("urls", ()), list):
            known["urls"] = tuple(known.get("urls", ()))
        try:
            made = WeightFile(**known)
        except (TypeError, ValueError) as err:
            raise WeightsError(f"manifest record {rec.get('name')!r:.60}: {err}; the manifest is refused") from None
        out[made.name] = made
    return out


def manifest() -> dict[str, WeightFile]:
    """Every weight file the zoo knows, by file name: the packaged ``manifest.json``, with the records of
    ``$ROBUSTSIM_WEIGHTS_MANIFEST`` (a file in the same format: a mirror's or a test's) added or replacing."""
    return _manifest(os.environ.get("ROBUSTSIM_WEIGHTS_MANIFEST", ""))


@lru_cache(maxsize=4)
def _manifest(extra: str) -> dict[str, WeightFile]:
    text = resources.files("robustsim.weights").joinpath("manifest.json").read_text()
    records = _records(json.loads(text))
    if extra:
        try:
            records.update(_records(json.loads(Path(extra).read_text())))
        except WeightsError as err:
            raise WeightsError(f"ROBUSTSIM_WEIGHTS_MANIFEST={extra}: {err}") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"ROBUSTSIM_WEIGHTS_MANIFEST={extra} is not a readable manifest ({err})") from None
    return records


def record(name: str) -> WeightFile:
    try:
        return manifest()[name]
    except KeyError:
        raise WeightsError(f"unknown weight file {name!r}; `robustsim weights list` shows the manifest") from None


# pins recorded at first download ----------------------------------------------------------------


def _pins_path() -> Path:
    return weights_dir() / "pins.json"


def recorded_pins() -> dict[str, dict]:
    """The pins recorded at first downloads: ``pins.json`` in the weights folder, read as state (never through a
    link, a regular file of bounded size) and checked entry by entry; one that is not a pins file is refused in one
    line (resetting it would silently trust the next download of every file it pins)."""
    try:
        raw = read_inside(weights_dir(), _pins_path(), limit=1 << 20)
    except OutputError as err:
        raise WeightsError(f"{err} (the weights folder's pins)") from None
    if raw is None:
        return {}
    try:
        data = parse_json(raw, _pins_path())
    except ValueError as err:
        raise WeightsError(f"{err}; restore it, or delete it to pin every first-download file afresh") from None
    problem = _pins_problem(data)
    if problem is not None:
        raise WeightsError(f"{_pins_path()} {problem}; restore it, or delete it to pin every such file afresh")
    return data


def _pins_problem(data: object) -> str | None:
    """Why ``data`` is not a pins file: {name: {"sha256": 64 hex, "size": int >= 0, "revision"?: str}}."""
    if not isinstance(data, dict):
        return "is not an object of pins"
    for name, pin in data.items():
        if not isinstance(pin, dict) or set(pin) - {"sha256", "size", "revision"}:
            return f"holds an entry {name!r:.40} that is not a pin"
        if not (isinstance(pin.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{40,64}", pin["sha256"])):
            return f"holds a pin for {name!r:.40} without a hex sha256"
        size = pin.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"holds a pin for {name!r:.40} whose size is not a byte count"
        if not isinstance(pin.get("revision", ""), str):
            return f"holds a pin for {name!r:.40} whose revision is not text"
    return None


def _write_pins(pins: dict) -> None:
    """``pins.json`` rewritten atomically inside the weights folder (a link planted there is refused)."""
    weights_dir().mkdir(parents=True, exist_ok=True)
    write_json(_pins_path(), dict(sorted(pins.items())), within=weights_dir())


def _record_pin(rec: WeightFile, sha: str, size: int, revision: str | None = None) -> None:
    with weights_lock():
        pins = recorded_pins()
        pins[rec.name] = {"sha256": sha, "size": size, **({"revision": revision} if revision else {})}
        _write_pins(pins)


@contextlib.contextmanager
def weights_lock():
    """The weights folder's lock, held while a pin or an installed file changes (``add``, a fetch's install,
    ``--repin``): a kernel lock (``flock`` on ``.locks/weights.lock``, never through a link) a second process waits
    for, so two writers never both install one name or lose each other's pins. Reentrant within a process."""
    global _LOCK_DEPTH
    if _LOCK_DEPTH:
        _LOCK_DEPTH += 1
        try:
            yield
        finally:
            _LOCK_DEPTH -= 1
        return
    folder = weights_dir() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    inside(weights_dir(), folder, folder=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(folder / "weights.lock", flags, 0o600)
    except OSError as err:
        raise WeightsError(f"cannot lock {folder / 'weights.lock'} ({err.strerror}); remove it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WeightsError(f"{folder / 'weights.lock'} is not a regular file; remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        _LOCK_DEPTH = 1
        try:
            yield
        finally:
            _LOCK_DEPTH = 0
    finally:
        os.close(fd)


_LOCK_DEPTH = 0


def expected_sha(rec: WeightFile) -> str | None:
    """The hash (or hash prefix) a file must have: the manifest's, or the one recorded at first download."""
    if rec.pin != "first-download":
        return rec.sha256
    return recorded_pins().get(rec.name, {}).get("sha256")


def html_problem(path: Path) -> str | None:
    """A reason when the file is an HTML page (a login, error or confirmation page saved as a checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "it is an HTML page, not a weight file (a login or confirmation page?); download it in a browser"
    return None


def git_blob_id(path: Path) -> str:
    """The id git gives the file's bytes: sha1 of ``b"blob <size>\\0"`` + content (what a commit's tree names)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digest(rec: WeightFile, path: Path) -> str:
    """The hash ``rec``'s pin compares: the git blob id for a ``git-blob`` pin, else the sha256."""
    return git_blob_id(path) if rec.pin == "git-blob" else file_sha256(path)


def check_bytes(rec: WeightFile, path: Path, sha: str | None = None) -> str | None:
    """Why ``path`` is not ``rec``'s file (None when its size and hash match the pin); ``sha`` is the file's
    :func:`digest` when already known. The hash decides: a size differing from the manifest's is reported
    only for a file whose hash does not match either."""
    sha = sha or digest(rec, path)
    want = expected_sha(rec)
    if want is not None:
        if sha.startswith(want):
            return None
        kind = "recorded at its first download" if rec.pin == "first-download" else "pinned"
        if rec.pin == "first-download":
            kind += f" (if that download was wrong: `robustsim weights fetch --repin {rec.name}`)"
        what = "git blob id" if rec.pin == "git-blob" else "sha256"
        size = path.stat().st_size
        want_size = rec.size if rec.size is not None else recorded_pins().get(rec.name, {}).get("size")
        also = f", and it has {size} bytes where {rec.name} has {want_size}" if want_size not in (None, size) else ""
        return f"its {what} {sha[:16]}... differs from the {kind} {want[:16]}...{also}"
    return None


# where a file is ---------------------------------------------------------------------------------


def install_path(rec: WeightFile) -> Path:
    """Where a fetched or added file is written: always the configured weights folder."""
    return weights_dir() / rec.name


def candidates(rec: WeightFile) -> list[Path]:
    """Where a file may be found: the weights folder; for a file whose upstream publishes its hash, also torch's hub
    cache (torchvision may have fetched it), where its pin still decides. A file pinned at its first download is
    trusted only in robustsim's own folder."""
    mine = [weights_dir() / rec.name]
    return mine if rec.pin == "first-download" else [*mine, torch_hub_dir() / rec.name]


def on_disk(rec: WeightFile) -> Path | None:
    """The first existing copy of the file (not verified)."""
    return next((p for p in candidates(rec) if p.is_file()), None)


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def verified(rec: WeightFile, path: Path) -> bool:
    """True when ``path`` holds ``rec``'s bytes (hashed once per size and mtime, then stamped)."""
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        got_key, sha = (read_inside(path.parent, _stamp(path), limit=256) or b"").decode().split()
    except (OSError, ValueError):  # OutputError (a link, a FIFO) too: the file is hashed again
        got_key, sha = "", ""
    if got_key != key:
        sha = digest(rec, path)
    problem = check_bytes(rec, path, sha)
    if problem is None and got_key != key:
        _write_stamp(path, sha)
    return problem is None


def _write_stamp(path: Path, sha: str) -> None:
    """``path``'s stamp (size, mtime, hash) beside it, atomically and never through a link; a folder that cannot
    hold it (read-only) only costs a hash at the next load."""
    st = path.stat()
    with contextlib.suppress(OSError, OutputError):  # OutputError: a link planted as the stamp, left alone
        atomic_write(_stamp(path), lambda tmp: tmp.write_text(f"{st.st_size}:{st.st_mtime_ns} {sha}"), path.parent)


def state(rec: WeightFile) -> str:
    """``fetched`` (verified on disk), ``not downloaded`` (not on disk; a download location is known, reachable or
    not), ``missing`` (offline or no known location: ``robustsim weights add``), or ``corrupt`` (on disk, failing
    its pin)."""
    path = on_disk(rec)
    if path is not None:
        return "fetched" if verified(rec, path) else "corrupt"
    return "not downloaded" if rec.urls and not offline() else "missing"


def resolve(name: str, fetch: bool = True, progress: bool = True) -> Path:
    """The verified path of weight file ``name``, fetching it first when missing (unless offline);
    an unpacked archive resolves to its folder. WeightsError naming both ways to provide it otherwise."""
    rec = record(name)
    path = on_disk(rec)
    if path is not None:
        if rec.pin == "first-download" and expected_sha(rec) is None:  # first sight of a hand-placed file
            _record_pin(rec, file_sha256(path), path.stat().st_size)
        if not verified(rec, path):
            raise WeightsError(
                f"{path} is not {rec.name} ({check_bytes(rec, path)}); delete it and run `robustsim weights fetch "
                f"{rec.name}`, or install a good copy with `robustsim weights add {rec.name} FILE`"
            )
    elif not fetch or offline() or not rec.urls:
        why = "offline (ROBUSTSIM_OFFLINE / HF_HUB_OFFLINE)" if offline() else "no download location is known"
        if rec.urls and not offline() and not fetch:
            why = "not on disk"
        raise WeightsError(
            f"{rec.name} is missing and robustsim is {why}; fetch it with `robustsim weights fetch {rec.name}` "
            f"(online) or install a copy you have with `robustsim weights add {rec.name} FILE`"
        )
    else:
        path = fetch_file(rec, progress=progress)
    return unpacked(rec, path) if rec.unpack else path


def fetch_file(rec: WeightFile, progress: bool = True, repin: bool = False) -> Path:
    """Download ``rec`` (resuming a partial download), verify it and install it atomically. ``repin`` (a
    first-download file only): the new download's hash replaces the recorded pin; the copy on disk and its pin stay
    until the new bytes are downloaded and checked (offline, or a failed download, changes nothing)."""
    from robustsim.weights.download import DEFAULT_CAP, download

    if offline():
        raise WeightsError(
            f"{rec.name}: robustsim is offline (ROBUSTSIM_OFFLINE / HF_HUB_OFFLINE); unset it to fetch, "
            f"or install a copy with `robustsim weights add {rec.name} FILE`; nothing was changed"
        )
    if not rec.urls:
        raise WeightsError(f"{rec.name}: no download location is known ({rec.source}); use `robustsim weights add`")
    repin = repin and rec.pin == "first-download"
    expected_sha(rec)  # an unusable pins file is refused before anything is downloaded
    dest = install_path(rec)
    if os.path.lexists(dest) and not dest.is_file():
        raise WeightsError(f"{dest} exists and is not a file (a folder or a link?); remove it, then fetch again")
    base = os.environ.get("ROBUSTSIM_WEIGHTS_URL", "").rstrip("/")
    urls = [f"{base}/{rec.name}"] if base else [pinned_url(rec, u) for u in rec.urls]
    if repin:  # the recorded commit may be the wrong one: ask for what the repository serves now
        urls = [u if base else pinned_url(rec, u, None) for u in (urls if base else rec.urls)]
    seen: dict = {}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(dest):  # a second process fetching the same file waits, then finds it installed
            if not repin and dest.is_file() and verified(rec, dest):
                return dest
            part = download(
                urls, dest, rec.size, progress=progress, label=rec.name, seen=seen, cap=rec.max_size or DEFAULT_CAP
            )
            return _install(rec, part, dest, source="download", revision=seen.get("revision"), repin=repin)
    except WeightsError as err:
        raise WeightsError(_name_the_fix(str(err), rec.name)) from None
    except OSError as err:
        raise _unwritable(rec, dest.parent, err) from None


def _name_the_fix(message: str, name: str) -> str:
    """``message`` with every bare ``robustsim weights add`` naming the file to install, and the command
    appended where the message names none."""
    add = f"`robustsim weights add {name} FILE`"
    if "weights add" not in message:
        return f"{message} (or install a copy you have with {add})"
    return re.sub(r"`robustsim weights add`", add, message)


def _unwritable(rec: WeightFile, folder: Path, err: OSError) -> WeightsError:
    return WeightsError(
        f"{rec.name}: cannot write {folder} ({err.strerror or err}); set ROBUSTSIM_WEIGHTS to a folder you can write"
    )


@contextlib.contextmanager
def _file_lock(dest: Path):
    """An exclusive lock on ``.locks/<name>.lock`` in ``dest``'s folder (flock: released when the process dies), so
    one file is downloaded by one process at a time."""
    lock = dest.parent / ".locks" / f"{dest.name}.lock"
    lock.parent.mkdir(exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WeightsError(f"{lock} is not a regular file; remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pinned_url(rec: WeightFile, url: str, revision: str | None | bool = True) -> str:
    """``url`` at the commit recorded with a first-download pin: a Hugging Face ``resolve/main`` URL moves with
    the repository, so once the first download has recorded the commit it resolved to (``X-Repo-Commit``), every
    later download asks for that commit, whose bytes the pin holds. ``revision=None``: the URL as the manifest has
    it (a repin)."""
    if revision is True:
        revision = recorded_pins().get(rec.name, {}).get("revision") if rec.pin == "first-download" else None
    return url.replace("/resolve/main/", f"/resolve/{revision}/") if revision else url


def add_file(name: str, source: str | os.PathLike, trust: bool = False) -> Path:
    """Verify a file obtained elsewhere against ``name``'s pin and install it into the weights folder (a copy;
    atomic). A file whose upstream publishes no hash and that was never downloaded here has no pin to check: it is
    refused before anything is installed, unless ``trust`` (the caller vouches for the bytes; their hash becomes the
    pin)."""
    rec = record(name)
    src = user_path(source, "FILE")
    if not src.is_file():
        raise WeightsError(f"{src} is not a file; pass the downloaded {rec.name}")
    if expected_sha(rec) is None and not trust:
        raise WeightsError(
            f"{rec.name} has no published hash and was never downloaded here, so robustsim cannot check {src}; "
            f"fetch it (`robustsim weights fetch {rec.name}` records the first verified download's hash), or vouch "
            f"for the file with `robustsim weights add {rec.name} FILE --trust`; nothing was installed"
        )
    dest = install_path(rec)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{rec.name}.", suffix=".add", dir=dest.parent)
        os.close(fd)
    except OSError as err:
        raise _unwritable(rec, dest.parent, err) from None
    try:
        shutil.copyfile(src, tmp)
        return _install(rec, Path(tmp), dest, source=str(src))
    except WeightsError:
        raise
    except OSError as err:
        raise WeightsError(f"{rec.name}: cannot install into {dest.parent} ({err.strerror or err})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _install(
    rec: WeightFile, tmp: Path, dest: Path, source: str, revision: str | None = None, repin: bool = False
) -> Path:
    """Check ``tmp``'s bytes against the pin (recording a first-download pin; ``repin``: replacing it), then rename
    onto ``dest``, all under :func:`weights_lock` (a second writer of the name then checks against this pin); a
    file that fails is deleted, never installed."""
    sha = digest(rec, tmp)
    with weights_lock():
        problem = html_problem(tmp) or (None if repin else check_bytes(rec, tmp, sha))
        if problem is not None:
            tmp.unlink(missing_ok=True)
            raise WeightsError(f"{source} is not {rec.name}: {problem}; nothing was installed")
        if rec.pin == "first-download" and (repin or expected_sha(rec) is None):
            _record_pin(rec, sha, tmp.stat().st_size, revision)
        os.replace(tmp, dest)
        _write_stamp(dest, sha)
    return dest


def unpacked(rec: WeightFile, archive: Path) -> Path:
    """The folder a verified zip archive unpacks into (beside it), made once and atomically."""
    folder = archive.with_name(archive.name.removesuffix(".zip"))
    marker = folder / ".robustsim-unpacked"
    if marker.is_file() and marker.read_text() == archive.name:
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=archive.parent))
    try:
        with zipfile.ZipFile(archive) as z:
            unpacked_size = sum(info.file_size for info in z.infolist())
            limit = max(UNPACK_FACTOR * archive.stat().st_size, 1 << 20)
            if unpacked_size > limit:
                raise WeightsError(
                    f"{archive}: unpacks to {unpacked_size} bytes, over {UNPACK_FACTOR}x its size; not unpacked"
                )
            for member in z.namelist():  # refuse paths that leave the folder
                target = (tmp / member).resolve()
                if tmp.resolve() not in target.parents and target != tmp.resolve():
                    raise WeightsError(f"{archive}: member {member!r} points outside the archive; not unpacked")
            z.extractall(tmp)
        (tmp / ".robustsim-unpacked").write_text(archive.name)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except zipfile.BadZipFile as err:
        raise WeightsError(f"{archive} is not a readable zip ({err}); fetch it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def verify_all() -> list[tuple[str, str]]:
    """(file, result) for every manifest file on disk: re-hashed now (stamps ignored)."""
    out = []
    for rec in manifest().values():
        path = on_disk(rec)
        if path is None:
            continue
        _stamp(path).unlink(missing_ok=True)
        problem = check_bytes(rec, path)
        out.append((rec.name, "ok" if problem is None else f"BAD: {problem}"))
    return out
