"""Every kind of state robustsim keeps between runs, fuzzed: the resume key, an audit's batch records, a bench's
cells, the weights folder's pins and stamps, the content-hash cache, a training run's log, and the run lock. Each is
replaced by a link (to /dev/zero and to a file that must stay untouched), a FIFO, a folder, an oversized sparse file,
another user's file, a file others may write, empty or random bytes, and (for the JSON kinds) any JSON value in any
field. The law for every case: reading it returns (a trusted value, or nothing with a warning) or refuses in one
line (a RobustsimError); it never raises anything else, never blocks, never follows the link, and what a forged
record claims is never used."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustsim.errors import RobustsimError

pytestmark = pytest.mark.xdist_group("fuzz-state")

NODES = ["link to /dev/zero", "link to a victim", "fifo", "folder", "oversized", "empty", "random bytes", "mode 666"]
if os.geteuid() == 0:
    NODES.append("another user's")
VICTIM = b"a file a planted link points to\n"


def plant(path: Path, node: str, limit: int) -> None:
    """Replace the state file ``path`` by ``node``."""
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    elif os.path.lexists(path):
        keep = path.read_bytes() if path.is_file() and not path.is_symlink() else b"{}"
        path.unlink()
    else:
        keep = b"{}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if node == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif node == "link to a victim":
        victim = path.parent / "victim.bin"
        victim.write_bytes(VICTIM)
        path.symlink_to(victim)
    elif node == "fifo":
        os.mkfifo(path, 0o600)
    elif node == "folder":
        path.mkdir()
    elif node == "oversized":
        with open(path, "wb") as fh:
            fh.truncate(limit + 1)  # sparse: costs nothing on disk
    elif node == "empty":
        path.write_bytes(b"")
    elif node == "random bytes":
        path.write_bytes(os.urandom(300))
    elif node == "mode 666":
        path.write_bytes(keep)
        path.chmod(0o666)
    elif node == "another user's":
        path.write_bytes(keep)
        path.chmod(0o600)
        os.chown(path, 65534, 65534)


def lawful(read: Callable[[], object]) -> object:
    """``read()``'s value, or the one-line RobustsimError it refused with (as a string)."""
    try:
        return read()
    except RobustsimError as err:
        assert "\n" not in str(err), err
        return f"refused: {err}"


# the kinds: (make a valid one and return its path and a reader; the reader's trusted value) ----------------------


def key_kind(tmp: Path):
    import robustsim.resume as resume

    os.environ["ROBUSTSIM_CACHE"] = str(tmp / "cache")
    resume._WARNED.clear()
    first = resume._secret()
    path = tmp / "cache" / resume.KEY_NAME

    def read():
        got = resume._secret()
        assert len(got) == 32
        return "same" if got == first else "fresh"

    return path, read, 65


def record_kind(tmp: Path):
    from robustsim.resume import BatchStore

    os.environ["ROBUSTSIM_CACHE"] = str(tmp / "cache")
    store = BatchStore(tmp / "out" / ".resume" / "rank0", {"run": 1}, root=tmp / "out")
    items = torch.arange(3)
    store.save("part", items, {"rows": {"x": torch.ones(3)}})
    path = next((tmp / "out" / ".resume" / "rank0").glob("*.pt"))

    def read():
        got = store.load("part", items, lambda r: None if torch.equal(r["rows"]["x"], torch.ones(3)) else "forged")
        return None if got is None else "trusted"

    return path, read, 64 << 20


def cell_kind(tmp: Path):
    from robustsim.bench.protocol import PROTOCOLS, Cell
    from robustsim.bench.run import CellStore
    from robustsim.dist import local_env

    store = CellStore(tmp / "bench", PROTOCOLS["quick"], None, local_env())  # type: ignore[arg-type]
    cell = Cell("clean")
    store.put("l2", cell, "k", {"score": 0.5, "n": 2, "per_triplet": [0.0, 1.0]})
    path = tmp / "bench" / "cells" / "l2" / "clean.json"

    def read():
        got = store.get("l2", cell, "k")
        assert got is None or got["score"] == 0.5, got  # a forged number is never returned
        return None if got is None else "trusted"

    return path, read, 64 << 20


def pins_kind(tmp: Path):
    import robustsim.weights as weights

    os.environ["ROBUSTSIM_WEIGHTS"] = str(tmp / "weights")
    (tmp / "weights").mkdir(parents=True, exist_ok=True)
    weights._write_pins({"a.bin": {"sha256": "ab" * 32, "size": 3}})
    path = tmp / "weights" / "pins.json"

    def read():
        pins = weights.recorded_pins()
        assert weights._pins_problem(pins) is None, pins  # what is returned is well typed (a valid edit may pass)
        return "trusted" if pins else None

    return path, read, 1 << 20


def stamp_kind(tmp: Path):
    import hashlib

    import robustsim.weights as weights

    data = os.urandom(100)
    rec = weights.WeightFile("s.bin", (), len(data), "sha256", hashlib.sha256(data).hexdigest(), "t", "t")
    file = tmp / "w" / "s.bin"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    assert weights.verified(rec, file)
    path = weights._stamp(file)

    def read():
        assert weights.verified(rec, file)  # the bytes decide, whatever the stamp says
        file.write_bytes(os.urandom(100))
        try:
            assert not weights.verified(rec, file)  # a changed file is never passed by a planted stamp
        finally:
            file.write_bytes(data)
        return "ok"

    return path, read, 256


def hashes_kind(tmp: Path):
    from robustsim.cache import HASHES_NAME, content_digest, file_sha256

    os.environ["ROBUSTSIM_CACHE"] = str(tmp / "cache")
    files = [tmp / "img" / f"{i}.png" for i in range(3)]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(50))
    content_digest(files)
    import hashlib

    true = hashlib.sha256("".join(f"{file_sha256(f)}\n" for f in files).encode()).hexdigest()

    def read():
        assert content_digest(files) == true
        return "ok"

    return tmp / "cache" / HASHES_NAME, read, 256 << 20


def log_kind(tmp: Path):
    from robustsim.train.loop import _truncate_log

    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    path = run / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 5}\n')

    def read():
        _truncate_log(path, 3)
        if path.is_file() and not path.is_symlink():
            for line in path.read_text().splitlines():
                assert 0 <= json.loads(line)["step"] <= 3
        return "ok"

    return path, read, 64 << 20


def lock_kind(tmp: Path):
    from robustsim.io import LOCK_NAME, acquire_lock, release_lock

    folder = tmp / "out"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text('{"pid": 1, "host": "x"}')

    def read():
        lock = acquire_lock(folder)
        release_lock(lock)
        return "ok"

    return path, read, 1 << 30


KINDS = {
    "resume key": key_kind,
    "batch record": record_kind,
    "bench cell": cell_kind,
    "weight pins": pins_kind,
    "weight stamp": stamp_kind,
    "content hashes": hashes_kind,
    "training log": log_kind,
    "run lock": lock_kind,
}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("ROBUSTSIM_CACHE", "ROBUSTSIM_WEIGHTS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_state_replaced_by_a_hostile_node_is_one_line_or_recomputed(kind, node, tmp_path, capsys):
    path, read, limit = KINDS[kind](tmp_path)
    plant(path, node, limit)
    got = lawful(read)
    assert got in (None, "trusted", "ok", "same", "fresh") or str(got).startswith("refused: "), got
    if node == "link to a victim":
        assert (path.parent / "victim.bin").read_bytes() == VICTIM  # never written through
    if node in ("another user's", "mode 666"):  # "ok": a cache whose reader recomputes what it would have said
        assert got not in ("trusted", "same"), f"{kind}: a file others could write was trusted"
    err = capsys.readouterr().err
    assert "Traceback" not in err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _edit(value: object, at: list, new: object) -> object:
    """``value`` with the node at path ``at`` (indices into dicts' sorted keys and lists) replaced by ``new``."""
    if not at or not isinstance(value, (dict, list)) or not value:
        return new
    keys = sorted(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[at[0] % len(keys)]
    out = dict(value) if isinstance(value, dict) else list(value)
    out[key] = _edit(value[key], at[1:], new)
    return out


@pytest.mark.parametrize("kind", ["bench cell", "weight pins", "content hashes", "training log", "run lock"])
@FUZZ
@given(at=st.lists(st.integers(0, 9), max_size=4), new=JSON)
def test_every_json_state_with_any_value_in_any_field_is_one_line_or_recomputed(kind, at, new, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    path, read, _ = KINDS[kind](tmp)
    text = path.read_text()
    lines = text.splitlines() if kind == "training log" else [text]
    edited = [json.dumps(_edit(json.loads(line), at, new)) for line in lines]
    path.write_text("\n".join(edited) + "\n")
    got = lawful(read)
    assert got in (None, "trusted", "ok") or str(got).startswith("refused: "), got


def test_the_state_cases_cover_every_kind_and_node():
    """The case count the closing note gives: kinds x nodes, plus 40 JSON edits for each of the five JSON kinds."""
    assert len(KINDS) == 8 and len(NODES) >= 8
    print(f"state fuzz: {len(KINDS) * len(NODES)} node cases + {5 * 40} JSON edits")
    assert stat.S_IFIFO  # the FIFO case is planted with os.mkfifo
