"""Self-contained HTML pages of reports: the report's Markdown rendered (headings, paragraphs, tables, code
blocks: the subset robustsim's reports write), its figures embedded as data URIs, and its report.json in full,
so one file can be sent to a colleague and opened offline."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } th, td { padding: 4px 10px; border-bottom: 1px solid #ccc; }
th { background: #eef; text-align: left; } td { text-align: right; } td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; } img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; }
"""


CODE = re.compile(r"(`+)(.+?)\1", re.S)  # a code span: its fence, then anything up to the same fence
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
SAFE_HREF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")  # a relative file of the report's own folder


def _href(url: str, up: int = 0) -> str | None:
    """A link target robustsim writes: a relative path inside the report's folder (no scheme, not absolute, no
    ``..`` but ``up`` leading ones: a card page links to its bench folder's leaderboard); anything else
    (``javascript:``, ``https://``, ``//host``) is not made a link."""
    parts = url.split("/")
    lead = 0
    while lead < min(up, len(parts) - 1) and parts[lead] == "..":
        lead += 1
    rest = "/".join(parts[lead:])
    if not SAFE_HREF.fullmatch(rest) or ".." in parts[lead:]:
        return None
    return url


def _text(text: str, up: int = 0) -> str:
    """Escaped text with **bold** and safe relative links (outside code spans)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)

    def link(m: re.Match) -> str:
        href = _href(html.unescape(m.group(2)), up)
        if href is None:
            return m.group(0)  # shown as the text it is
        return f'<a href="{html.escape(href)}">{m.group(1)}</a>'

    return LINK.sub(link, out)


def _inline(text: str, up: int = 0) -> str:
    """One line of the report's Markdown: code spans are literal (nothing inside them is Markdown, whatever
    backticks they hold), the rest escaped with bold and relative links only."""
    out, at = [], 0
    for m in CODE.finditer(text):
        out.append(_text(text[at : m.start()], up))
        body = m.group(2)
        if body.startswith(" ") and body.endswith(" ") and body.strip():
            body = body[1:-1]
        out.append(f"<code>{html.escape(body.replace(chr(92) + '|', '|'))}</code>")
        at = m.end()
    out.append(_text(text[at:], up))
    return "".join(out)


def _cells(line: str) -> list[str]:
    """A table row's cells: split on the pipes that are not escaped (``\\|`` belongs to its cell)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _table(lines: list[str]) -> str:
    rows = [_cells(ln) for ln in lines]
    head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
    th = "".join(f"<th>{_inline(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def markdown_to_html(text: str, up: int = 0) -> str:
    """The Markdown subset of robustsim's reports as HTML (anything else stays readable text)."""
    out, para, lines, i = [], [], text.splitlines(), 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para), up)}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1 : j]))}</pre>")
            i = j + 1
            continue
        if line.lstrip().startswith("|"):
            flush()
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
            continue
        heading = re.match(r"(#{1,4})\s+(.*)", line)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.strip().startswith(("- ", "* ")):
            flush()
            out.append(f"<ul><li>{_inline(line.strip()[2:])}</li></ul>")
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)


def report_page(title: str, markdown: str, figures: dict[str, Path], data: dict, up: int = 0) -> str:
    """One offline page: the Markdown, every figure file embedded, and ``data`` (report.json) in full."""
    figs = []
    for name, path in figures.items():
        uri = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
        figs.append(
            f'<figure><img src="{uri}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'
        )
    raw = html.escape(json.dumps(data, indent=1, sort_keys=True))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
{markdown_to_html(markdown, up)}
{chr(10).join(figs)}
<details><summary>report.json (every number of this page, the settings, versions and timings)</summary>
<pre id="report-json">{raw}</pre></details>
</body></html>
"""
