"""The experiments' table code: per-category BAPPS scores on a fixture, and the --check comparison."""

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from robustsim.data import open_triplets
from robustsim.score2afc import evaluate_2afc
from robustsim.zoo import load_metric

sys.path.insert(0, str(ROOT / "experiments"))
from tables import check_table, table_numbers  # noqa: E402


def load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", ROOT / "experiments" / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bapps_table_matches_independent_per_category_scores(bapps_dir: Path):
    bt = load_experiment("bapps_table")
    scores = bt.category_scores(["l2", "ssim"], bapps_dir, "val")
    # judges are 0.25, 0.5, 0.75 (traditional) and 0.25, 0.5 (cnn): human = mean of p^2 + (1 - p)^2
    assert scores["human"] == pytest.approx({"traditional": (0.625 + 0.5 + 0.625) / 3, "cnn": (0.625 + 0.5) / 2})
    for name in ("l2", "ssim"):
        for cat in ("traditional", "cnn"):
            res = evaluate_2afc(load_metric(name), open_triplets(f"bapps:{bapps_dir}:val:{cat}"))
            assert scores[name][cat] == pytest.approx(res.score)
    text = bt.lpips_layout(scores)
    header = text.splitlines()[0]
    assert header.startswith("| metric | Trad. | CNN | Dist. all | Super-res |") and header.endswith("| All |")
    rows = dict(table_numbers(text))
    trad, cnn = 100 * scores["l2"]["traditional"], 100 * scores["l2"]["cnn"]
    # the four real-algorithm categories are absent: '-' cells carry no number
    expected = [round(v, 1) for v in (trad, cnn, (trad + cnn) / 2, (trad + cnn) / 2)]
    assert rows["l2"] == pytest.approx(expected, abs=0.051)


def test_check_table_accepts_within_tolerance_and_rejects_beyond(tmp_path: Path):
    committed = tmp_path / "table.md"
    head = "| metric | a | b |\n|---|---|---|\n"
    committed.write_text(head + "| l2 | 70.0 | - |\n| x | 50.5 | 60.0 |\n")
    assert check_table(head + "| l2 | 70.1 | - |\n| x | 50.5 | 59.95 |\n", committed, 0.1)
    assert not check_table(head + "| l2 | 70.3 | - |\n| x | 50.5 | 60.0 |\n", committed, 0.1)
    assert not check_table(head + "| l1 | 70.0 | - |\n| x | 50.5 | 60.0 |\n", committed, 0.1)


def test_the_results_page_is_generated_from_the_committed_tables():
    """docs/results.md is ``experiments/tables.py --docs``'s output: it cannot drift from the committed tables."""
    from tables import RESULTS_PAGE, results_page

    assert RESULTS_PAGE.read_text() == results_page(), "run `python experiments/tables.py --docs`"
