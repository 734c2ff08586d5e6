"""The ``skipstep`` command line: only an entry point.

Each command module adds its parsers here and imports what its commands need (torch, the
database, boto3) inside the command, so ``skipstep --help`` and the thin client commands
start at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from core.cli import client, generate, keys, service
from core.errors import SkipstepError
from core.settings import Settings, get_settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    args = parser(settings).parse_args(argv)
    try:
        return args.run(args, settings)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "request"
            print(f"error: {field}: {error['msg']}", file=sys.stderr)
    except SkipstepError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


def parser(settings: Settings) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="skipstep", description="Fast video generation with timestep caching.")
    commands = root.add_subparsers(required=True, metavar="COMMAND")
    for module in (generate, service, keys, client):
        module.add_commands(commands, settings)
    return root
