"""The docs' generated blocks: every number a page quotes from a run sits between

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

and is rendered here from a kept run (``docs/runs/<name>.json``, made by ``experiments/docs_runs.py``) or from the
shipped cards. ``python experiments/tables.py --docs`` rewrites every block; ``tests/test_docs_numbers.py`` checks
that each page shows what its sources hold and that no table outside a block quotes a run's numbers by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "runs"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)
SHIPPED = ("lipsim-nano-aoc", "lipsim-nano-cert", "lipsim-nano")
RADII = ("36/255", "72/255", "108/255")


def run(name: str) -> dict:
    return json.loads((RUNS / f"{name}.json").read_text())


def card(name: str) -> dict:
    return json.loads((ROOT / "robustsim" / "zoo" / name / "card.json").read_text())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def output(name: str) -> str:
    """A kept run as the reader would see it in a terminal: the command, then its stdout (without the lines naming
    the temporary files it wrote)."""
    r = run(name)
    lines = [ln for ln in r["stdout"].rstrip().splitlines() if not ln.startswith("wrote ")]
    return "```\n$ " + r["command"] + "\n" + "\n".join(lines) + "\n```\n"


def report(name: str) -> dict:
    """The report.json (or --json file) a kept run wrote."""
    r = run(name)
    return json.loads(next(v for k, v in r["files"].items() if k.endswith(".json")))


def when(name: str) -> str:
    r = run(name)
    return f"{r['date']}, {r['machine']}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes" if seconds >= 90 else f"{seconds:.0f} s"


def bench_leaderboard() -> str:
    """The quick bench's leaderboard table, with what it took."""
    r = run("bench-quick")
    board = r["files"]["b/leaderboard.md"].splitlines()
    table = [ln for ln in board if ln.startswith("|")]
    n = len(table) - 2
    return (
        f"`{r['command']}` ({when('bench-quick')}): {n} metrics in {minutes(r['seconds'])}. Its leaderboard "
        "(first 100 `mini:test` triplets):\n\n" + "\n".join(table) + "\n"
    )


def audit_eot() -> str:
    """Smoothed SSIM attacked with and without EoT: both runs' robust accuracy side by side, and the breaks EoT adds."""
    one, eight = report("audit-ssim-smoothed-eot1"), report("audit-ssim-smoothed-eot8")
    lines = [
        "| eps (l2) | clean (smoothed) | robust, --eot 1 | robust, --eot 8 |",
        "|---|---|---|---|",
        *(
            f"| {e:g} | {pct(one['clean'])} | {pct(a)} | {pct(b)} |"
            for e, a, b in zip(one["eps"], one["robust"], eight["robust"], strict=True)
        ),
    ]
    more = round(one["n"] * (one["robust"][-1] - eight["robust"][-1]))
    cmd = run("audit-ssim-smoothed-eot8")["command"]
    return (
        f"`{cmd}` (and `--eot 1`), n = {one['n']}:\n\n"
        + "\n".join(lines)
        + f"\n\nEoT finds {more} more breaks at l2 {one['eps'][-1]:g}.\n"
    )


def audit_effnet_flips() -> str:
    """How many of effnet-ensemble's correct decisions an l2 change of 1 flips."""
    r = report("audit-effnet-l2")
    i = r["eps"].index(1.0)
    correct = round(r["n"] * r["clean"])
    return f"an l2 change of 1 flips {correct - round(r['n'] * r['robust'][i])} of its {correct} correct decisions\n"


