"""robustsim's on-disk caches: one root folder, content-addressed entries, verified on every open.

A cached folder (``build_cached``) or file (``verified_file``) is trusted only while its bytes hash
to what was recorded when it was written. Re-hashing is skipped while a stamp beside the file says
that exact (size, mtime) was already verified, so opening a verified cache costs a ``stat``.
A folder that fails (edited, truncated, manifest missing) is rebuilt, with one line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from robustsim.errors import DataError

_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$ROBUSTSIM_CACHE``, else ``$XDG_CACHE_HOME/robustsim`` (default ``~/.cache/robustsim``)."""
    env = os.environ.get("ROBUSTSIM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "robustsim"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


HASHES_NAME = "content-hashes.json"


def content_digest(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of every file of ``paths`` in order (a missing one counts as missing): the identity of
    data that resume records, bench cells and caches are keyed by. A file's hash is reused while its device, inode,
    size, mtime *and ctime* are unchanged (the kernel sets ctime on every change of the file, and no call puts it
    back, so bytes replaced in place with the size and mtime restored are hashed again); the hashes are kept in
    ``cache_root()/content-hashes.json`` (read as state: no link, bounded, typed; unusable, it is rebuilt)."""
    known = _known_hashes()
    fresh: dict[str, list] = {}
    total = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            real = os.path.realpath(path)
        except OSError:
            total.update(f"{path}:missing\n".encode())
            continue
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = known.get(real)
        sha = entry[5] if entry is not None and entry[:5] == key else file_sha256(path)
        fresh[real] = [*key, sha]
        total.update(f"{sha}\n".encode())
    if any(known.get(k) != v for k, v in fresh.items()):
        _save_hashes({**known, **fresh})
    return total.hexdigest()


def _known_hashes() -> dict[str, list]:
    from robustsim.errors import OutputError
    from robustsim.io import parse_json, read_inside

    try:
        raw = read_inside(cache_root(), cache_root() / HASHES_NAME, limit=256 << 20)
        data = parse_json(raw, HASHES_NAME) if raw else {}
    except (OutputError, ValueError, OSError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, list)
        and len(v) == 6
        and all(isinstance(n, int) and not isinstance(n, bool) for n in v[:5])
        and isinstance(v[5], str)
        and len(v[5]) == 64
    }


def _save_hashes(hashes: dict[str, list]) -> None:
    """Best effort: a cache folder that cannot hold the file costs a hash of every file at the next run."""
    from robustsim.errors import OutputError
    from robustsim.io import write_json

    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        write_json(cache_root() / HASHES_NAME, hashes, within=cache_root())
    except (OSError, OutputError):
        pass


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def verified_file(path: str | os.PathLike, sha256: str) -> bool:
    """True when ``path`` exists and its bytes hash to ``sha256`` (re-hashed only when its size or
    mtime changed since the last successful check)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False
    key = f"{st.st_size}:{st.st_mtime_ns}:{sha256}"
    stamp = _stamp_path(path)
    try:
        if stamp.read_text() == key:
            return True
    except OSError:
        pass
    if file_sha256(path) != sha256:
        return False
    try:
        stamp.write_text(key)
    except OSError:  # a read-only cache still verifies, it just re-hashes next time
        pass
    return True


def _manifest_problem(root: Path, digest: str) -> str | None:
    """Why the folder ``root`` cannot be used (None when every file verifies)."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        return "manifest.json is missing"
    except (OSError, ValueError):
        return "manifest.json is unreadable"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("hash") != digest or not isinstance(files, dict) or not files:
        return "manifest.json does not describe this recipe"
    for name, sha in files.items():
        if not verified_file(root / name, str(sha)):
            return f"{name} does not match its recorded sha256"
    return None


def build_cached(prefix: str, digest: str, write: Callable[[Path], dict]) -> Path:
    """Folder ``cache_root()/{prefix}-{digest}``, filled once by ``write(tmp_dir) -> manifest``.

    The manifest records the sha256 of every file ``write`` left; each later open verifies them
    (cheaply, see :func:`verified_file`) and rebuilds a folder that fails. The folder appears
    atomically (built in a temporary folder, then renamed), so a crash or a concurrent builder never
    leaves a half-written set behind.
    """
    root = cache_root() / f"{prefix}-{digest}"
    if root.exists():
        problem = _manifest_problem(root, digest)
        if problem is None:
            return root
        print(f"robustsim: cache {root} failed verification ({problem}); rebuilding it", file=sys.stderr)
        _discard(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=root.parent))
    except OSError as err:
        raise DataError(
            f"cannot write the cache folder {root.parent} ({err.strerror}); set ROBUSTSIM_CACHE to a writable folder"
        ) from None
    print(f"robustsim: building {prefix} in {root} (once; later runs reuse it)", file=sys.stderr)
    try:
        manifest = write(tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"hash": digest, **manifest, "files": files}, indent=1))
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if _manifest_problem(root, digest) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _discard(root: Path) -> None:
    """Move a bad cache folder out of the way (rename first, so a concurrent reader never sees it half
    deleted), then delete it."""
    trash = root.with_name(f".{root.name}.bad-{os.getpid()}")
    try:
        root.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
