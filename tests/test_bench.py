"""``robustsim bench`` (cells, cards, leaderboard), resumable after SIGKILL, sharded over torchrun
processes with per-triplet results identical to one process, the leaderboard sorted in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import chrome, run_cli

import robustsim

pytestmark = pytest.mark.xdist_group("bench")
ARGS = ["--metrics", "l2,lipsim-nano,not-a-metric", "--limit", "16", "--device", "cpu"]
# one thread in every run compared card for card: the same kernels on the same layouts (robustsim's default
# would pick the count from the machine's load, and another count splits reductions in another order)
BENCH = ["--threads", "1", "bench"]


def comparable(card: dict) -> dict:
    """A card without what legitimately differs between runs (times, package and runtime facts)."""
    drop = {"timings", "seconds", "seconds_this_run", "versions", "runtime"}
    return {k: v for k, v in card.items() if k not in drop}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "ref"
    assert run_cli([*BENCH, *ARGS, "--out", str(out)]) == 0
    return out


def test_bench_writes_cards_leaderboard_and_skips_what_cannot_run(reference):
    cards = {p.stem: json.loads(p.read_text()) for p in (reference / "cards").glob("*.json")}
    assert set(cards) == {"l2", "lipsim-nano"}
    nano = cards["lipsim-nano"]
    assert nano["protocol"]["name"] == "quick" and nano["protocol"]["version"] >= 1 and nano["data"]["n"] == 16
    assert nano["certified"]["method"] == "lipschitz" and cards["l2"]["certified"]["method"] == "none"
    for card in cards.values():
        robust = [v for tm in card["robust"].values() for v in tm.values()]
        assert all(0 <= v <= card["clean"] for v in robust)
    c36 = nano["certified"]["36/255"]
    assert c36 is not None and c36 <= nano["robust"]["l2-ref"]["0.5"] + 1e-9  # certified <= robust
    board = (reference / "leaderboard.md").read_text()
    assert "not-a-metric" in board and "unknown metric" in board and "| lipsim-nano |" in board
    assert (reference / "leaderboard.png").stat().st_size > 5000
    html = (reference / "leaderboard.html").read_text()
    assert "<script>" in html and "http" not in html.split("<script>")[1]  # self-contained
    # the tables say how many triplets the cells used, not the protocol's 100
    assert "first 100 triplets" not in board and "16 (the first 100 cut by --limit) triplets" in board
    assert "| n |" in board and "| 16 |" in board and "16 (the first 100 cut" in html
    # the pages say how rows are sorted and show the figure; a note speaks only of marks the rows use
    assert "Rows are sorted by robust accuracy" in board and "![clean vs robust per metric](leaderboard.png)" in board
    assert "Rows are sorted by robust accuracy" in html and 'src="data:image/png;base64,' in html
    assert ("(paper " in board) == any(c.get("reported") for c in cards.values())
    l2_html = (reference / "cards" / "l2.html").read_text()
    assert 'href="../leaderboard.html"' in l2_html and "data:image/png;base64," in l2_html
    assert "Weight files: none to fetch" in l2_html and "No certificate" in l2_html


def test_python_api_matches_the_bench_numbers(reference):
    card = json.loads((reference / "cards" / "l2.json").read_text())
    from robustsim.data import open_triplets

    clean, robust = robustsim.benchmark("l2", open_triplets("mini", limit=16), "l2", [0.5, 1.0])
    assert clean == pytest.approx(card["clean"]) and robust == pytest.approx(list(card["robust"]["l2-ref"].values()))


def test_changed_data_invalidates_cells_never_reused(reference, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(reference, out)
    cell = out / "cells" / "l2" / "clean.json"
    before = json.loads(cell.read_text())["key"]
    assert run_cli(["bench", "--metrics", "l2", "--limit", "12", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(cell.read_text())["key"] != before
    assert json.loads((out / "cards" / "l2.json").read_text())["data"]["n"] == 12


@pytest.mark.parametrize("edit", ["not a number", "hand-edited score"])
def test_a_tampered_cell_is_recomputed_with_one_warning(reference, tmp_path, capsys, edit):
    """A cell with the right key but ``{"score": "x"}`` or a hand-edited score was reported as
    measured. Cells carry a checksum of their result; an invalid one is recomputed, saying so in one line."""
    out = tmp_path / "b"
    shutil.copytree(reference, out)
    cell = out / "cells" / "l2" / "clean.json"
    saved = json.loads(cell.read_text())
    real = saved["result"]["score"]
    saved["result"]["score"] = "x" if edit == "not a number" else 0.999
    cell.write_text(json.dumps(saved))
    capsys.readouterr()
    assert run_cli([*BENCH, *ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert sum("recomputing it" in ln for ln in err.splitlines()) == 1
    assert json.loads((out / "cards" / "l2.json").read_text())["clean"] == pytest.approx(real)
    assert json.loads(cell.read_text())["result"]["score"] == pytest.approx(real)


@pytest.mark.slow
def test_a_bench_killed_mid_run_resumes_to_the_same_cards(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "robustsim", *BENCH, *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "cells").glob("lipsim-nano/*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "cells").rglob("*.json")))
    assert 0 < done_before < len(list((reference / "cells").rglob("*.json")))  # killed part-way
    assert not list((out / "cards").glob("lipsim-nano.json"))
    assert run_cli([*BENCH, *ARGS, "--out", str(out)]) == 0
    for name in ("l2", "lipsim-nano"):
        got = json.loads((out / "cards" / f"{name}.json").read_text())
        want = json.loads((reference / "cards" / f"{name}.json").read_text())
        assert comparable(got) == comparable(want)


def _torchrun(nproc: int, argv: list[str], cwd: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "robustsim",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTSIM_THREADS": "1"}  # one thread in every process
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.portable
@pytest.mark.slow
def test_two_processes_give_the_per_triplet_results_of_one(tmp_path):
    """Score, audit and certify under torchrun (2 CPU processes, gloo) against one process. Every process runs one
    thread and batches of 4 (24 triplets: 6 batches in one process, 3 in each of two), so both runs evaluate every
    triplet with the same kernels on the same layouts and must agree triplet by triplet."""
    out = {}
    same = ["--device", "cpu", "--batch-size", "4"]
    for n in (1, 2):
        d = tmp_path / f"p{n}"
        d.mkdir()
        _torchrun(n, ["score", "--metric", "l2,lipsim-nano", "--limit", "24", "--json", "score.json", *same], d)
        _torchrun(n, ["audit", "--metric", "l2", "--limit", "24", "--steps", "5", "--out", "audit", *same], d)
        _torchrun(n, ["certify", "--metric", "lipsim-nano", "--limit", "24", "--json", "cert.json", *same], d)
        out[n] = (
            json.loads((d / "score.json").read_text()),
            json.loads((d / "audit" / "report.json").read_text()),
            json.loads((d / "cert.json").read_text()),
        )
    (s1, a1, c1), (s2, a2, c2) = out[1], out[2]
    import torch

    from robustsim.scoring import two_afc_choice

    for r1, r2 in zip(s1["results"], s2["results"], strict=True):
        assert r1["score"] == r2["score"] and r1["n"] == r2["n"] == 24
        assert torch.equal(
            two_afc_choice(torch.tensor(r1["d0"]), torch.tensor(r1["d1"])),
            two_afc_choice(torch.tensor(r2["d0"]), torch.tensor(r2["d1"])),
        )
        assert torch.allclose(torch.tensor(r1["d0"]), torch.tensor(r2["d0"]), atol=1e-6)
    assert a1["per_triplet"] == a2["per_triplet"] and a1["robust"] == a2["robust"]
    assert [t["clean"] for t in c1["triplets"]] == [t["clean"] for t in c2["triplets"]]
    assert c1["curve"] == c2["curve"]
    r1, r2 = (torch.tensor([t["radius"] for t in c["triplets"]]) for c in (c1, c2))
    assert torch.allclose(r1, r2, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_the_leaderboard_sorts_in_a_real_browser(reference, tmp_path):
    from selenium.webdriver.common.by import By

    browser = chrome()
    try:
        browser.get((reference / "leaderboard.html").resolve().as_uri())
        headers = browser.find_elements(By.CSS_SELECTOR, "#board th")
        col = next(i for i, h in enumerate(headers) if h.text.strip().startswith("clean"))

        def column() -> list[float]:
            rows = browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")
            return [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v")) for r in rows]

        headers[col].click()
        assert column() == sorted(column()) and len(column()) == 2
        headers[col].click()
        assert column() == sorted(column(), reverse=True)
        shot = tmp_path / "board.png"
        browser.save_screenshot(str(shot))
        from PIL import Image

        with Image.open(shot) as im:
            assert im.size[0] >= 800 and im.size[1] >= 400
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()


@pytest.mark.slow
def test_each_leaderboard_row_links_to_its_card_page(reference):
    """The leaderboard links each metric to ``cards/<metric>.html``, an offline page showing the
    card's numbers."""
    from selenium.webdriver.common.by import By

    card = json.loads((reference / "cards" / "lipsim-nano.json").read_text())
    browser = chrome()
    try:
        browser.get((reference / "leaderboard.html").resolve().as_uri())
        browser.find_element(By.LINK_TEXT, "lipsim-nano").click()
        assert browser.current_url.endswith("cards/lipsim-nano.html")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert f"{100 * card['clean']:.1f}" in text and "lipsim-nano" in text
        # the card page shows its figure (a real, drawn image), says which certificate it holds, and links back
        img = browser.find_element(By.CSS_SELECTOR, "img")
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 300
        assert "Lipschitz proof for the metric itself" in text
        browser.find_element(By.LINK_TEXT, "the leaderboard").click()
        assert browser.current_url.endswith("/leaderboard.html")
        board = browser.find_element(By.TAG_NAME, "body").text
        assert "Rows are sorted by" in board
        figure = browser.find_element(By.CSS_SELECTOR, "figure img")
        assert browser.execute_script("return arguments[0].naturalWidth", figure) > 300
    finally:
        browser.quit()


