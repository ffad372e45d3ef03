"""Every option of every command, fed hostile values of its kind, derived from the CLI itself: the test walks
click's command tree, so an option is covered the day it is added (and a command without a cheap baseline run here
fails the test). For each (command, parameter, value): exit 0 or 2, no traceback, at most one error line, no raw
control character echoed to the terminal, and nothing written outside the case's --out folder (the value itself,
when it names an output, and robustsim's cache and weights folders aside); ``$TMPDIR`` is left empty."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click
import numpy as np
import pytest
from conftest import random_image, run_cli, save_png

from robustsim.cli import cli

pytestmark = pytest.mark.xdist_group("fuzz-tree")

FIFO, LINK, FOLDER = "<fifo>", "<link>", "<folder>"
VALUES = [
    "",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "-1",
    "0",
    "9" * 40,
    "~nosuchuser/x",
    "n" * 300,
    ("d" * 60 + "/") * 84,
    "\x1b[2J\x1b[Hall tests passed",
    "\u202egnp.x",
    FIFO,
    LINK,
    FOLDER,
]
OUTPUTS = {"out_dir", "out", "json", "plot"}


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, sub in group.commands.items():
        here = (*path, name)
        found += leaves(sub, here) if isinstance(sub, click.Group) else [(here, sub)]
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for k in ("r0", "a0", "b0", "r1", "a1", "b1"):
        save_png(root / "set" / f"{k}.png", random_image(rng, 16))
    (root / "set" / "ok.csv").write_text("ref,x0,x1,p\nr0.png,a0.png,b0.png,1\nr1.png,a1.png,b1.png,0\n")
    vsd = root / "vsd"
    for k in "abc":
        save_png(vsd / "images" / f"{k}.png", random_image(rng, 16))
    (vsd / "pairs.csv").write_text("query,candidate,label\na.png,b.png,1\na.png,c.png,0\n")
    for i in range(8):
        save_png(root / "imgs" / f"{i}.png", random_image(rng, 32))
    from robustsim.zoo import shipped_checkpoints

    shutil.copytree(next(p for p in shipped_checkpoints() if p.name == "lipsim-nano"), root / "init")
    (root / "junk.bin").write_bytes(b"\0" * 64)
    (root / "target.txt").write_text("a file a link points to\n")
    (root / "tmp").mkdir()
    return {"root": root}


def baseline(cmd: tuple[str, ...], root: Path, out: Path) -> list[str]:
    """A cheap run of ``cmd`` that succeeds (or fails late, offline) here; the fuzzed option is appended after it."""
    csv = f"csv:{root / 'set' / 'ok.csv'}"
    from robustsim.weights import manifest

    weight = next(iter(manifest()))
    train = ["--max-steps", "1", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--eval-data", ""]
    return {
        ("metrics",): [],
        ("weights", "list"): [],
        ("weights", "verify"): [],
        ("weights", "fetch"): [weight],
        ("weights", "add"): [weight, str(root / "junk.bin")],
        ("weights", "path"): [weight],
        ("score",): ["--metrics", "l2", "--data", csv, "--device", "cpu", "--json", str(out / "s.json")],
        ("certify",): ["--metric", "l2", "--data", csv, "--device", "cpu", "--out", str(out)],
        ("audit",): ["--metric", "l2", "--data", csv, "--steps", "1", "--device", "cpu", "--out", str(out)],
        ("bench",): ["--metrics", "l2", "--data", csv, "--device", "cpu", "--out", str(out)],
        ("retrieval",): ["--metric", "l2", "--data", f"vsd:{root / 'vsd'}", "--k", "1", "--steps", "1",
                         "--device", "cpu", "--out", str(out)],  # fmt: skip
        ("plot",): [str(root / "set" / "ok.csv"), "--out", str(out / "f.png")],
        ("demo",): ["--device", "nope"],
        ("train", "distill"): ["--teacher", "effnet-lite0", "--student", "nano", "--images", str(root / "imgs"),
                               "--val-images", "", "--input-size", "32", "--out", str(out), *train],  # fmt: skip
        ("train", "finetune"): ["--init", str(root / "init"), "--data", csv, "--val", "", "--out", str(out), *train],
    }[cmd]


ESCAPES = {chr(c) for c in range(32) if chr(c) not in "\n\r\t"} | {chr(127)} | {chr(c) for c in range(0x202A, 0x202F)}


def value_of(token: str, root: Path) -> str:
    return {FIFO: str(root / "fifo"), LINK: str(root / "link"), FOLDER: str(root / "folder")}.get(token, token)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    skip = {"outs", "cache", "weights", "home"}  # robustsim's state folders, and $HOME (matplotlib's font cache)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        if Path(dirpath) == root / "tmp":
            dirnames[:] = [d for d in dirnames if not d.startswith("torchinductor_")]
        for name in [*filenames, *dirnames]:
            path = Path(dirpath) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def reset(root: Path) -> None:
    """The planted nodes as each case expects them: a FIFO, a link to a file, an empty folder, an empty $TMPDIR."""
    for path in (root / "tmp").iterdir():  # torch keeps its compiler cache in $TMPDIR (an optimizer's step makes it)
        if not path.name.startswith("torchinductor_"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("fifo", "link", "folder", "outs"):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    os.mkfifo(root / "fifo")
    (root / "target.txt").write_text("a file a link points to\n")
    os.symlink(root / "target.txt", root / "link")
    (root / "folder").mkdir()
    (root / "outs").mkdir()


def cases(cmd: tuple[str, ...], command: click.Command):
    """(parameter, value) for every parameter that takes a value: flags have no hostile value."""
    for param in command.params:
        if param.name == "help" or getattr(param, "is_flag", False):
            continue
        for value in VALUES:
            yield param, value


def argv_for(cmd, command, param, value, root, out) -> list[str]:
    base = baseline(cmd, root, out)
    value = value_of(value, root)
    if isinstance(param, click.Argument):
        position = [p for p in command.params if isinstance(p, click.Argument)].index(param)
        base = [*base[:position], value, *base[position + 1 :]]
        return [*cmd, *base]
    return [*cmd, *base, param.opts[0], value]


def _torch_cache_made() -> None:
    """torch makes its compiler cache in $TMPDIR at an optimizer's first step: made here, before any case."""
    import torch

    layer = torch.nn.Linear(1, 1)
    layer(torch.ones(1, 1)).sum().backward()
    torch.optim.Adam(layer.parameters()).step()


