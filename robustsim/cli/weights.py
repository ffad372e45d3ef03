"""``robustsim weights``: the weight-file manifest, and fetching, adding, verifying and locating files."""

from __future__ import annotations

from pathlib import Path

import click

from robustsim.cli.options import UserPath, parse_names, say
from robustsim.table import format_table

PIN_TEXT = {"sha256": "sha256", "sha256-prefix": "prefix", "git-blob": "git-blob", "first-download": "1st-download"}


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group("weights")
def weights_group() -> None:
    """Weight files of the metric zoo: one manifest (file, upstream URL, size, sha256 pin, licence, metrics).

    Files download on first use with a progress bar unless ROBUSTSIM_OFFLINE=1 (or HF_HUB_OFFLINE=1).
    Offline, or where a host serves a login page, get the file yourself and install it with `add`.
    Files live in $ROBUSTSIM_WEIGHTS (default ~/.cache/robustsim/weights); torchvision files also in
    $TORCH_HOME/hub/checkpoints.
    """


def short_licence(text: str) -> str:
    """The licence's name alone (``MIT``, ``BSD-3-Clause``; ``no licence`` where the upstream has no licence file)."""
    return text.split(" (")[0].split(":")[0].split(";")[0].strip()


@weights_group.command("list")
def list_cmd() -> None:
    """List every weight file: size, pin, state here and licence.

    Every file: size, pin kind, state here (fetched, not downloaded, missing, corrupt), licence (`no licence`: the
    upstream repository has no licence file; ask its authors before redistributing), the metrics using it."""
    from robustsim.weights import manifest, recorded_pins, state
    from robustsim.zoo import metrics_using

    pins = recorded_pins()
    rows = []
    for rec in manifest().values():
        pin = PIN_TEXT[rec.pin] + ("*" if rec.pin == "first-download" and rec.name in pins else "")
        size = rec.size if rec.size is not None else pins.get(rec.name, {}).get("size")
        rows.append(
            (rec.name, _size(size), pin, state(rec), short_licence(rec.license), ",".join(metrics_using(rec.name)))
        )
    import textwrap

    say(format_table(["file", "size", "pin", "state", "licence", "metrics"], rows, left=True))
    note = (
        "pin: sha256 = published full hash; prefix = torchvision's hash prefix in the file name; git-blob = the "
        "git blob id a pinned commit's tree names; 1st-download = no published hash, the first verified "
        "download's is recorded (* = recorded here) and checked after."
    )
    say("\n" + "\n".join(textwrap.wrap(note, 100)))


@weights_group.command("fetch")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--repin",
    is_flag=True,
    default=False,
    help="Download afresh and replace the hash recorded at a first download with the new download's: the way out "
    "when that first download was not the real file (the copy on disk and its pin stay until the new one is in).",
)
def fetch_cmd(names: tuple[str, ...], repin: bool) -> None:
    """Download weight files (or a metric's files), verified against their pins.

    Download NAMES (file names from `list`, or metric names), resuming a partial download, verifying
    size and hash, refusing HTML or truncated bodies; nothing unverified is ever installed."""
    from robustsim.weights import fetch_file, record, resolve, unpacked

    for name in weight_files(names, "NAMES"):
        rec = record(name)
        if repin and rec.pin == "first-download":  # the good copy and its pin stay until the new one is checked
            path = fetch_file(rec, repin=True)
            say(f"{name}: {unpacked(rec, path) if rec.unpack else path} (pinned afresh)")
        else:
            say(f"{name}: {resolve(name)}")


def weight_files(names: tuple[str, ...], hint: str) -> list[str]:
    """The weight files NAMES stand for: each a file name from `list`, or a metric name (its files)."""
    from robustsim.weights import manifest
    from robustsim.zoo import files_of, list_metrics

    wanted: list[str] = []
    for name in parse_names(",".join(names), hint):
        if name in manifest():
            wanted.append(name)
        elif all(part in list_metrics() for part in name.split("+")) and files_of(name):
            wanted += files_of(name)
        else:
            raise click.BadParameter(
                f"{name!r} is neither a weight file (`robustsim weights list`) nor a metric that needs one",
                param_hint=hint,
            )
    return list(dict.fromkeys(wanted))


@weights_group.command("add")
@click.argument("name")
@click.argument("file", type=UserPath(existing="file"))
@click.option(
    "--trust",
    is_flag=True,
    default=False,
    help="For a file whose upstream publishes no hash and that was never downloaded here: you vouch for FILE, and "
    "its sha256 becomes the pin every later copy must match.",
)
def add_cmd(name: str, file: Path, trust: bool) -> None:
    """Install a weight file obtained elsewhere, checked against its pin.

    Install FILE (obtained elsewhere) as weight file NAME into the weights folder after checking it against NAME's
    pin (a file with no pin yet is refused unless --trust)."""
    from robustsim.weights import add_file

    say(f"{name}: installed {add_file(name, file, trust=trust)}")


@weights_group.command("verify")
def verify_cmd() -> None:
    """Re-hash every weight file on disk against its pin (exit 2 if one fails).

    Loading a file hashes it once and then trusts a stamp keyed by its size and modification time: a file
    changed in place is re-hashed on its next load, but one whose bytes were changed with its size and mtime
    put back (deliberately) is not. This command ignores the stamps and re-hashes every byte."""
    from robustsim.errors import WeightsError
    from robustsim.weights import verify_all

    results = verify_all()
    if not results:
        say("no weight files on disk")
        return
    say(format_table(["file", "result"], results, left=True))
    bad = [name for name, r in results if r != "ok"]
    if bad:
        raise WeightsError(f"{len(bad)} file(s) fail their pin ({bad[0]} ...); delete them and fetch or add them again")


@weights_group.command("path")
@click.argument("name")
def path_cmd(name: str) -> None:
    """Print where weight file NAME is (or would be installed); for a metric name, each of its files."""
    from robustsim.weights import install_path, on_disk, record

    files = weight_files((name,), "NAME")
    for file in files:
        rec = record(file)
        where = str(on_disk(rec) or install_path(rec))
        say(where if len(files) == 1 else f"{file}: {where}")
