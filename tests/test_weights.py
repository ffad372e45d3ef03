"""The weights manager against a local HTTP server on 127.0.0.1 (no test touches the internet):
fetch + verify + cache, wrong hashes and HTML bodies refused, a killed download resumed with a Range
request and never loaded half-written, offline mode, ``add``; and the genuine metrics' loaders."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from conftest import one_error_line, run_cli

from robustsim.errors import WeightsError


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) with Range support; ``server.html`` names files answered with
    an HTML page; ``server.cut`` (name -> n) sends only the first n bytes of a full response, then drops."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        if name in srv.html:
            body = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if name in srv.hang:
            srv.hang_event.wait(10)
            return
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        mode = srv.modes.get(name)
        if mode is not None:
            self._hostile(mode, data)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        for key, value in srv.extra.get(name, {}).items():
            self.send_header(key, value)
        self.end_headers()
        cut = srv.cut.pop(name, None)
        self.wfile.write(data[start : start + cut] if cut is not None else data[start:])

    def _hostile(self, mode: str, data: bytes) -> None:
        """Ways a server lies: no length, an encoding, a resume from the wrong byte, a trickle, a
        chunked body cut mid-way, a redirect loop."""
        import time

        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()
            return
        self.send_response(206 if mode == "bad-range" else 200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "gzip":
            import gzip

            data = gzip.compress(data)
            self.send_header("Content-Encoding", "gzip")
        if mode == "bad-range":
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        if mode == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (1000, data[:1000]) + b"%x\r\n" % 5000 + data[1000:1100])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode not in ("no-length",):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "slow":
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(0.2)
                if self.server.hang_event.is_set():
                    return
            return
        self.wfile.write(data)
        self.close_connection = True


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.html, srv.cut, srv.hang, srv.requests, srv.extra = {}, set(), {}, set(), [], {}
    srv.modes = {}
    srv.hang_event = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("ROBUSTSIM_OFFLINE", raising=False)
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS_URL", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ROBUSTSIM_HTTP_TIMEOUT", "2")
    yield srv
    srv.hang_event.set()
    srv.shutdown()
    srv.server_close()


def manifest_with(tmp_path: Path, monkeypatch, *records: dict) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 1, "files": list(records)}))
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS_MANIFEST", str(path))


def rec(name: str, data: bytes, pin: str = "sha256", **kw) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    return {
        "name": name,
        "urls": ["https://example.invalid/" + name],
        "size": len(data) if pin != "first-download" else None,
        "pin": pin,
        "sha256": None if pin == "first-download" else (sha[:8] if pin == "sha256-prefix" else sha),
        "license": "test",
        "source": "test",
        "metrics": [],
        **kw,
    }


def test_a_good_file_is_fetched_verified_cached_and_then_used_offline(server, tmp_path, monkeypatch):
    from robustsim.weights import record, resolve, state

    data = os.urandom(300_000)
    server.files["good.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("good.bin", data))
    assert state(record("good.bin")) == "not downloaded"
    path = resolve("good.bin", progress=False)
    assert path.read_bytes() == data and path.parent == tmp_path / "weights"
    assert state(record("good.bin")) == "fetched"
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
    n = len(server.requests)
    assert resolve("good.bin") == path and len(server.requests) == n  # the second use is offline


def test_a_wrong_hash_is_refused_and_nothing_is_left(server, tmp_path, monkeypatch):
    from robustsim.weights import resolve

    data = os.urandom(10_000)
    server.files["bad.bin"] = os.urandom(10_000)  # same size, other bytes
    manifest_with(tmp_path, monkeypatch, rec("bad.bin", data))
    with pytest.raises(WeightsError, match="differs from the pinned"):
        resolve("bad.bin", progress=False)
    assert not any((tmp_path / "weights").glob("*bad.bin*"))


def test_an_html_body_is_refused_with_its_reason(server, tmp_path, monkeypatch, capsys):
    data = os.urandom(1000)
    server.html.add("page.bin")
    manifest_with(tmp_path, monkeypatch, rec("page.bin", data, pin="first-download"))
    code = run_cli(["weights", "fetch", "page.bin"])
    err = capsys.readouterr().err
    assert code == 2 and "HTML page" in err and "robustsim weights add page.bin FILE" in err
    assert len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "weights").glob("page.bin"))


def test_every_failed_download_names_the_file_to_install_by_hand(server, tmp_path, monkeypatch, capsys):
    """A 404, a cut body and an unreachable host each end in one line naming the file and the
    command that installs a copy the user has (`robustsim weights add NAME FILE`)."""
    data = os.urandom(5000)
    server.cut["cut.bin"] = 1000
    server.files["cut.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("gone.bin", data), rec("cut.bin", data))
    for name in ("gone.bin", "cut.bin"):
        assert run_cli(["weights", "fetch", name]) == 2
        err = capsys.readouterr().err.strip()  # a progress bar may come first
        assert err.count("error:") == 1 and f"robustsim weights add {name} FILE" in err.splitlines()[-1], err
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert run_cli(["weights", "fetch", "gone.bin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot connect" in err and "robustsim weights add gone.bin FILE" in err


def test_a_killed_download_resumes_and_the_partial_file_is_never_loaded(server, tmp_path, monkeypatch):
    from robustsim.weights import resolve

    data = os.urandom(2_000_000)
    server.files["big.bin"] = data
    server.cut["big.bin"] = 700_000  # the first transfer dies after 700 kB
    manifest_with(tmp_path, monkeypatch, rec("big.bin", data))
    with pytest.raises(WeightsError, match="truncated|stopped"):
        resolve("big.bin", progress=False)
    assert not (tmp_path / "weights" / "big.bin").exists()  # only the hidden partial file exists
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
    with pytest.raises(WeightsError, match="big.bin is missing"):
        resolve("big.bin")  # the partial file is not a file to load
    monkeypatch.delenv("ROBUSTSIM_OFFLINE")
    path = resolve("big.bin", progress=False)
    assert path.read_bytes() == data
    assert server.requests[-1] == ("big.bin", "bytes=700000-")  # resumed, not restarted


def test_offline_mode_names_the_file_and_both_commands(tmp_path, monkeypatch, capsys):
    from robustsim.data.mini import build_mini

    build_mini()  # building the bundled set on first use prints a line of its own: not this test's business
    capsys.readouterr()
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
    code = run_cli(["score", "--metric", "lpips-alex", "--data", "mini", "--limit", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "alexnet-owt-7be5be79.pth" in err and "weights fetch" in err and "weights add" in err


def test_add_refuses_a_wrong_file_and_installs_a_right_one(tmp_path, monkeypatch, capsys):
    from robustsim.weights import resolve

    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "w"))
    data = os.urandom(5000)
    manifest_with(tmp_path, monkeypatch, rec("model.bin", data))
    wrong, right = tmp_path / "wrong.bin", tmp_path / "right.bin"
    wrong.write_bytes(os.urandom(5000))
    right.write_bytes(data)
    assert run_cli(["weights", "add", "model.bin", str(wrong)]) == 2
    assert "differs from the pinned" in capsys.readouterr().err and not (tmp_path / "w" / "model.bin").exists()
    assert run_cli(["weights", "add", "model.bin", str(right)]) == 0
    assert resolve("model.bin").read_bytes() == data
    assert run_cli(["weights", "verify"]) == 0 and "ok" in capsys.readouterr().out


def test_first_download_pins_are_recorded_and_enforced(server, tmp_path, monkeypatch, capsys):
    from robustsim.weights import recorded_pins, resolve

    first = os.urandom(4000)
    server.files["tofu.bin"] = first
    manifest_with(tmp_path, monkeypatch, rec("tofu.bin", first, pin="first-download"))
    path = resolve("tofu.bin", progress=False)
    assert recorded_pins()["tofu.bin"]["sha256"] == hashlib.sha256(first).hexdigest()
    path.write_bytes(os.urandom(4000))  # the file changed on disk
    with pytest.raises(WeightsError, match="recorded at its first download"):
        resolve("tofu.bin")
    assert run_cli(["weights", "verify"]) == 2


def test_the_hash_decides_a_genuine_file_is_kept_whatever_size_the_manifest_says(server, tmp_path, monkeypatch):
    """The manifest said 4,966,400 bytes for torchvision's squeezenet1_1-b8a52dc0.pth (the file has
    4,958,839), and the size was checked before the hash, so the genuine file was deleted on every download."""
    from robustsim.weights import record, resolve, state

    data = os.urandom(50_000)
    server.files["genuine.pth"] = data
    manifest_with(tmp_path, monkeypatch, rec("genuine.pth", data, pin="sha256-prefix", size=len(data) + 7561))
    assert resolve("genuine.pth", progress=False).read_bytes() == data
    assert state(record("genuine.pth")) == "fetched"


def test_torchvision_files_have_the_sizes_torchvision_publishes():
    """Each torchvision backbone's manifest record against torchvision's own weights table (``_file_size`` in
    MiB, ``url``: torchvision/models/squeezenet.py, alexnet.py, vgg.py)."""
    from robustsim.compat import import_optional
    from robustsim.weights import manifest

    models = import_optional("torchvision").models
    published = {}
    for enum in (models.AlexNet_Weights, models.VGG16_Weights, models.SqueezeNet1_1_Weights):
        for w in enum:
            published[w.url.rsplit("/", 1)[1]] = (w.url, w.meta["_file_size"])
    checked = 0
    for rec_ in manifest().values():
        if rec_.name in published:
            url, mib = published[rec_.name]
            assert rec_.urls == (url,) and rec_.sha256 == rec_.name.rsplit("-", 1)[1].split(".")[0]
            assert round(rec_.size / 2**20, 3) == mib, f"{rec_.name}: {rec_.size} bytes is not {mib} MiB"
            checked += 1
    assert checked == 3


def test_a_git_blob_pin_accepts_the_committed_bytes_and_nothing_else(server, tmp_path, monkeypatch):
    """A file committed to a repository is pinned by the blob id its commit's tree names (R-LPIPS's heads); the id
    is computed here by git itself."""
    import subprocess

    from robustsim.weights import record, resolve

    data = os.urandom(20_000)
    (tmp_path / "blob").write_bytes(data)
    blob = subprocess.run(["git", "hash-object", str(tmp_path / "blob")], capture_output=True, text=True, check=True)
    entry = rec("heads.pth", data, pin="git-blob")
    entry["sha256"] = blob.stdout.strip()
    manifest_with(tmp_path, monkeypatch, entry, {**entry, "name": "other.pth"})
    server.files["heads.pth"], server.files["other.pth"] = data, data[::-1]
    assert resolve("heads.pth", progress=False).read_bytes() == data
    with pytest.raises(WeightsError, match="git blob id"):
        resolve("other.pth", progress=False)
    rlpips = record("r-lpips-alex-linf-x0.pth")  # the packaged manifest (the test's adds to it)
    commit = "2db7d542b6a3faf9ed8c5823ac0d9002f9a42f55"
    assert rlpips.pin == "git-blob" and rlpips.sha256 == "f1435696083bf5b16385efd794af44fcbe49f175"
    assert rlpips.urls and all(f"/{commit}/checkpoints/latest_net_linf_x0.pth" in u for u in rlpips.urls)


def test_fetching_a_metric_by_name_fetches_every_file_its_row_declares(server, tmp_path, monkeypatch, capsys):
    """Over every zoo row: ``robustsim weights fetch <metric>`` requests exactly the files the
    row declares (the row is where the link lives; ``test_contracts`` checks the build opens only those)."""
    from robustsim.weights import manifest
    from robustsim.zoo import metric_entries

    records = []
    for name in manifest():
        data = name.encode() * 10
        server.files[name] = data
        records.append(rec(name, data))
    manifest_with(tmp_path, monkeypatch, *records)
    for entry in metric_entries():
        if not entry.all_files():
            continue
        n = len(server.requests)
        assert run_cli(["weights", "fetch", entry.name]) == 0, capsys.readouterr().err
        fetched = {name for name, _ in server.requests[n:]}
        on_disk = {f for f in entry.all_files() if f not in fetched}  # fetched for an earlier row
        assert fetched | on_disk == set(entry.all_files())
        out = capsys.readouterr().out
        assert all(f"{f}: " in out for f in entry.all_files())  # each file's installed path is printed
    from robustsim.zoo import files_of

    assert {"dino-vitb16.pth", "dreamsim_dino_vitb16_checkpoint.zip"} <= set(files_of("dreamsim-dino-vitb16"))


def test_a_hugging_face_file_is_fetched_again_at_the_commit_its_first_download_resolved(server, tmp_path, monkeypatch):
    """``resolve/main`` moves. Hugging Face names the commit a download resolved to
    (``X-Repo-Commit``, huggingface_hub's ``file_download.py`` reads the same header); robustsim records it with the
    first-download pin and asks for that commit afterwards, so a later upstream push cannot break the pin."""
    from robustsim.weights import recorded_pins, resolve

    monkeypatch.delenv("ROBUSTSIM_WEIGHTS_URL")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    v1, v2 = os.urandom(3000), os.urandom(3000)
    server.files["org/model/resolve/main/w.bin"] = v1
    server.extra["org/model/resolve/main/w.bin"] = {"X-Repo-Commit": commit}
    server.files[f"org/model/resolve/{commit}/w.bin"] = v1
    manifest_with(
        tmp_path,
        monkeypatch,
        {**rec("w.bin", v1, pin="first-download"), "urls": [f"{base}/org/model/resolve/main/w.bin"]},
    )
    path = resolve("w.bin", progress=False)
    assert path.read_bytes() == v1 and recorded_pins()["w.bin"]["revision"] == commit
    path.unlink()  # the cache is cleared; meanwhile the repository's main branch moves on
    server.files["org/model/resolve/main/w.bin"] = v2
    assert resolve("w.bin", progress=False).read_bytes() == v1
    assert server.requests[-1][0] == f"org/model/resolve/{commit}/w.bin"


@pytest.mark.parametrize("mode", ["no-length", "gzip", "chunked-cut", "loop"])
def test_a_body_that_is_not_one_complete_plain_file_is_never_pinned(server, tmp_path, monkeypatch, capsys, mode):
    """With a first-download pin, whatever arrived used to be pinned for good (a body with no
    length cut short, a gzip-encoded body, a chunked body cut mid-way). Each is refused in one line, nothing is
    installed and nothing pinned; the genuine file then installs."""
    from robustsim.weights import recorded_pins, resolve

    data = os.urandom(6000)
    server.files["tofu.bin"], server.modes["tofu.bin"] = data, mode
    manifest_with(tmp_path, monkeypatch, rec("tofu.bin", data, pin="first-download"))
    assert run_cli(["weights", "fetch", "tofu.bin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tofu.bin" in err, err
    assert "tofu.bin" not in recorded_pins() and not (tmp_path / "weights" / "tofu.bin").exists()
    del server.modes["tofu.bin"]
    assert resolve("tofu.bin", progress=False).read_bytes() == data


def test_a_resume_from_the_wrong_byte_is_not_spliced(server, tmp_path, monkeypatch):
    """A 206 whose Content-Range does not start where the partial file ends would splice two bodies."""
    from robustsim.weights import recorded_pins, resolve
    from robustsim.weights.download import partial_path

    data = os.urandom(8000)
    manifest_with(tmp_path, monkeypatch, rec("cut.bin", data, pin="first-download"))
    (tmp_path / "weights").mkdir()
    partial_path(tmp_path / "weights" / "cut.bin").write_bytes(data[:3000])
    server.files["cut.bin"], server.modes["cut.bin"] = data, "bad-range"
    with pytest.raises(WeightsError, match="not at byte 3000"):
        resolve("cut.bin", progress=False)
    assert "cut.bin" not in recorded_pins() and not partial_path(tmp_path / "weights" / "cut.bin").exists()
    del server.modes["cut.bin"]
    assert resolve("cut.bin", progress=False).read_bytes() == data


def test_a_trickling_server_is_dropped_after_one_read_timeout(server, tmp_path, monkeypatch):
    import time

    from robustsim.weights import resolve

    monkeypatch.setenv("ROBUSTSIM_HTTP_TIMEOUT", "1")
    data = os.urandom(400)
    server.files["drip.bin"], server.modes["drip.bin"] = data, "slow"
    manifest_with(tmp_path, monkeypatch, rec("drip.bin", data))
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="127.0.0.1.* too slow") as info:
        resolve("drip.bin", progress=False)
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)


def test_a_wrong_first_pin_has_a_way_out_named_in_the_error(server, tmp_path, monkeypatch, capsys):
    from robustsim.weights import recorded_pins, resolve

    wrong, right = os.urandom(3000), os.urandom(3000)
    server.files["w.bin"] = wrong
    manifest_with(tmp_path, monkeypatch, rec("w.bin", right, pin="first-download"))
    resolve("w.bin", progress=False).write_bytes(right)  # the first download pinned a wrong file; a right copy comes
    with pytest.raises(WeightsError, match="weights fetch --repin w.bin"):
        resolve("w.bin")
    server.files["w.bin"] = right
    assert run_cli(["weights", "fetch", "--repin", "w.bin"]) == 0
    assert recorded_pins()["w.bin"]["sha256"] == hashlib.sha256(right).hexdigest()


@pytest.mark.parametrize("name", ["../escape.bin", "/tmp/abs.bin", "sub/x.bin", ".hidden"])
def test_a_manifest_record_naming_a_path_is_refused(tmp_path, monkeypatch, capsys, name):
    """A manifest can come from a mirror (ROBUSTSIM_WEIGHTS_MANIFEST): its names are untrusted and must not
    write outside the weights folder."""
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "w"))
    manifest_with(tmp_path, monkeypatch, rec(name, b"x" * 10))
    assert run_cli(["weights", "fetch", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a plain file name" in err
    assert not (tmp_path / "escape.bin").exists() and not Path("/tmp/abs.bin").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "0"])
def test_a_bad_http_timeout_is_one_line(tmp_path, monkeypatch, capsys, value):
    from robustsim.weights.download import timeout

    monkeypatch.setenv("ROBUSTSIM_HTTP_TIMEOUT", value)
    with pytest.raises(WeightsError, match="ROBUSTSIM_HTTP_TIMEOUT"):
        timeout()


def test_a_zip_bomb_is_not_unpacked(tmp_path, monkeypatch):
    import zipfile

    from robustsim.weights import WeightFile, unpacked

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (64 << 20))
    rec_ = WeightFile("bomb.zip", (), None, "first-download", None, "t", "t", unpack=True)
    with pytest.raises(WeightsError, match="unpacks to"):
        unpacked(rec_, archive)
    assert not (tmp_path / "bomb").exists()


def test_an_unwritable_weights_folder_is_one_line(server, tmp_path, monkeypatch, capsys):
    data = os.urandom(100)
    server.files["ro.bin"] = data
    (tmp_path / "blocker").write_text("a file where the folder should be")
    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "blocker" / "weights"))
    manifest_with(tmp_path, monkeypatch, rec("ro.bin", data))
    assert run_cli(["weights", "fetch", "ro.bin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err


def test_a_hung_host_ends_in_one_line(server, tmp_path, monkeypatch):
    from robustsim.weights import resolve

    server.hang.add("slow.bin")
    manifest_with(tmp_path, monkeypatch, rec("slow.bin", b"x" * 10))
    with pytest.raises(WeightsError, match="slow.bin") as info:
        resolve("slow.bin", progress=False)
    assert "\n" not in str(info.value)


def test_weights_list_and_metrics_show_every_metric_with_its_state(capsys):
    from robustsim.weights import manifest
    from robustsim.zoo import metric_entries

    assert run_cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in manifest()) and "prefix" in out and "1st-download" in out
    rclip = next(ln for ln in out.splitlines() if ln.startswith("vit-b-16-tecoa-eps4.pt"))
    assert "no licence" in rclip and "r-clip-t-vitb16" in rclip  # fra31/perceptual-metrics has no licence file
    assert "Apache-2.0" in next(ln for ln in out.splitlines() if ln.startswith("dists_weights.pt"))  # piq's
    assert run_cli(["metrics"]) == 0
    out = capsys.readouterr().out
    for entry in metric_entries():
        line = next(ln for ln in out.splitlines() if ln.startswith(entry.name + " "))
        assert entry.state() in line
    assert all(len(ln) <= 100 for ln in out.splitlines())
    assert "lpips-alex" in out and "missing" in out  # offline in the test suite: nothing to fetch
    assert (
        "fetchable" not in out
        and "not downloaded: downloaded (pinned, verified) on first use, which needs" in " ".join(out.split())
    )


# genuine metrics ---------------------------------------------------------------------------------


def _lipsim_reference_state(depth=2, channels=4, inner=3, linears=2, width=16, size=32, seed=0) -> dict:
    """A state dict in the LipSim repository's layout (DataParallel(NormalizedModel(L2LipschitzNetwork)))."""
    g = torch.Generator().manual_seed(seed)
    flat = channels * (size // 16) ** 2
    sd = {}
    for i in range(depth):
        layer = {
            "kernel": torch.randn(inner, channels, 3, 3, generator=g) * 0.3,
            "bias": torch.randn(1, inner, 1, 1, generator=g) * 0.1,
            "q": torch.randn(inner, generator=g),
        }
        for k, v in layer.items():  # both names of the shared modules, as their state_dict has
            sd[f"module.model.convs.{i}.{k}"] = v
            sd[f"module.model.base.1.{i}.{k}"] = v
    for j in range(1, linears + 1):
        layer = {
            "weight": torch.randn(width, flat, generator=g) * 0.2,
            "bias": torch.randn(1, width, generator=g) * 0.1,
            "q": torch.randn(width, generator=g),
        }
        for k, v in layer.items():
            sd[f"module.model.linear.{j}.{k}"] = v
            sd[f"module.model.base.2.{j}.{k}"] = v
    return {"model_state_dict": sd, "epoch": 1}


def _paper_forward(sd: dict, x: torch.Tensor, n_classes: int) -> torch.Tensor:
    """LipSim's network from the paper's formula h(x) = x - 2 W T^-1 relu(W^T x + b), written independently:
    zero-padded channels, convs with t_i = sum_j |K^T K|_ij (their conv q cancels), two 4x4 sum-pools / 4,
    linear layers with t_i = sum_j |W W^T|_ij q_j / q_i, the first n_classes coordinates."""
    import torch.nn.functional as F

    m = sd["model_state_dict"]
    convs = sorted({int(k.split(".")[3]) for k in m if ".convs." in k})
    c = m[f"module.model.convs.{convs[0]}.kernel"].shape[1]
    h = torch.cat([x, torch.zeros(x.shape[0], c - 3, *x.shape[2:])], dim=1)
    for i in convs:
        k, b = m[f"module.model.convs.{i}.kernel"], m[f"module.model.convs.{i}.bias"]
        t = F.conv2d(k, k, padding=2).abs().sum((1, 2, 3))
        act = F.relu(F.conv2d(h, k, padding=1) + b) / t.view(1, -1, 1, 1)
        h = h - 2 * F.conv_transpose2d(act, k, padding=1)
    h = F.avg_pool2d(F.avg_pool2d(h, 4, divisor_override=4), 4, divisor_override=4).flatten(1)
    for j in sorted({int(k.split(".")[3]) for k in m if ".linear." in k}):
        w, b, q = (m[f"module.model.linear.{j}.{n}"] for n in ("weight", "bias", "q"))
        t = ((w @ w.T).abs() * q.exp()[None, :] / q.exp()[:, None]).sum(1)
        h = h - 2 * (F.relu(h @ w.T + b) / t) @ w
    return h[:, :n_classes]


def test_lipsim_release_converter_equals_the_papers_formula(tmp_path):
    from robustsim.certify import estimate_lipschitz
    from robustsim.models.convert import convert_lipsim_state, load_lipsim_release

    state = _lipsim_reference_state()
    net = convert_lipsim_state(state, n_classes=8, input_size=32)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), _paper_forward(state, x, 8), atol=1e-5)
    assert net.config()["layers"]["head"] == "truncate" and 1.0 <= net.certified_bound() <= 1 + 1e-5
    assert estimate_lipschitz(net, x, power_steps=10, ascent_steps=10) <= 1 + 1e-4
    path = tmp_path / "lipsim.pth"
    full = _lipsim_reference_state(depth=1, channels=10, inner=4, linears=1, width=32, size=224)
    torch.save(full, path)
    metric = load_lipsim_release(path, name="lipsim-small-m0.5")
    assert float(metric.mean.abs().max()) == 0.0 and metric.input_size == 224  # LipSim feeds [0, 1] as is
    with pytest.raises(WeightsError, match="not a LipSim checkpoint"):
        convert_lipsim_state({"model_state_dict": {"x": torch.zeros(1)}})


def _numpy1_pickle(path: Path) -> None:
    """Rewrite a torch zip checkpoint as numpy 1 writes it: numpy scalars under ``numpy.core.multiarray``."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            z.writestr(info, data)


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
def test_lipsim_training_checkpoints_load_their_model_and_nothing_else(tmp_path, numpy_names):
    """LipSim's fine-tuned releases are training checkpoints (lipsim/core/trainer.py,
    ``_save_ckpt``: epoch, global_step, model_state_dict, optimizer_state_dict), and its ``interp`` schedule
    (lipsim/core/utils.py, ``TriangularLRScheduler.step``) sets the learning rate to ``np.interp(...)[0]``, a
    numpy float. Such a file loads (only the model is read); a file carrying any other global is refused."""
    import argparse

    import numpy as np

    from robustsim.models.convert import convert_lipsim_state, load_lipsim_release

    state = _lipsim_reference_state(depth=1, channels=10, inner=4, linears=1, width=32, size=224)
    params = [torch.nn.Parameter(v.clone()) for v in state["model_state_dict"].values()]
    opt = torch.optim.SGD(params, lr=0, weight_decay=0.0, momentum=0.9)  # get_optimizer's 'sgd'
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    opt.param_groups[0].update(lr=np.interp([7], [0, 40, 80, 100], [0, 0.1, 0.005, 0])[0])
    assert type(opt.param_groups[0]["lr"]) is np.float64
    ckpt = {"epoch": 3, "global_step": 7, "model_state_dict": state["model_state_dict"]}
    ckpt["optimizer_state_dict"] = opt.state_dict()
    path = tmp_path / "model.ckpt-7.pth"
    torch.save(ckpt, path)
    if numpy_names == "numpy 1":
        _numpy1_pickle(path)
    metric = load_lipsim_release(path, name="lipsim-small-m0.5")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(metric.net(x), convert_lipsim_state(state)(x))
    hostile = tmp_path / "hostile.pth"
    torch.save({**ckpt, "config": argparse.Namespace(lr=0.1)}, hostile)  # any other class: refused, not built
    with pytest.raises(WeightsError, match="Namespace") as info:
        load_lipsim_release(hostile)
    assert "\n" not in str(info.value)


def test_dreamsim_equals_the_dreamsim_package_on_the_same_weights(tmp_path):
    """A DreamSim checkpoint in the released format (base ViT files + LoRA adapter), with random weights and
    a small DINO ViT-S/16 so the test stays fast: robustsim's metric equals the package's model."""
    from robustsim.compat import import_optional

    import_optional("dreamsim")
    from dreamsim.feature_extraction import vision_transformer as vits
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, PeftModel, get_peft_model

    from robustsim.metrics.dreamsim import DreamSimMetric
    from robustsim.weights.hub import managed_downloads

    torch.manual_seed(0)
    backbone = tmp_path / "dino_vits16.pth"
    torch.save(vits.vit_small(patch_size=16, num_classes=0).state_dict(), backbone)
    config = {"feat_type": "cls", "model_type": "dino_vits16", "stride": "16", "lora": True}
    folder = tmp_path / "release"
    folder.mkdir()
    with managed_downloads({"dino_vits16": backbone}):
        base = PerceptualModel(**config, device="cpu", load_dir=str(folder), normalize_embeds=True)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["qkv"]))
    for name, p in lora.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.05)  # a LoRA that changes the model
    lora.save_pretrained(str(folder / "dino_vits16_single_lora"))
    with managed_downloads({"dino_vits16": backbone}):
        reference = PerceptualModel(**config, device="cpu", load_dir=str(folder), normalize_embeds=True)
    reference = PeftModel.from_pretrained(reference, str(folder / "dino_vits16_single_lora")).eval()
    ours = DreamSimMetric("dino_vits16", folder=folder, config=config, backbones={"dino_vits16": backbone})
    x, y = torch.rand(2, 3, 224, 224), torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours.embed(x), reference.embed(x), atol=1e-5)
        assert torch.allclose(ours(x, y), reference(x, y).flatten(), atol=1e-5)
    assert ours.name == "dreamsim-dino-vits16"  # the zoo's spelling
    # lora=False is dreamsim(pretrained=False): the package's model without adapters (dreamsim-base, item 5)
    with managed_downloads({"dino_vits16": backbone}):
        untuned = PerceptualModel(**config, device="cpu", load_dir=str(folder), normalize_embeds=True).eval()
    plain = DreamSimMetric("dino_vits16", folder=folder, config=config, backbones={"dino_vits16": backbone}, lora=False)
    with torch.no_grad():
        assert torch.allclose(plain(x, y), untuned(x, y).flatten(), atol=1e-5)
        assert not torch.allclose(plain(x, y), ours(x, y), atol=1e-4)  # the adapters change the model
    assert plain.name == "dreamsim-dino-vits16-base"


def test_score_fetches_verifies_and_scores_in_one_command_then_runs_offline(server, tmp_path, monkeypatch):
    """The user's path end to end, with the local server standing in for download.pytorch.org: ``score`` on an
    LPIPS metric whose backbone is not on disk fetches it, verifies it, scores with it; the second run is
    offline and gives the same distances. (A random SqueezeNet, pinned by this test's manifest.)"""
    import io

    from robustsim.compat import import_optional
    from robustsim.metrics.lpips_metric import LPIPSMetric
    from robustsim.zoo import files_of

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(import_optional("torchvision").models.squeezenet1_1().state_dict(), buf)
    (name,), data = files_of("lpips-squeeze"), buf.getvalue()
    # the two runs are compared bit for bit: they must not pick different thread counts from the machine's load
    # (oneDNN's convolutions round differently across them)
    monkeypatch.setenv("ROBUSTSIM_THREADS", "1")
    server.files[name] = data
    manifest_with(tmp_path, monkeypatch, rec(name, data, metrics=["lpips-squeeze"], torch_hub=True))
    reports = []
    for run in ("online", "offline"):
        if run == "offline":
            monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
        n = len(server.requests)
        out = tmp_path / f"{run}.json"
        argv = ["score", "--metric", "lpips-squeeze", "--data", "mini", "--limit", "6", "--json", str(out)]
        assert run_cli(argv) == 0
        assert (len(server.requests) > n) == (run == "online")  # fetched once, then never again
        reports.append(json.loads(out.read_text())["results"][0])
    assert reports[0]["d0"] == reports[1]["d0"] and reports[0]["score"] == reports[1]["score"]
    on_disk = next((tmp_path / "torch").rglob(name), None) or next((tmp_path / "weights").rglob(name))
    assert on_disk.read_bytes() == data  # verified bytes, installed whole
    from robustsim.data import open_triplets

    batch = open_triplets("mini:test", limit=6)
    ref, x0 = torch.stack([batch[i]["ref"] for i in range(6)]), torch.stack([batch[i]["x0"] for i in range(6)])
    with torch.no_grad():
        direct = LPIPSMetric("squeeze", weights=on_disk)(ref, x0)
    assert torch.allclose(direct, torch.tensor(reports[0]["d0"]), atol=1e-5)  # the fetched backbone was used


def test_two_fetches_of_one_file_at_once_download_it_once(server, tmp_path, monkeypatch):
    """Two processes (here threads, each with its own lock descriptor) fetching the same file:
    one downloads, the other waits on the per-file lock and finds it installed; neither fails."""
    import concurrent.futures

    from robustsim.weights import resolve

    data = os.urandom(3_000_000)
    server.files["shared.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("shared.bin", data))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: resolve("shared.bin", progress=False), range(2)))
    assert paths[0] == paths[1] and paths[0].read_bytes() == data
    assert [name for name, _ in server.requests].count("shared.bin") == 1


def test_a_folder_where_the_file_should_be_is_one_line(server, tmp_path, monkeypatch, capsys):
    data = os.urandom(100)
    server.files["dir.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("dir.bin", data))
    (tmp_path / "weights" / "dir.bin").mkdir(parents=True)
    assert run_cli(["weights", "fetch", "dir.bin"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a file" in err


# the weights folder under two writers, hostile nodes and records (issue 47) ---------------------------------------

_ADD_LOOP = """
import os, sys, time
from pathlib import Path
from robustsim.errors import WeightsError
from robustsim.weights import add_file
go, names, src = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
while not go.exists():
    time.sleep(0.001)
for name in names:
    try:
        add_file(name, src, trust=True)
        print("installed", name, flush=True)
    except WeightsError as err:
        print("refused", name, str(err)[:60], flush=True)
"""


def _adders(tmp_path: Path, jobs: list[tuple[str, Path]]) -> list[str]:
    """Run one process per (names, source) adding with --trust, released together; their output lines."""
    import subprocess
    import sys

    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _ADD_LOOP, str(go), names, str(src)], stdout=subprocess.PIPE, text=True)
        for names, src in jobs
    ]
    import time

    time.sleep(3)  # both have imported robustsim and wait on the go file
    go.touch()
    return [line for p in procs for line in p.communicate(timeout=120)[0].splitlines()]


def test_concurrent_adds_never_lose_a_pin_nor_install_two_files_as_one_name(tmp_path, monkeypatch):
    """Two processes adding 24 names each at once: every pin is kept (a read-modify-write of pins.json lost some);
    two processes adding different bytes as one name: one is installed and pinned, the other refused."""
    from robustsim.weights import recorded_pins, resolve

    monkeypatch.setenv("ROBUSTSIM_WEIGHTS", str(tmp_path / "w"))
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(3000))
    b.write_bytes(os.urandom(3000))
    many = [f"{k}{i}.bin" for k in "ab" for i in range(24)]
    manifest_with(tmp_path, monkeypatch, *[rec(n, b"", pin="first-download") for n in [*many, "same.bin"]])
    lines = _adders(tmp_path, [(",".join(many[:24]), a), (",".join(many[24:]), b)])
    assert sum(line.startswith("installed") for line in lines) == 48
    assert set(recorded_pins()) == set(many)
    (tmp_path / "go").unlink()
    lines = _adders(tmp_path, [("same.bin", a), ("same.bin", b)])
    assert sorted(line.split()[0] for line in lines) == ["installed", "refused"], lines
    winner = a if any(line.startswith("installed") for line in lines[:1]) else b
    assert recorded_pins()["same.bin"]["sha256"] == hashlib.sha256(winner.read_bytes()).hexdigest()
    assert resolve("same.bin").read_bytes() == winner.read_bytes()


def test_an_offline_repin_keeps_the_good_copy_and_its_pin(server, tmp_path, monkeypatch, capsys):
    from robustsim.weights import recorded_pins, resolve

    data = os.urandom(3000)
    server.files["keep.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("keep.bin", data, pin="first-download"))
    path = resolve("keep.bin", progress=False)
    pins = recorded_pins()
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
    assert run_cli(["weights", "fetch", "--repin", "keep.bin"]) == 2
    assert "offline" in capsys.readouterr().err
    assert path.read_bytes() == data and recorded_pins() == pins
    monkeypatch.delenv("ROBUSTSIM_OFFLINE")
    server.files["keep.bin"] = b"<html>login</html>"  # a repin that downloads something wrong changes nothing either
    assert run_cli(["weights", "fetch", "--repin", "keep.bin"]) == 2
    assert path.read_bytes() == data and recorded_pins() == pins and resolve("keep.bin") == path


def test_planted_pins_and_stamps_are_never_written_through_nor_trusted(server, tmp_path, monkeypatch, capsys):
    from robustsim.weights import resolve

    data = os.urandom(2000)
    server.files["p.bin"] = data
    manifest_with(tmp_path, monkeypatch, rec("p.bin", data, pin="first-download"))
    folder = tmp_path / "weights"
    folder.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("{}\n")
    (folder / "pins.json").symlink_to(victim)
    assert run_cli(["weights", "fetch", "p.bin"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in one_error_line(err) and "%" not in err and victim.read_text() == "{}\n"
    (folder / "pins.json").unlink()
    path = resolve("p.bin", progress=False)
    stamp = folder / ".p.bin.sha256"
    stamp.unlink()
    stamp.symlink_to("/dev/zero")  # read without end if followed
    assert resolve("p.bin") == path and stamp.is_symlink()  # hashed again, the link left alone
    for edited in ('{"p.bin": {"sha256": 123, "size": 1}}', '{"p.bin": "x"}', "[1]", '{"p.bin": {"sha256": "'
                   + "0" * 64 + '", "size": "12"}}'):  # fmt: skip
        (folder / "pins.json").write_text(edited)
        assert run_cli(["weights", "list"]) == 2
        err = capsys.readouterr().err
        assert "pins.json" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "field, value",
    [("size", "12"), ("sha256", 123), ("urls", "http://x"), ("unpack", "yes"), ("max_size", -1), ("name", 7)],
)
def test_manifest_fields_of_the_wrong_type_are_one_line(tmp_path, monkeypatch, capsys, field, value):
    bad = {**rec("t.bin", b"abc"), field: value}
    manifest_with(tmp_path, monkeypatch, bad)
    assert run_cli(["weights", "list"]) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