def certify_sizes() -> str:
    rows = json.loads(run("certify-sizes")["stdout"])
    what = {32: "32 px (upsampled x2)", 64: "64 px (the network's size)", 128: "128 px (downsampled x2)"}
    lines = [
        "| caller's images | L (input -> embedding) | clean | cert. 36/255 | cert. 72/255 | cert. 108/255 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cert = " | ".join(pct(c) for c in r["certified"])
        lines.append(f"| {what[r['size']]} | {r['L']:.1f} | {pct(r['clean'])} | {cert} |")
    return "\n".join(lines) + "\n"


def certify_targets() -> str:
    import statistics

    lines = ["| target | cert. 36/255 | cert. 72/255 | cert. 108/255 | median radius |", "|---|---|---|---|---|"]
    for t in ("ref", "x0", "x1", "all"):
        r = report(f"certify-target-{t}")
        cert = " | ".join(pct(c["certified"]) for c in r["curve"])
        radii = [x["radius"] for x in r["triplets"]]
        lines.append(f"| {t} | {cert} | {statistics.median(radii):.3f} |")
    return "\n".join(lines) + "\n"


def center_output() -> str:
    r = run("certify-center-ssim")
    images = int(r["command"].split("--limit ")[1].split()[0])
    per = minutes(r["seconds"] / images)
    return output("certify-center-ssim") + f"\n({per} per image in all, {when('certify-center-ssim')})\n"


def retrieval_table() -> str:
    metrics = ("l2", "effnet-ensemble", "lipsim-nano")
    lines = [
        "| metric | clean R@1 / R@5 / R@10 / mAP | l2 0.5 attacked | l2 1 attacked | ROC-AUC | seconds |",
        "|---|---|---|---|---|---|",
    ]

    def four(block: dict, ks: list[int], i: int | None) -> str:
        """recall@k for every k, then mAP: the clean block (i None) or attacked radius i."""
        vals = [block[f"recall@{k}"] if i is None else block[f"recall@{k}"][i] for k in ks]
        vals.append(block["mAP"] if i is None else block["mAP"][i])
        return " / ".join(pct(v) for v in vals)

    for m in metrics:
        r = report(f"retrieval-{m}")
        s, ks = r["summary"], r["ks"]
        lines.append(
            f"| {m} | {four(s['clean'], ks, None)} | {four(s['attacked'], ks, 0)} | {four(s['attacked'], ks, 1)} | "
            f"{pct(s['clean']['roc_auc'])} | {run(f'retrieval-{m}')['seconds']:.0f} |"
        )
    nano = report("retrieval-lipsim-nano")
    cert = nano["summary"]["certified"]
    at = ", ".join(f"{e:g}: recall@10 {pct(v)}" for e, v in zip(nano["eps"], cert["recall@10"], strict=True))
    return (
        "\n".join(lines)
        + f"\n\nlipsim-nano's median certified top-1 radius is {nano['summary']['median_top1_radius']:.4f}; its "
        f"certified recall at l2 {at} ({when('retrieval-lipsim-nano')}).\n"
    )


def shipped_table() -> str:
    """The shipped metrics in each deployment (float32, adaptive: the default, float64), from their cards, with the
    baselines' clean accuracy."""
    lines = [
        "| metric on `mini:test` | deployed in | clean 2AFC | certified 36/255 | certified 72/255 | certified 108/255 "
        "| ms per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SHIPPED:
        c = card(name)
        for dtype, key, label in (("adaptive", "certified_adaptive", f"**{name}**"), ("float32", "certified", name),
                                  ("float64", "certified_float64", name)):  # fmt: skip
            cert = " | ".join(pct(c[key][r]) for r in RADII)
            lines.append(f"| {label} | {dtype} | {pct(c['clean'])} | {cert} | {c['ms_per_image'][dtype]:.2f} |")
    for base, score in card(SHIPPED[0])["baselines_clean"].items():
        lines.append(f"| {base} | float32 | {pct(score)} | - | - | - | |")
    note = card(SHIPPED[0])["ms_per_image_note"]
    return "\n".join(lines) + f"\n\nms per image: {note}; from each metric's `card.json`.\n"


def stitched(*names: str) -> Callable[[], str]:
    return lambda: "\n".join(output(n) for n in names)


BLOCKS: dict[str, Callable[[], str]] = {
    "shipped": shipped_table,
    "demo": stitched("demo-score", "demo-certify"),
    "bench-leaderboard": bench_leaderboard,
    "audit-eot": audit_eot,
    "audit-l2-effnet": stitched("audit-l2-l2", "audit-l2-linf", "audit-effnet-l2", "audit-effnet-linf"),
    "audit-effnet-flips": audit_effnet_flips,
    "certify-sizes": certify_sizes,
    "certify-targets": certify_targets,
    "certify-center": center_output,
    "retrieval": retrieval_table,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from its source."""

    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise KeyError(f"unknown generated block {name!r}")
        return m.group(1) + BLOCKS[name]() + m.group(4)

    return BLOCK.sub(one, text)


def write_pages() -> list[Path]:
    changed = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed
