"""Issue 15: the weights manager against a local HTTP server on 127.0.0.1 (no test touches the internet):
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
from conftest import run_cli

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
        self.end_headers()
        cut = srv.cut.pop(name, None)
        self.wfile.write(data[start : start + cut] if cut is not None else data[start:])


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.html, srv.cut, srv.hang, srv.requests = {}, set(), {}, set(), []
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
    assert state(record("good.bin")) == "fetchable"
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
    assert code == 2 and "HTML page" in err and "robustsim weights add" in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "weights").glob("page.bin"))


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
    assert run_cli(["metrics"]) == 0
    out = capsys.readouterr().out
    for entry in metric_entries():
        line = next(ln for ln in out.splitlines() if ln.startswith(entry.name + " "))
        assert entry.state() in line
    assert all(len(ln) <= 100 for ln in out.splitlines())
    assert "lpips-alex" in out and "missing" in out  # offline in the test suite: nothing to fetch


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
    assert net.config()["layers"]["head"] == "truncate" and 1.0 <= net.lipschitz_bound() <= 1 + 1e-5
    assert estimate_lipschitz(net, x, power_steps=10, ascent_steps=10) <= 1 + 1e-4
    path = tmp_path / "lipsim.pth"
    full = _lipsim_reference_state(depth=1, channels=10, inner=4, linears=1, width=32, size=224)
    torch.save(full, path)
    metric = load_lipsim_release("lipsim-margin0.5.pth", name="lipsim-small-m0.5", path=path)
    assert float(metric.mean.abs().max()) == 0.0 and metric.input_size == 224  # LipSim feeds [0, 1] as is
    with pytest.raises(WeightsError, match="not a LipSim checkpoint"):
        convert_lipsim_state({"model_state_dict": {"x": torch.zeros(1)}})


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


def test_score_fetches_verifies_and_scores_in_one_command_then_runs_offline(server, tmp_path, monkeypatch):
    """The user's path end to end, with the local server standing in for download.pytorch.org: ``score`` on an
    LPIPS metric whose backbone is not on disk fetches it, verifies it, scores with it; the second run is
    offline and gives the same distances. (A random SqueezeNet, pinned by this test's manifest.)"""
    import io

    from robustsim.compat import import_optional
    from robustsim.metrics.lpips_metric import BACKBONE_FILES, LPIPSMetric

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(import_optional("torchvision").models.squeezenet1_1().state_dict(), buf)
    name, data = BACKBONE_FILES["squeeze"], buf.getvalue()
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
