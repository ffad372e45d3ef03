"""HTTP(S) downloads for the weights manager: timeouts on every connection and read, a stalled transfer
aborted, resume of an interrupted download with an HTTP Range request (checked against the Content-Range the
server answers), refusal of HTML bodies, content encodings, truncated, overlong or length-less bodies, a
progress bar. The caller verifies the bytes and installs the file; this module never does."""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from robustsim.errors import WeightsError
from robustsim.limits import env_seconds

DEFAULT_TIMEOUT = 30.0  # seconds per connect and per read; ROBUSTSIM_HTTP_TIMEOUT overrides
CHUNK = 1 << 20
MIN_RATE = 1024  # bytes/s over one read timeout below which a transfer counts as stalled
DEFAULT_CAP = 4 << 30  # bytes a file of unknown size may have (a record's max_size overrides)
USER_AGENT = "robustsim-weights/1"


def timeout() -> float:
    """Seconds per connect and per read (``ROBUSTSIM_HTTP_TIMEOUT``, a positive finite number)."""
    return env_seconds("ROBUSTSIM_HTTP_TIMEOUT", DEFAULT_TIMEOUT, WeightsError)


def partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def download(
    urls: list[str],
    dest: Path,
    size: int | None,
    progress: bool = True,
    label: str = "",
    seen: dict | None = None,
    cap: int = DEFAULT_CAP,
) -> Path:
    """Download the first URL that works into ``dest``'s partial file (resuming it when it exists) and
    return that partial file, complete. WeightsError with a one-line reason when every URL fails. ``seen``
    receives what the server said about the bytes: ``revision`` (Hugging Face's ``X-Repo-Commit``: the commit a
    ``resolve/main`` URL resolved to) and ``url``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    errors = []
    for url in urls:
        try:
            revision = _fetch(url, part, size, progress, label or dest.name, cap)
            if seen is not None:
                seen.update(url=url, revision=revision)
            return part
        except WeightsError as err:
            errors.append(str(err))
    raise WeightsError(errors[-1] if len(errors) == 1 else "; ".join(errors))


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    return int(m.group(1)) if m else None


def _fetch(url: str, part: Path, size: int | None, progress: bool, label: str, cap: int) -> str | None:
    """Append the rest of ``url``'s body to ``part``; refuse anything that is not one complete, plain body:
    HTML, a content encoding, a resume that does not start where ``part`` ends, a body with neither a declared
    length nor a known size, more than ``cap`` bytes, a transfer that stalls (less than MIN_RATE bytes/s over
    one read timeout). Returns the upstream revision the server names (None when it names none)."""
    if not url.lower().startswith(("http://", "https://")):
        raise WeightsError(f"{url}: only http(s) URLs are fetched")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    response = _open(url, have, size)
    if response is None:
        return None  # the partial file is already complete
    with response:
        revision = response.headers.get("X-Repo-Commit")
        have, total = _body_size(url, response, part, have, size, cap)
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False)
        try:
            got = _copy(url, response, part, have, total, bar)
        finally:
            bar.close()
    if got != total:
        raise WeightsError(f"{url}: the body is truncated ({got} of {total} bytes); run the command again to resume")
    return revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None


def _open(url: str, have: int, size: int | None):
    """The response for the bytes from ``have`` on (None: a partial file the server says is complete already)."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout())  # noqa: S310 - http(s) only, checked by _fetch
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and (size is None or have == size):
            return None
        reason = "a redirect loop" if err.code in (301, 302, 303, 307, 308) else f"HTTP {err.code} {err.reason}"
        raise WeightsError(f"{url}: the server answered {reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(
            f"{url}: cannot connect ({reason}); check the network or use `robustsim weights add`"
        ) from None


def _body_size(url: str, response, part: Path, have: int, size: int | None, cap: int) -> tuple[int, int]:
    """(bytes already in ``part`` the body continues, the file's total size) once the headers promise one plain,
    complete body of at most ``cap`` bytes (WeightsError otherwise; a resume at the wrong byte deletes ``part``)."""
    ctype = response.headers.get("Content-Type", "")
    if "text/html" in ctype.lower():
        raise WeightsError(
            f"{url}: the server sent an HTML page, not the file (a login or confirmation page?); download it "
            "in a browser and install it with `robustsim weights add`"
        )
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise WeightsError(f"{url}: the server sent the file {encoding}-encoded; robustsim installs plain bytes only")
    resumed = response.status == 206
    if resumed and _content_range_start(response.headers.get("Content-Range")) != have:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{url}: the server resumed at {response.headers.get('Content-Range')!r}, not at byte {have}; the "
            "partial file was deleted: run the command again"
        )
    if have and not resumed:
        have = 0  # the server ignored the range: start over
    length = response.headers.get("Content-Length")
    if length is not None and not length.strip().isdigit():
        raise WeightsError(f"{url}: the server sent Content-Length {length!r}")
    total = (have + int(length)) if length is not None else size
    if total is None:
        raise WeightsError(
            f"{url}: the server declares no length and the manifest knows no size, so a cut body could not be "
            "told from the file; download it another way and use `robustsim weights add`"
        )
    if total > cap:
        raise WeightsError(f"{url}: the server offers {total} bytes, more than the {cap} this file may have")
    return have, total


def _copy(url: str, response, part: Path, have: int, total: int, bar) -> int:
    """Write the body after byte ``have`` of ``part`` (a fresh file when ``have`` is 0); the bytes ``part`` holds
    at the end. Refuses an HTML body, more than ``total`` bytes and a stalled transfer."""
    got, wait = have, timeout()
    window_start, window_bytes = time.monotonic(), 0
    with open(part, "ab" if have else "wb") as f:
        while True:
            try:
                chunk = response.read1(CHUNK)
            except (TimeoutError, OSError, http.client.HTTPException) as err:
                raise WeightsError(
                    f"{url}: the transfer stopped after {got} bytes ({type(err).__name__}); run the command "
                    "again to resume"
                ) from None
            if not chunk:
                return got
            if got == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                raise WeightsError(
                    f"{url}: the server sent an HTML page, not the file; download it in a browser and "
                    "install it with `robustsim weights add`"
                )
            if got + len(chunk) > total:
                raise WeightsError(f"{url}: the server sent more than the {total} bytes it declared")
            f.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            window_bytes += len(chunk)
            now = time.monotonic()
            if now - window_start >= wait:
                if window_bytes < MIN_RATE * (now - window_start):
                    raise WeightsError(
                        f"{url}: {_host(url)} sent {window_bytes} bytes in {now - window_start:.0f} s, too "
                        "slow to finish; run the command again to resume"
                    )
                window_start, window_bytes = now, 0