def test_bench_smoothing_adds_the_center_smoothing_bound_of_metrics_without_a_lipschitz_bound(reference, tmp_path):
    """--smoothing: l2 (no Lipschitz certificate) gets the center-smoothing bound at each certified radius, the
    very numbers certify_center gives on the same images with the bench's settings; lipsim-nano keeps its
    Lipschitz proof and no bound; the leaderboard gains the column only then."""
    from robustsim.bench.run import CENTER
    from robustsim.certify import certify_center
    from robustsim.data import open_triplets

    out = tmp_path / "smoothed"
    args = ["--metrics", "l2,lipsim-nano", "--limit", "4", "--device", "cpu", "--smoothing", "0.5"]
    assert run_cli(["bench", *args, "--out", str(out)]) == 0
    cards = {p.stem: json.loads(p.read_text()) for p in (out / "cards").glob("*.json")}
    protocol = robustsim.bench.get_protocol("quick")
    settings = {k: v for k, v in CENTER.items() if k != "images"}
    alpha = protocol.smoothing["alpha"]
    want = certify_center(
        robustsim.load_metric("l2"),
        open_triplets("mini", limit=4),
        protocol.certified_eps,
        0.5,
        alpha=alpha,
        progress=False,
        **settings,
    )
    assert want is not None
    bounds = cards["l2"]["certified"]["center_bound"]
    assert list(bounds.values()) == pytest.approx([want.median_bound(e) for e in protocol.certified_eps])
    assert all(v is not None and v > 0 for v in bounds.values())
    assert set(cards["lipsim-nano"]["certified"]["center_bound"].values()) == {None}
    assert cards["lipsim-nano"]["certified"]["method"] == "lipschitz"
    board = (out / "leaderboard.md").read_text()
    assert "| center bound 36/255 |" in board and f"| {bounds['36/255']:.4g} |" in board
    assert "center bound" not in (reference / "leaderboard.md").read_text()
    # two kinds of certificate never share a column unmarked: l2's is of the smoothed metric, lipsim-nano's a proof
    smoothed = cards["l2"]["certified"]
    assert smoothed["method"].startswith("smoothing") and smoothed["n"] == protocol.smoothing["n"]
    assert smoothed["alpha"] == alpha and 0 <= smoothed["abstain_rate"] <= 1
    rows = {line.split("|")[1].strip(): line for line in board.splitlines() if line.startswith("| ")}
    cert36 = rows["l2"].split("|")[[h.strip() for h in rows["metric"].split("|")].index("cert. 36/255")]
    assert cert36.strip().endswith("(smoothed)") and "(smoothed)" not in rows["lipsim-nano"]
    assert "randomized-smoothing certificate of the SMOOTHED metric" in board
    unsmoothed = (reference / "leaderboard.md").read_text()
    assert "(smoothed)" not in unsmoothed and "SMOOTHED" not in unsmoothed
    page = (out / "cards" / "l2.html").read_text()
    assert "a certificate of the SMOOTHED metric, not of the metric itself" in page and "abstained on" in page
    assert "data:image/png;base64," in page


def test_sharing_the_clean_embeddings_over_threat_models_changes_no_number(tmp_path):
    """The bench embeds each clean image once per metric for all its attack cells; the cards are
    those of a bench that embeds them again for every threat model."""
    from robustsim.bench import run

    cards = {
        reuse: run(
            ["lipsim-nano"], "mini", tmp_path / str(reuse), limit=8, progress=False, log=lambda *a: None, reuse=reuse
        )
        for reuse in (True, False)
    }
    shared, again = cards[True]["lipsim-nano"], cards[False]["lipsim-nano"]
    assert (shared["clean"], shared["robust"], shared["certified"]) == (
        again["clean"],
        again["robust"],
        again["certified"],
    )
