"""The command's entry point: `version` is answered before the command line's machinery (click,
and everything the collector imports) is loaded, so it takes a Python start-up and no more."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence


def version_line() -> str:
    from ._native import __version__

    return f"Version {__version__}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """As cli.main, which it calls for everything but `version`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["version"]:
        try:
            sys.stdout.write(version_line() + "\n")
            sys.stdout.flush()
            return 0
        except OSError:
            pass  # unwritable: the command says so, in its own words (cli.write_out)
    from .cli import main as cli_main

    return cli_main(args, env)
