"""The command line: tables and JSON, one-line errors with exit 2 for bad input, packaging and --help."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, one_error_line, random_image, run, run_cli, save_png

from robustsim.errors import RobustsimError


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
        (["score", "--data", "foo:x"], "is not a data spec"),
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
    """The installed ``robustsim`` script (not ``python -m``): --help lists every command, --version the package's,
    and a command's --help documents its options and the data specs."""
    import robustsim
    from robustsim.cli import cli

    script = Path(sys.executable).with_name("robustsim")
    assert script.is_file(), "the console script is not installed beside the interpreter"
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and all(name in top.stdout for name in cli.commands)
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and robustsim.__version__ in version.stdout
    proc = subprocess.run([str(script), "score", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--data" in proc.stdout and "nights:PATH" in proc.stdout


def test_known_bad_inputs_are_one_line_and_exit_2(tmp_path, csv_set, bapps_dir, capsys):
    for argv, match in _bad_inputs(tmp_path, csv_set, bapps_dir):
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert match in err and "Traceback" not in err + out, (argv, err)
    with pytest.raises(RobustsimError, match="at least 3x3"):
        from robustsim.zoo import load_metric

        load_metric("ssim")(torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1))


def test_a_missing_optional_package_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips now fails as if not installed
    code, _, err = run(["score", "--metric", "lpips-alex", "--data", "mini", "--limit", "2"], capsys)
    assert code == 2 and "robustsim[zoo]" in one_error_line(err)


def test_packaging_license_data_namespace_and_help(capsys):
    import robustsim

    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and hasattr(robustsim, "data")
    for cmd in (["score"], ["audit"], ["certify"], ["retrieval"], ["train", "distill"], ["train", "finetune"]):
        assert run_cli([*cmd, "--help"]) == 0
        limit = capsys.readouterr().out.split("--limit")[1].split("--")[0]
        assert any(w in limit for w in ("triplets", "queries", "images")), (cmd, limit)


def _bad_inputs(tmp_path: Path, csv_set: Path, bapps_dir: Path) -> list[tuple[list[str], str]]:
    short = tmp_path / "short.csv"
    short.write_text("ref,x0,x1,p\nr0.png,a0.png\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("ref,x0,x1,p\nr\xe9.png,a.png,b.png,1\n".encode("latin-1"))
    mixed = csv_set.parent / "mixed.csv"
    save_png(csv_set.parent / "big.png", random_image(np.random.default_rng(1), 24))
    mixed.write_text("ref,x0,x1,p\nr0.png,a0.png,b0.png,1\nbig.png,big.png,big.png,0\n")
    outside = csv_set.parent / "outside.csv"
    outside.write_text("ref,x0,x1,p\n../../../etc/passwd,a0.png,b0.png,1\n")
    (bapps_dir / "2afc" / "val" / "color" / "p0").mkdir(parents=True)
    bad_report = tmp_path / "bad-report.json"
    bad_report.write_text('{"kind": "audit", "metric": "m", "data": "d", "eps": [0.5], "robust": "x"}')
    return [
        (["score", "--metric", "l2", "--data", f"csv:{short}"], "too few fields"),
        (["score", "--metric", "l2", "--data", f"csv:{latin}"], "not UTF-8"),
        (["score", "--metric", "l2", "--data", f"csv:{mixed}"], "different sizes"),
        (["score", "--metric", "l2", "--data", f"csv:{outside}"], "--allow-outside"),
        (["score", "--metric", "l2", "--data", f"bapps:{bapps_dir}:val:color"], "does not exist"),
        (["score", "--metric", "l2", "--device", "meta"], "not supported"),
        (["score", "--metric", "l2", "--device", "mps"], "not supported"),
        (["score", "--metric", "l2", "--batch-size", "1e23"], "batch-size"),
        (["audit", "--metric", "l2", "--eps", "1e309"], "finite"),
        (["audit", "--metric", "l2", "--attacks", "foolbox:Attack"], "no usable attack"),
        (["audit", "--metric", "l2", "--attacks", "foolbox:LinfPGD"], "pass --norm linf"),
        (["plot", str(bad_report), "--out", str(tmp_path / "x.png")], "'robust' must list"),
        (["plot", str(bad_report), "--out", str(tmp_path / "x.txt")], "figure suffix"),
        (["score", "--metric", "l2\nfake result line", "--data", f"csv:{csv_set}"], "control character"),
    ]


def test_a_second_demo_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Two demos at once were refused only at their retrieval or bench section, after minutes of
    duplicated work; the demo claims runs/demo first."""
    import time

    from conftest import lock_holder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    with lock_holder(tmp_path / "runs" / "demo") as pid:
        t0 = time.monotonic()
        assert run_cli(["demo", "--quick"]) == 2
        err = capsys.readouterr()
        assert time.monotonic() - t0 < 5 and f"in use by process {pid}" in err.err and "2AFC" not in err.out


UNKNOWN_METRIC = [
    (["score", "--device", "cpu", "--metric", "l2,lpips-alx"], "unknown metric 'lpips-alx'", "lpips-alex"),
    (["audit", "--device", "cpu", "--metric", "nosuch"], "unknown metric 'nosuch'", "robustsim metrics"),
    (["certify", "--metric", "l2+dinov2-s41"], "in the ensemble 'l2+dinov2-s41'", "dinov2-s14"),
    (["train", "distill", "--teacher", "effnet-ensembel"], "unknown metric 'effnet-ensembel'", "effnet-ensemble"),
]


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["audit", "--bogus"], ["certify", "--norm", "l3"], ["train", "--help"]]
    + [a for a, *_ in UNKNOWN_METRIC],
)
def test_help_and_bad_options_are_answered_without_importing_torch(argv):
    """`robustsim --help`, a mistyped option and an unknown metric (even after --device) must not pay torch's
    import (seconds on a loaded machine)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom robustsim.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "TORCH False" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(("argv", "says", "hint"), UNKNOWN_METRIC)
def test_an_unknown_metric_is_one_line_naming_it_and_the_closest_names(argv, says, hint, capsys):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and hint in err, err


def test_the_clis_names_are_the_zoos(tmp_path):
    """The torch-free name check knows exactly what load_metric knows before any register_metric, and lets a
    path through (load_metric says what is wrong with it)."""
    from robustsim.zoo import list_metrics
    from robustsim.zoo.names import builtin_names, check_metric_name

    assert builtin_names() == list_metrics()
    for name in list_metrics():
        check_metric_name(name)
    check_metric_name("l2+ssim")
    check_metric_name(str(tmp_path))
    with pytest.raises(RobustsimError, match="unknown metric 'ssim2'"):
        check_metric_name("l2+ssim2")


def test_a_command_run_through_ctx_invoke_gets_the_values_its_options_would_give(capsys):
    """The demo runs score, certify, audit and bench through ctx.invoke, which skips option callbacks: the values a
    command receives must not depend on them (a comma-separated --metric, the default --batch-size auto)."""
    import click

    from robustsim.cli.score import score_cmd

    @click.command()
    @click.pass_context
    def outer(ctx):
        ctx.invoke(score_cmd, metrics="l2,ssim", device=torch.device("cpu"), limit=8)

    outer.main([], standalone_mode=False)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    from robustsim.data import open_triplets
    from robustsim.score2afc import evaluate_2afc
    from robustsim.table import pct
    from robustsim.zoo import load_metric

    data = open_triplets("mini", limit=8)
    want = [[n, pct(evaluate_2afc(load_metric(n), data, progress=False).score), "8"] for n in ("l2", "ssim")]
    assert [r[:3] for r in rows if r and r[0] in ("l2", "ssim")] == want


def _choice_params():
    """(command path, option, click parameter) of every choice the CLI offers."""
    import click

    from robustsim.cli import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))
        for p in cmd.params:
            if isinstance(p.type, click.Choice):
                yield " ".join(path), p.opts[0], p

    return list(walk(cli, ()))


