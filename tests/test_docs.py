"""The README and docs/ tell the truth about the command line and link only to what exists."""

from __future__ import annotations

import argparse
import re
import unicodedata
from pathlib import Path

import pytest

from bench.cli import COMMANDS, build_parser
from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "results").glob("*/NOTES.md")])
README_MAX_LINES = 150
_CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_COMMAND = re.compile(r"(?<![\w./-])bench ((?:[a-z][\w-]*)(?: [^\n`]*)?)")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def _commands(text: str) -> list[str]:
    """Every `bench ...` command line shown in code, continuation lines of a usage block joined."""
    found = []
    for block, inline in _CODE.findall(text):
        lines = (block or inline).splitlines()
        for i, line in enumerate(lines):
            for match in _COMMAND.finditer(line):
                command = match[1].split("#")[0]
                indent = len(line) - len(line.lstrip())
                for follow in lines[i + 1 :]:  # a usage block's options continue on deeper-indented lines
                    if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent or _COMMAND.search(follow):
                        break
                    command += " " + follow.strip()
                first, *alternatives = command.split(" | ")
                found.append(first)
                # `bench weights list | fetch NAME`: an alternative subcommand of the same command
                found.extend(alt if alt.split()[0] in COMMANDS else f"{first.split()[0]} {alt}" for alt in alternatives)
    return found


def _unknown(command: str, parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands and options of ``command`` that ``bench --help`` does not know."""
    words = command.split()
    subs, name = _subparsers(parser), words[0]
    if name not in subs:
        return [f"bench {name}"]
    parser, prog = subs[name], f"bench {name}"
    for word in words[1:]:
        nested = _subparsers(parser)
        if nested and not word.startswith("-"):
            if word in nested:
                parser, prog = nested[word], f"{prog} {word}"
                continue
            break
    flags = {w.split("=")[0] for w in re.findall(r"(?<![\w-])--?[a-z][\w-]*(?:=\S*)?", " ".join(words[1:]))}
    return [f"{prog} {flag}" for flag in sorted(flags - _options(parser))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_readme_fits_a_screenful_of_pages():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_option_shown_exists(page):
    parser = build_parser()
    commands = _commands(page.read_text())
    unknown = [f"{command!r}: {u}" for command in commands for u in _unknown(command, parser)]
    assert not unknown


def test_the_command_check_catches_a_wrong_option_and_command():
    parser = build_parser()
    assert _unknown("run --suite realtime --no-such-flag", parser) == ["bench run --no-such-flag"]
    assert _unknown("data synth --dataset ade20k --num 3", parser) == []
    assert _unknown("data synth --bogus 3", parser) == ["bench data synth --bogus"]
    assert _unknown("frobnicate", parser) == ["bench frobnicate"]
    block = (
        "```\nbench run --suite S\n          [--results DIR] [--nope]\n"
        "    --results /data/segbench --nix\nbench list\n```"
    )
    assert [u for c in _commands(block) for u in _unknown(c, parser)] == ["bench run --nix", "bench run --nope"]
    assert _commands("`bench weights list | fetch NAME --dataset D`") == [
        "weights list",
        "weights fetch NAME --dataset D",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken


def _rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``text`` (the separator rows left out)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [row for row in rows if len(row) > 1 and not all(set(cell) <= set(":-") for cell in row)]


def test_the_readme_quotes_the_reference_table_as_it_stands():
    readme = (ROOT / "README.md").read_text().split("## What you get", 1)[1].split("\n## ", 1)[0]
    source = re.search(r"\(\[full table\]\(([^)]+)\)", readme)[1]
    ade20k = (ROOT / source).read_text().split("## ADE20K", 1)[1].split("\n## ", 1)[0]
    header, *quoted = _rows(readme)
    table_header, *table = _rows(ade20k)
    assert quoted, "the README shows no rows of the table"
    for row in quoted:
        matches = [r for r in table if r[1:3] == row[:2]]  # the table's first column is the group
        assert matches, f"{row[:2]} is not a row of {source}"
        for title, cell in zip(header, row):
            assert cell == matches[0][table_header.index(title)], f"{row[:2]}: {title} reads {cell!r} in the README"
