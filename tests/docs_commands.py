"""The commands and Python snippets README.md and docs/*.md show, as the docs-commands test runs them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(robustsim [^`]+)`")
VALUE = re.compile(r"`([a-z0-9][a-z0-9_.-]*)`")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]  # after `robustsim`

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{' '.join(self.argv)[:60]}"


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    code: str


def _blocks(text: str):
    """(language, first line number, lines) of every fenced block."""
    lang, start, lines = None, 0, []
    for no, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m and lang is None:
            lang, start, lines = m.group(1), no + 1, []
        elif line.startswith("```") and lang is not None:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def _expand(line: str) -> list[str]:
    """A usage line as the commands it stands for: ``a | robustsim b`` and ``a / robustsim b`` are two commands;
    ``verb x | y`` runs ``verb x`` and ``verb y``; each optional ``[--opt a|b]`` group is tried alone, with each
    alternative, beside the line without any group."""
    out = []
    for part in re.split(r" [|/] (?=robustsim )", line):
        part = part.removeprefix("robustsim ").strip()
        groups = re.findall(r"\[([^\]]+)\]", part)
        base = re.sub(r"\s*\[[^\]]+\]", "", part)
        alts = [a.strip() for a in base.split(" | ")]
        verb = alts[0].split()[0]
        out += [alts[0]] + [f"{verb} {a}" for a in alts[1:]]
        for group in groups:
            head, _, values = group.partition(" ")
            options = [f"{head} {v}" for v in values.split("|")] if "|" in values and " " not in values else [group]
            out += [f"{alts[0]} {o}" for o in options]
    return out


def commands() -> list[Command]:
    """Every ``robustsim ...`` line of a fenced block (continuations joined, comments and a torchrun prefix dropped)
    and every inline ``robustsim VERB --option`` followed by backticked values (one command per value)."""
    out: list[Command] = []
    for page in PAGES:
        text, name = page.read_text(), str(page.relative_to(ROOT))
        for lang, start, lines in _blocks(text):
            if lang not in ("", "bash", "sh", "shell"):
                continue
            joined: list[tuple[int, str]] = []
            for i, line in enumerate(lines):
                if joined and joined[-1][1].endswith("\\"):
                    joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
                else:
                    joined.append((start + i, line))
            for no, line in joined:
                line = line.split(" #")[0].strip()
                if line.startswith("torchrun") and " -m robustsim " in line:
                    line = "robustsim " + line.split(" -m robustsim ", 1)[1]
                if line.startswith("robustsim "):
                    out += [Command(name, no, tuple(shlex.split(c))) for c in _expand(line)]
        lines = text.splitlines()
        for no, line in enumerate(lines, 1):  # the paragraph from this line on, for values named after the option
            rest_of_paragraph = " ".join(_paragraph(lines, no - 1))
            for m in INLINE.finditer(line):
                words = shlex.split(m.group(1))[1:]
                if not words or not words[-1].startswith("--"):
                    continue
                after = rest_of_paragraph[rest_of_paragraph.index(m.group(0)) + len(m.group(0)) :]
                for value in VALUE.findall(after.split(". ")[0]):
                    out.append(Command(name, no, (*words, value)))
    return out


def _paragraph(lines: list[str], i: int) -> list[str]:
    """Lines i.. up to the next blank line."""
    out = []
    for line in lines[i:]:
        if not line.strip():
            break
        out.append(line)
    return out


def snippets() -> list[Snippet]:
    out = []
    for page in PAGES:
        for lang, start, lines in _blocks(page.read_text()):
            if lang == "python":
                out.append(Snippet(str(page.relative_to(ROOT)), start, "\n".join(lines)))
    return out


if __name__ == "__main__":
    for c in commands():
        print(c.id)
    for s in snippets():
        print(s.page, s.line)
