"""Training: distillation and fine-tuning improve what they optimise, exact resume after SIGKILL,
safe checkpoints, and torchrun (2 processes on CPU) matching one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, save_png
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim.data import open_images
from robustsim.data.mini import mini_triplets
from robustsim.errors import RobustsimError, WeightsError
from robustsim.models import LipSimNet
from robustsim.models.checkpoint import load_net, save_checkpoint
from robustsim.models.lipsim import LipSimMetric
from robustsim.train import distill, finetune, hinge_2afc, lr_at
from robustsim.train.augment import augment, step_generator
from robustsim.train.distill import embedding_rmse
from robustsim.train.finetune import validation_figures
from robustsim.train.teacher import load_teacher, teacher_targets

pytestmark = pytest.mark.xdist_group("train")
TEACHER = "effnet-lite0"
SIZE = 32


def image_folder(root: Path, split: str, n: int) -> Path:
    """PNG crops (64 px) of mini's ``split`` refs and distortions, as a plain image folder."""
    data = mini_triplets(split)
    for i in range(n):
        item = data[i // 3]
        key = ("ref", "x0", "x1")[i % 3]
        arr = item[key].mul(255).round().byte().permute(1, 2, 0).numpy()
        save_png(root / f"{i:04d}.png", arr)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("images")
    return image_folder(base / "train", "train", 192), image_folder(base / "val", "val", 48)


def run_kwargs(out: Path, **kw) -> dict:
    base = dict(epochs=2, batch_size=32, lr=0.01, warmup=0.1, seed=0, progress=False)
    base.update(kw)
    return {"out": out, **base}


@pytest.fixture(scope="module")
def distilled(folders, tmp_path_factory) -> tuple[Path, dict]:
    train, val = folders
    out = tmp_path_factory.mktemp("runs") / "distill"
    res = distill(
        teacher=TEACHER,
        student="nano",
        images=str(train),
        val_images=str(val),
        input_size=SIZE,
        eval_data="",
        **run_kwargs(out, epochs=4),
    )
    return out, res


@pytest.mark.slow
def test_distillation_lowers_the_heldout_rmse_to_the_teacher(folders, distilled):
    train, val = folders
    out, res = distilled
    val_images = open_images(str(val), SIZE)
    teacher = load_teacher(TEACHER, open_images(str(train), SIZE))
    targets = teacher_targets(teacher, val_images, Path(os.environ["ROBUSTSIM_CACHE"]) / "teachers", progress=False)
    torch.manual_seed(0)
    untrained = LipSimMetric(LipSimNet("nano", embed_dim=targets.shape[1], input_size=SIZE))
    before = embedding_rmse(untrained, val_images, targets)
    after = embedding_rmse(LipSimMetric(load_net(out / "last")[0]), val_images, targets)
    assert after < 0.6 * before, (before, after)
    assert res["metrics"]["val_rmse"] == pytest.approx(after, rel=1e-5)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["loss"] for r in log if r["event"] == "step"]
    assert len(steps) == 4 * (192 // 32) and np.mean(steps[-6:]) < np.mean(steps[:6])
    cfg = json.loads((out / "last" / "config.json").read_text())
    assert cfg["teacher"] == TEACHER and cfg["epoch"] == 4 and cfg["model"]["embed_dim"] == targets.shape[1]


def test_finetune_raises_clean_2afc_on_mini_val(tmp_path):
    """From an untrained 1-Lipschitz net (the distilled one is covered by the shipped recipe's card)."""
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "init", LipSimNet("nano", embed_dim=64, input_size=SIZE))
    val = mini_triplets("val", size=SIZE)
    before = validation_figures(LipSimMetric(load_net(init)[0]), val, [36 / 255])["clean"]
    res = finetune(
        init=init,
        data="mini",
        margin=0.5,
        select="clean",
        eval_data=None,
        **run_kwargs(tmp_path / "ft", epochs=2, batch_size=32, lr=1e-2),
    )
    best = LipSimMetric(load_net(tmp_path / "ft" / "best")[0])
    after = validation_figures(best, val, [36 / 255])["clean"]
    assert after > before + 0.02, (before, after)
    assert res["best"] == pytest.approx(after)
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [0, 1, 2]  # the init is a candidate too


