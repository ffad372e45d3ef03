"""Every command and Python snippet README.md and docs/*.md show runs (tests/docs_commands.py collects them):
`--dry-run` where the verb has it, otherwise on a few triplets; exit 0, or the documented refusal."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch
from conftest import make_csv_triplets, make_nights, run_cli
from docs_commands import Command, commands, snippets

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docs")]

DRY = {"audit", "certify", "bench"}  # verbs with --dry-run: the cost estimate, nothing written
ONE_STEP = ["--limit", "8", "--batch-size", "8", "--max-steps", "1", "--epochs", "1", "--eval-data", ""]
TINY = {  # a few triplets (a dry run of 8 estimates from counted passes, without a trial run), one step
    "audit": ["--limit", "8"],
    "certify": ["--limit", "8"],
    "bench": ["--limit", "8"],
    "score": ["--limit", "2"],
    "retrieval": ["--limit", "2", "--steps", "1"],
    # training: one step, and no final summary (its certificates of 200 triplets: tests/test_train.py runs them)
    "train distill": [*ONE_STEP, "--val-images", ""],
    "train finetune": [*ONE_STEP, "--val", "mini:val"],
}
REQUIRED = {"bench": ["--metrics", "l2", "--data", "mini", "--limit", "2", "--out", "runs/inline"]}  # inline mentions
OVERWRITE = {"retrieval"}  # several pages show the same --out folder
PLACEHOLDERS = {"NAME_OR_CKPT": "lipsim-nano", "SPEC": "mini", "DIR": "runs/retrieval", "NAME": "lpips-alex"}
SKIP = {  # what the test cannot run here, and why
    "demo": "the demo itself: `make demo` runs it and benchmarks/bench_demo.py times it",
    "weights fetch": "downloads (tests/test_weights.py serves the files from a local server)",
    "weights add": "needs the user's file (tests/test_weights.py adds real and hostile files)",
}


def _prepared(cmd: Command, nights: Path) -> tuple[list[str] | None, int, str]:
    """(argv to run or None to skip, the exit code the docs promise, why skipped)."""
    argv = [PLACEHOLDERS.get(w, w).replace("/data/nights", str(nights)) for w in cmd.argv]
    if any("..." in w for w in argv):
        return None, 0, "a usage outline with '...' (its commands are shown in full on their own page)"
    verb = " ".join(argv[:2]) if argv[0] in ("train", "weights") else argv[0]
    if verb in SKIP:
        return None, 0, SKIP[verb]
    if verb in DRY:
        argv.append("--dry-run")
    given = set(argv)
    for opt, value in _pairs([*TINY.get(verb, []), *REQUIRED.get(verb, [])]):
        if opt in argv and opt in TINY.get(verb, []):
            argv[argv.index(opt) + 1] = value
        elif opt not in given:
            argv += [opt, value]
    if verb in OVERWRITE and "--out" in argv:
        argv.append("--overwrite")
    expect = (
        2
        if ("--device" in argv and argv[argv.index("--device") + 1] == "cuda" and not torch.cuda.is_available())
        else 0
    )
    return argv, expect, ""


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder the docs' relative paths live in, with the reports their `plot` commands read."""
    root = tmp_path_factory.mktemp("docs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name, metric in (("audit-a", "l2"), ("audit-b", "ssim"), ("audit-l2", "l2"), ("audit-nano", "lipsim-nano")):
            assert (
                run_cli(
                    [
                        "audit",
                        "--metric",
                        metric,
                        "--limit",
                        "4",
                        "--steps",
                        "1",
                        "--eps",
                        "0.5",
                        "--out",
                        f"runs/{name}",
                    ]
                )
                == 0
            )
        for name in ("out_a.json", "out_b.json"):
            assert run_cli(["certify", "--metric", "lipsim-nano", "--limit", "4", "--json", name]) == 0
    finally:
        os.chdir(cwd)
    make_nights(root / "nights")
    make_csv_triplets(root / "my-triplets")
    return root


ALL = list({c.argv: c for c in reversed(commands())}.values())[::-1]  # each distinct command once, first page first
PAGES = list(dict.fromkeys(c.page for c in ALL))


def test_the_docs_show_commands_and_snippets():
    pages = {c.page for c in ALL}
    assert {"README.md", "docs/audit.md", "docs/certify.md", "docs/bench.md", "docs/train.md"} <= pages
    assert len(ALL) > 40 and len(snippets()) >= 4


@pytest.mark.parametrize("page", PAGES)
def test_every_documented_command_runs(page: str, workspace: Path, monkeypatch, capsys):
    """A page's commands in the order it shows them (a later one may use what an earlier one wrote)."""
    monkeypatch.chdir(workspace)
    failed = []
    for cmd in (c for c in ALL if c.page == page):
        argv, expect, _why = _prepared(cmd, workspace / "nights")
        if argv is None:
            continue
        code = run_cli(argv)
        err = capsys.readouterr().err
        if code != expect:
            failed.append(f"robustsim {' '.join(argv)} (line {cmd.line}) exited {code}: {err[-600:]}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("snippet", snippets(), ids=lambda s: f"{s.page}:{s.line}")
def test_every_documented_python_snippet_runs_as_written(snippet, workspace: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    runpy.run_path(str(script), run_name="__main__")
