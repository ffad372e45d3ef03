import json
import subprocess
import sys

import pytest
from conftest import run_cli


def run(argv, capsys):
    code = run_cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_metrics_table(capsys):
    code, out, _ = run(["metrics"], capsys)
    assert code == 0
    assert "effnet-ensemble" in out and "lpips-alex" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("effnet-lite0 "))
    assert " built-in " in line


def test_score_nights_json(nights_dir, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    code, out, _ = run(
        ["score", "--metric", "l2", "--data", f"nights:{nights_dir}:test", "--json", str(out_json), "--device", "cpu"],
        capsys,
    )
    assert code == 0
    report = json.loads(out_json.read_text())
    res = report["results"][0]
    assert res["metric"] == "l2" and res["n"] == 3
    # the score in the file is the 2AFC score of the distances in the file
    import torch

    from robustsim.scoring import two_afc_score

    p = torch.tensor([0.0, 1.0, 1.0])
    assert res["score"] == pytest.approx(two_afc_score(torch.tensor(res["d0"]), torch.tensor(res["d1"]), p))
    assert "l2" in out and "2AFC" in out


def test_score_bapps(bapps_dir, capsys):
    code, out, _ = run(["score", "--metric", "l2,ssim", "--data", f"bapps:{bapps_dir}:val", "--groups"], capsys)
    assert code == 0
    assert "traditional" in out and "ssim" in out


def test_corrupt_png_exit_2_and_no_json(nights_dir, tmp_path, capsys):
    bad = nights_dir / "ref" / "002.png"
    bad.write_bytes(b"not a png")
    out_json = tmp_path / "out.json"
    code, _, err = run(
        ["score", "--metric", "l2", "--data", f"nights:{nights_dir}:test", "--json", str(out_json)], capsys
    )
    assert code == 2
    errors = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and errors[0].startswith("error: cannot read image")
    assert not out_json.exists() and not list(tmp_path.glob(".out.json*"))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["score", "--metric", "nope"], "unknown metric 'nope'"),
        (["score", "--data", "foo:x"], "unknown data spec kind"),
        (["score", "--device", "cuda:7"], "--device"),
        (["score", "--device", "toaster"], "not a device"),
        (["score", "--batch-size", "0"], "batch-size"),
        (["train", "distill", "--student", "huge", "--out", "/tmp/rs-never"], "unknown --student 'huge'"),
        (["train", "distill", "--input-size", "50", "--out", "/tmp/rs-never"], "not a multiple of 16"),
        (["train", "distill", "--images", "./no/such/dir", "--out", "/tmp/rs-never"], "does not exist"),
        (["train", "finetune", "--init", "/no/such/ckpt", "--out", "/tmp/rs-never"], "does not exist"),
    ],
)
def test_bad_input_exit_2(argv, match, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert match in err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "robustsim", "score", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--data" in proc.stdout and "nights:PATH" in proc.stdout