@pytest.mark.slow
def test_the_certified_loss_raises_the_mean_sound_radius_versus_the_hinge(distilled, tmp_path):
    """From the same distilled student, one epoch of each loss on the same triplets: the certified loss
    (a hinge on the certifier's own radius) ends with the larger mean sound radius on held-out triplets."""
    from robustsim.certify import certify_2afc

    out, _ = distilled
    val = mini_triplets("val", size=SIZE).subset(96)
    radii = {}
    for loss in ("hinge", "certified"):
        finetune(
            init=out / "last",
            data="mini",
            margin=0.5,
            select="clean",
            eval_data=None,
            limit=256,
            loss=loss,
            **run_kwargs(tmp_path / loss, epochs=1, batch_size=32, lr=1e-3),
        )
        metric = LipSimMetric(load_net(tmp_path / loss / "last")[0])
        radii[loss] = float(certify_2afc(metric, val, [36 / 255], progress=False).radius.mean())
    assert radii["certified"] > 1.1 * radii["hinge"], radii


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_net(path)[0].state_dict()


def _cli(*args: str) -> list[str]:
    """The train CLI at a fixed thread count: runs compared bit for bit must not pick different thread counts
    from the machine's load (robustsim's default), since oneDNN's convolutions round differently across them."""
    return [sys.executable, "-m", "robustsim", "--threads", "2", "train", *args]


def distill_args(images: Path, epochs: int) -> list[str]:
    """A small CPU distillation from the command line (no held-out set, no summary)."""
    return [
        "distill", "--teacher", TEACHER, "--student", "nano", "--images", str(images), "--val-images", "",
        "--input-size", str(SIZE), "--epochs", str(epochs), "--batch-size", "32", "--eval-data", "", "--device", "cpu",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(folders, tmp_path):
    common = distill_args(folders[0], epochs=2)
    full = tmp_path / "full"
    subprocess.run(_cli(*common, "--out", str(full)), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*common, "--save-every", "1", "--out", str(killed)), stderr=subprocess.DEVNULL)
    log = killed / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once a mid-epoch checkpoint exists (epoch = 6 steps)
        steps = [json.loads(s).get("step", 0) for s in log.read_text().splitlines()] if log.exists() else []
        if steps and max(steps) >= 3 and (killed / "last").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads((killed / "last" / "config.json").read_text())["training"]["global_step"]
    assert 0 < saved < 12, "the run was not interrupted mid-way"
    subprocess.run(
        _cli(*common, "--save-every", "1", "--resume", "--out", str(killed)), check=True, capture_output=True
    )
    a, b = _weights(full / "last"), _weights(killed / "last")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_a_second_fresh_run(distilled, folders):
    out, _ = distilled
    train, val = folders
    with pytest.raises(RobustsimError, match="already holds a run"):
        distill(teacher=TEACHER, student="nano", images=str(train), val_images=None, input_size=SIZE, eval_data="",
                **run_kwargs(out, epochs=4))  # fmt: skip
    with pytest.raises(RobustsimError, match="--epochs: 4 -> 5 differs"):
        distill(teacher=TEACHER, student="nano", images=str(train), val_images=None, input_size=SIZE, eval_data="",
                **run_kwargs(out, epochs=5, resume=True))  # fmt: skip


