"""The ``anima`` console script: SIGINT and SIGTERM are handled from the first instant (the CLI
imports torch, which takes a second), then `anima.cli.main` runs."""

from __future__ import annotations

import sys

from anima.interrupts import Interrupted, interrupted_line, raise_on_signals


def main() -> int:
    raise_on_signals()
    try:
        from anima.cli import main as cli_main
    except Interrupted as exc:
        print(interrupted_line(exc), file=sys.stderr)
        return exc.exit_status
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
