"""HTTP(S) downloads for the weights manager: timeouts on every connection and read, resume of an
interrupted download with an HTTP Range request, refusal of HTML bodies and truncated transfers, a
progress bar. The caller verifies the bytes and installs the file; this module never does."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from robustsim.errors import WeightsError

DEFAULT_TIMEOUT = 30.0  # seconds per connect and per read; ROBUSTSIM_HTTP_TIMEOUT overrides
CHUNK = 1 << 20
USER_AGENT = "robustsim-weights/1"


def timeout() -> float:
    try:
        return float(os.environ.get("ROBUSTSIM_HTTP_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def download(urls: list[str], dest: Path, size: int | None, progress: bool = True, label: str = "") -> Path:
    """Download the first URL that works into ``dest``'s partial file (resuming it when it exists) and
    return that partial file, complete. WeightsError with a one-line reason when every URL fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    errors = []
    for url in urls:
        try:
            _fetch(url, part, size, progress, label or dest.name)
            return part
        except WeightsError as err:
            errors.append(str(err))
    raise WeightsError(errors[-1] if len(errors) == 1 else "; ".join(errors))


def _fetch(url: str, part: Path, size: int | None, progress: bool, label: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise WeightsError(f"{url}: only http(s) URLs are fetched")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout())  # noqa: S310 - http(s) only, checked above
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and (size is None or have == size):
            return  # the partial file is already complete
        raise WeightsError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(
            f"{url}: cannot connect ({reason}); check the network or use `robustsim weights add`"
        ) from None
    with response:
        ctype = response.headers.get("Content-Type", "")
        if "text/html" in ctype.lower():
            raise WeightsError(
                f"{url}: the server sent an HTML page, not the file (a login or confirmation page?); download it "
                "in a browser and install it with `robustsim weights add`"
            )
        resumed = response.status == 206
        if have and not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = (have + int(length)) if length is not None else size
        mode = "ab" if resumed else "wb"
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False)
        got = have
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (TimeoutError, OSError) as err:
                        raise WeightsError(
                            f"{url}: the transfer stopped after {got} bytes ({err}); run the command again to resume"
                        ) from None
                    if not chunk:
                        break
                    if got == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                        raise WeightsError(
                            f"{url}: the server sent an HTML page, not the file; download it in a browser and "
                            "install it with `robustsim weights add`"
                        )
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if total is not None and got != total:
        raise WeightsError(f"{url}: the body is truncated ({got} of {total} bytes); run the command again to resume")