def test_broken_checkpoints_fail_with_one_line_and_never_replace_the_good_one(tmp_path):
    net = LipSimNet("nano", embed_dim=8, input_size=16)
    good = save_checkpoint(tmp_path / "last", net, {"epoch": 1})
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(AttributeError):
        save_checkpoint(tmp_path / "last", net, {"epoch": 2}, extra_tensors={"bad": "not a tensor"})  # type: ignore[dict-item]
    kept, cfg = load_net(good)
    assert cfg["epoch"] == 1 and all(torch.equal(kept.state_dict()[k], ref[k]) for k in ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]

    def broken(name: str) -> Path:
        path = tmp_path / name
        save_checkpoint(path, net)
        return path

    trunc = broken("trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    shapes = broken("shapes")
    cfg = json.loads((shapes / "config.json").read_text())
    cfg["model"]["embed_dim"] = 9
    (shapes / "config.json").write_text(json.dumps(cfg))
    missing = broken("missing")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(missing / "model.safetensors"))
    sd.pop(sorted(sd)[0])
    save_file(sd, str(missing / "model.safetensors"))
    pickled = broken("pickled")
    torch.save(net.state_dict(), pickled / "model.safetensors")
    edited = broken("edited")
    (edited / "config.json").write_text("{not json")
    for path, words in [
        (trunc, "corrupt or truncated"),
        (shapes, "has shape"),
        (missing, "missing"),
        (pickled, "corrupt or truncated"),
        (edited, "not valid JSON"),
    ]:
        with pytest.raises(WeightsError, match=words) as err:
            load_net(path)
        assert "\n" not in str(err.value)


def _rank_logs(logs: Path) -> str:
    """The tail of every rank's stdout/stderr that torchrun wrote under ``logs``."""
    return "".join(f"\n--- {f.relative_to(logs)}\n{f.read_text()[-3000:]}" for f in sorted(logs.rglob("*.log")))


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_single_process_loss_curve(folders, tmp_path):
    args = distill_args(folders[0], epochs=1)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(*args, "--out", str(one)), check=True, capture_output=True)
    logs = tmp_path / "logs"  # each rank's own stdout/stderr: the agent's trace alone never says why a rank died
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*torchrun, "--log-dir", str(logs), "--redirects", "3", "-m", "robustsim", "train", *args, "--out", str(two)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:] + _rank_logs(logs)

    def curve(path: Path) -> list[float]:
        records = [json.loads(s) for s in (path / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["event"] == "step"]

    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=2e-3)
    start = json.loads((two / "log.jsonl").read_text().splitlines()[0])
    assert start["world"] == 2


@settings(max_examples=25, deadline=None)
@given(step=st.integers(0, 999), total=st.integers(1, 1000), warmup=st.floats(0, 0.5))
def test_lr_schedule_warms_up_then_decays(step, total, warmup):
    step = min(step, total - 1)
    lr = lr_at(step, total, warmup, 0.01)
    assert 0 <= lr <= 0.01 + 1e-12
    if step + 1 < total:
        w = max(1, round(warmup * total)) if warmup > 0 else 0
        nxt = lr_at(step + 1, total, warmup, 0.01)
        assert nxt >= lr if step + 1 < w else nxt <= lr + 1e-12


def test_hinge_loss_on_hand_computed_cases():
    e = torch.tensor([[1.0, 0.0]])
    e0 = torch.tensor([[0.0, 1.0]])  # d0 = 1
    e1 = torch.tensor([[1.0, 0.0]])  # d1 = 0 -> l = d0 - d1 = 1
    assert float(hinge_2afc(e, e0, e1, torch.tensor([1.0]), 0.5)) == pytest.approx(0.0)  # right by 1 > margin
    assert float(hinge_2afc(e, e0, e1, torch.tensor([0.0]), 0.5)) == pytest.approx(1.5)  # wrong: 0.5 + 1
    assert float(hinge_2afc(e, e0, e1, torch.tensor([0.5]), 0.5)) == pytest.approx(0.0)  # no label


def test_augmentation_is_the_same_whichever_process_computes_a_row():
    x = torch.rand(8, 3, 16, 16)
    full = augment(x, step_generator(3, 7), slice(None), 8)
    assert full.min() >= 0 and full.max() <= 1 and not torch.allclose(full, x)
    for rank in (0, 1):
        part = augment(x[rank::2], step_generator(3, 7), slice(rank, None, 2), 8)
        torch.testing.assert_close(part, full[rank::2])


