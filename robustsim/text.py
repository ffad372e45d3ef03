"""User text (metric names, data specs, file names, labels) as data wherever robustsim shows it: in Markdown (a
code span whose fence no backtick inside can close, control characters written as escapes, ``|`` escaped in table
cells), in file names (a safe stem), in figures (no mathtext). One function per place it is shown."""

from __future__ import annotations

import hashlib
import re

_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._+-]+")


def visible(text: object) -> str:
    """``text`` on one line: newlines, tabs and other control characters written as escapes (``\\n``)."""
    s = str(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def terminal(text: object) -> str:
    """``text`` for a terminal: every line :func:`visible` (an escape sequence or a bidi override read from a file or
    typed as a name is shown as its escape, never acted on), the line breaks kept."""
    return "\n".join(visible(line) for line in str(text).split("\n"))


def md_code(text: object) -> str:
    """``text`` as an inline Markdown code span: nothing inside is Markdown (no link, emphasis or table cell), and a
    backtick in it cannot end the span (the fence is one backtick longer than its longest run)."""
    s = visible(text)
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (run + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


_PLAIN = re.compile(r"[A-Za-z0-9 .,+/:=-]*")  # characters no Markdown renderer gives a meaning to


def md_cell(text: object) -> str:
    """``text`` for a Markdown table cell: as it is when it holds only plain characters (a zoo name, a path),
    else a code span with ``|`` escaped (a pipe never splits the row, nothing inside is Markdown)."""
    s = str(text)
    return s if _PLAIN.fullmatch(s) and s.strip() == s else md_code(s).replace("|", "\\|")


def file_stem(name: object) -> str:
    """A file name for a user-given ``name`` (a zoo name, a checkpoint path): letters, digits and ``._+-`` only, no
    leading dot, at most 80 characters, and a short hash of the name when anything had to change, so two names
    never share a file and no name reaches outside the folder it is written in."""
    s = str(name)
    stem = _UNSAFE_STEM.sub("-", s).strip(".-")[:80] or "metric"
    if stem != s:
        stem = f"{stem[:71]}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"
    return stem


def figure_text(text: object) -> str:
    """``text`` for a matplotlib title, label or legend: control characters escaped and ``$`` escaped, so no
    mathtext is parsed from it."""
    return visible(text).replace("$", r"\$")