def test_every_cli_choice_list_is_its_registry_and_accepts_every_registered_name():
    """The protocol list was a hand-written copy that lacked croce2024 and lipsim. Every choice
    list the CLI shows is computed from the registry it names, and every registered name passes the option."""
    import click

    import robustsim.certify as certify
    from robustsim.bench.protocol import PROTOCOLS
    from robustsim.certify.radius import MODES
    from robustsim.nn import LAYERS
    from robustsim.overlay import KINDS
    from robustsim.retrieval.index import BACKENDS
    from robustsim.settings import PRECISIONS
    from robustsim.threat import NORMS, TARGETS
    from robustsim.train.finetune import LOSSES, SELECTIONS
    from robustsim.zoo.registry import DTYPES

    registries = {
        "--protocol": list(PROTOCOLS),
        "--method": ["auto", *certify.METHODS],
        "--mode": list(MODES),
        "--precision": list(PRECISIONS),
        "--kind": list(KINDS),
        "--index": list(BACKENDS),
        "--select": list(SELECTIONS),
        "--loss": list(LOSSES),
        "--layer": list(LAYERS),
        "--norm": list(NORMS),
        "--target": list(TARGETS),
        "--dtype": list(DTYPES),
    }
    seen = set()
    for command, option, param in _choice_params():
        assert option in registries, f"{command} {option}: a choice list with no registry"
        assert list(param.type.choices) == registries[option], (command, option)
        ctx = click.Context(click.Command(command))
        for name in registries[option]:
            assert param.type.convert(name, param, ctx) == name
        seen.add(option)
    assert seen == set(registries)


def test_the_reference_page_shows_real_defaults_and_whole_summaries():
    """Docs/cli.md (mkdocs-click) showed `Sentinel.UNSET` 42 times and summaries cut mid-sentence.
    Every option now declares its default, and every command's first help line is one whole sentence."""
    import click

    from robustsim.cli import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))
        yield " ".join(path), cmd

    for path, cmd in walk(cli, ()):
        first = (cmd.help or "").strip().splitlines()[0]
        assert first.endswith(".") and len(first) <= 110, (path, first)
        ctx = click.Context(cmd)
        for param in [*cmd.params, cmd.get_help_option(ctx)]:
            if isinstance(param, click.Option):
                assert "Sentinel" not in repr(param.default), (path, param.opts)