def test_resume_refuses_truncated_state_and_a_negative_step(tmp_path, capsys):
    from safetensors.torch import save_file

    from robustsim.models.checkpoint import save_checkpoint
    from robustsim.models.lipsim import LipSimNet
    from robustsim.train.loop import RunConfig

    net = LipSimNet("nano", embed_dim=8, input_size=16)
    run_dir = tmp_path / "run"
    cfg = RunConfig(out=str(run_dir), epochs=1, batch_size=4)
    from dataclasses import asdict
    from types import SimpleNamespace

    meta = {"training": {"global_step": -5, "config": asdict(cfg), "optimizer": {"param_groups": [], "scalars": {}}}}
    task = SimpleNamespace(meta={})
    save_checkpoint(run_dir / "last", net, meta, extra_tensors={"rng.torch": torch.get_rng_state()})
    from robustsim.train.loop import _resume

    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(RobustsimError, match="global_step -5"):
        _resume(run_dir, net, opt, cfg, total=10, task=task)
    meta["training"]["global_step"] = 3
    save_checkpoint(run_dir / "last", net, meta, extra_tensors={"rng.torch": torch.get_rng_state()})
    state = run_dir / "last" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(RobustsimError, match="corrupt or truncated"):
        _resume(run_dir, net, opt, cfg, total=10, task=task)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "unused.safetensors"))


def test_a_resume_checks_settings_step_optimizer_and_log_against_the_saved_run(distilled, folders, tmp_path, capsys):
    """Issue 47: a resume under foreign settings is refused naming the setting (--force continues, saying so); an
    edited step, an optimizer moment of the wrong shape, an edited log line and a link planted as the log are one
    line or dropped, never a traceback, never written through."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    shutil.copytree(distilled[0], out)
    train, val = folders
    args = dict(teacher=TEACHER, student="nano", images=str(train), input_size=SIZE, eval_data="")

    def resume(**kw):
        return distill(**{**args, "val_images": str(val), **kw}, **run_kwargs(out, epochs=4, resume=True))

    with pytest.raises(RobustsimError, match="--val-images: '.*' -> None differs from the saved run.*--force"):
        resume(val_images=None)
    with pytest.raises(RobustsimError, match="--limit: None -> 64 differs"):
        resume(limit=64)
    config = out / "last" / "config.json"
    saved = json.loads(config.read_text())
    edited = json.loads(config.read_text())
    edited["training"]["global_step"] -= 1
    config.write_text(json.dumps(edited))
    with pytest.raises(RobustsimError, match="optimizer has taken"):
        resume()
    config.write_text(json.dumps(saved))
    state = out / "last" / "state.safetensors"
    tensors = load_file(str(state))
    moment = next(k for k in tensors if k.endswith("exp_avg"))
    save_file({**tensors, moment: torch.zeros(3, 5)}, str(state))
    with pytest.raises(RobustsimError, match="does not fit this run.*shape"):
        resume()
    save_file(tensors, str(state))
    log = out / "log.jsonl"
    log.write_text(log.read_text() + '{"step": null}\n{"step": "x"}\n[1]\n')
    resume(force=True)  # nothing differs: --force changes nothing, the edited lines are dropped
    assert all(isinstance(json.loads(line)["step"], int) for line in log.read_text().splitlines())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    log.unlink()
    log.symlink_to(victim)
    with pytest.raises(RobustsimError, match="symbolic link"):
        resume()
    assert victim.read_text() == "keep\n"
    log.unlink()
    capsys.readouterr()
    resume(val_images=None, force=True)
    assert "--resume --force: continuing under --val-images" in capsys.readouterr().err


def test_train_limit_and_max_steps_make_a_one_minute_run(tmp_path):
    out = tmp_path / "run"
    argv = [
        "train",
        "distill",
        "--teacher",
        "effnet-lite0",
        "--student",
        "nano",
        "--input-size",
        "32",
        "--limit",
        "48",
        "--max-steps",
        "3",
        "--batch-size",
        "16",
        "--eval-data",
        "",
        "--out",
        str(out),
    ]
    assert run_cli(argv) == 0
    steps = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2, 3]
    assert json.loads((out / "last" / "config.json").read_text())["training"]["global_step"] == 3
