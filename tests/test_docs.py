"""The README, docs/, bench/README.md and deploy/SCALING.md as a newcomer meets them on a fresh clone: every
relative link resolves inside the repository, every `skipstep ...` command in a fenced block names a real command
and real options (and parses, where it is a concrete command rather than a synopsis), and the strategy page is what
bench/results/ says."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import parser as cli_parser
from core.contract.models import PRESETS
from core.contract.strategies import STRATEGIES
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "deploy" / "SCALING.md"]
PAGES += sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")
# Values the CLI checks after parsing (argparse has no choices for them).
KNOWN_VALUES = {"--cache": set(STRATEGIES), "--model": set(PRESETS)}
CHOICES = re.compile(r"(--[a-z0-9-]+) ([\w.-]+(?:\|[\w.-]+)+)")
SYNOPSIS = re.compile(r"[\[\]|]|\.\.\.|\b[A-Z]{2,}\b")


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text()) if not re.match(r"^[a-z]+:|^#", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        resolved = (page.parent / target.split("#")[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve inside the repository: {broken}"


def skipstep_commands(page: Path) -> list[str]:
    """Each `skipstep ...` command of the page's fenced blocks, a synopsis's continuation lines joined to it."""
    commands: list[str] = []
    for block in FENCE.findall(page.read_text()):
        current: list[str] = []
        for raw in block.splitlines():
            line = raw.split("  #")[0].rstrip()
            if current and re.match(r"^\s+[\[-]", line):
                current.append(line.strip())
                continue
            if current:
                commands.append(" ".join(current))
                current = []
            for segment in re.split(r"&&|\|\||;|\(|\)", line):
                words = re.split(r"[<>]", segment)[0].split()
                if words and (words[0] == "skipstep" or words[0].endswith("/skipstep")):
                    if current:
                        commands.append(" ".join(current))
                    current = ["skipstep", *words[1:]]
        if current:
            commands.append(" ".join(current))
    return sorted(set(commands))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def documented_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), command) for page in PAGES for command in skipstep_commands(page)]


def test_the_docs_show_skipstep_commands() -> None:
    names = {command.split()[1] for _, command in documented_commands()}
    assert {"up", "down", "submit", "generate", "keys", "calibrate"} <= names


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_every_documented_skipstep_command_parses(page: str, command: str) -> None:
    root = cli_parser(Settings())
    words = command.split()[1:]
    parser, path = root, ["skipstep"]
    while (choices := subcommands(parser)) and words:
        assert words[0] in choices, f"{page}: {' '.join(path)} has no command {words[0]!r} ({command})"
        parser = choices[words[0]]
        path.append(words.pop(0))
    unknown = [option for option in OPTION.findall(" ".join(words)) if option not in parser._option_string_actions]
    assert not unknown, f"{page}: {' '.join(path)} has no option {unknown} ({command})"
    for option, alternatives in CHOICES.findall(command):
        allowed = KNOWN_VALUES.get(option, parser._option_string_actions[option].choices)
        listed = [value for value in alternatives.split("|") if not value.isupper()]
        if allowed is not None:
            assert set(listed) <= set(allowed), f"{page}: {option} takes {sorted(allowed)}, not {listed}"
    if not SYNOPSIS.search(command):
        root.parse_args(shlex.split(command)[1:])


def test_the_strategy_page_is_generated_from_the_results() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "strategy_page.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