COMMANDS = leaves(cli)


@pytest.mark.parametrize("cmd", [c for c, _ in COMMANDS], ids=" ".join)
def test_every_option_of_the_command_takes_hostile_values(world, cmd, monkeypatch, capsys):
    root = world["root"]
    command = dict(COMMANDS)[cmd]
    monkeypatch.chdir(root)
    for var, sub in (("ROBUSTSIM_CACHE", "cache"), ("ROBUSTSIM_WEIGHTS", "weights"), ("HOME", "home")):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("TMPDIR", str(root / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    _torch_cache_made()
    problems, count = [], 0
    for param, token in cases(cmd, command):
        count += 1
        reset(root)
        out = root / "outs" / "case"
        argv = argv_for(cmd, command, param, token, root, out)
        before = snapshot(root)
        try:
            code: int | str = run_cli(argv)
        except Exception as err:  # noqa: BLE001 - a traceback the user would see: recorded as this case's problem
            code = f"{type(err).__name__}: {err}"[:200]
        captured = capsys.readouterr()
        text = captured.out + captured.err
        errors = [line for line in captured.err.splitlines() if line.lower().startswith("error")]
        after = snapshot(root)
        allowed = ["outs"]
        if param.name in OUTPUTS:  # the output the case names: where it was asked to write (a link: its target)
            named = os.path.realpath(value_of(token, root)) if token else ""
            allowed += [os.path.relpath(named, root)] if named.startswith(f"{root}/") else []
        wrote = [p for p, v in after.items() if before.get(p) != v and not p.startswith(tuple(allowed))]
        wrote += [p for p in before if p not in after]
        case = f"{' '.join(cmd)} {param.opts[0] if param.opts else param.name}={token[:40]!r}"
        if code not in (0, 2):
            problems.append(f"{case}: exit {code}: {captured.err[-300:]!r}")
        elif "Traceback" in text:
            problems.append(f"{case}: traceback {captured.err[-300:]!r}")
        elif len(errors) > 1 or (code == 2 and len(errors) != 1):
            problems.append(f"{case}: {len(errors)} error lines {captured.err[-300:]!r}")
        elif ESCAPES & set(text):
            problems.append(f"{case}: raw control character in {text[-200:]!r}")
        elif wrote:
            problems.append(f"{case}: wrote outside --out: {wrote[:3]}")
        elif left := [p.name for p in (root / "tmp").iterdir() if not p.name.startswith("torchinductor_")]:
            problems.append(f"{case}: left {sorted(left)[:3]} in $TMPDIR")
    print(f"{' '.join(cmd)}: {count} cases")
    assert not problems, f"{len(problems)} of {count} cases:\n" + "\n".join(problems)


def test_every_command_has_a_baseline_and_the_tree_is_covered():
    """A new command needs a baseline here (KeyError otherwise); the case count grows with every option."""
    for cmd, _ in COMMANDS:
        assert isinstance(baseline(cmd, Path("/r"), Path("/o")), list)
    total = sum(1 for cmd, command in COMMANDS for _ in cases(cmd, command))
    assert total >= 16 * 110, total  # 1904 when written: 119 parameters x 16 values
