"""SIGINT and SIGTERM as an exception, so that every ``with`` block cleans up on the way out.

The CLI installs `raise_on_signals` before anything heavy is imported. A signal then raises
`Interrupted` (a `BaseException`, so no ``except Exception`` in a library swallows it): temporary
files and staging folders are removed by the context managers that made them, and the CLI exits
with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) and one line. `signals_deferred`
holds signals back while outputs are moved into place, so that a run ends with all of its
outputs or none.

This module imports nothing heavy: the console script imports it before torch.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)
"""The signals that interrupt a run."""


class Interrupted(BaseException):
    """The run was interrupted by a signal."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal's number."""
        return 128 + self.signum


def interrupted_line(exc: Interrupted) -> str:
    """The one line the CLI prints for an interrupted run."""
    return f"error: interrupted by {exc.name}; outputs not finished were not written"


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def raise_on_signals() -> dict[int, object]:
    """Make SIGINT and SIGTERM raise `Interrupted` (in the main thread); returns the previous
    handlers for `restore`. A signal that was ignored (a background job's SIGINT) is handled
    too: an explicit ``kill -INT`` must stop the run."""
    return {signum: signal.signal(signum, _raise_interrupted) for signum in HANDLED}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers `raise_on_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block; one that arrived is raised at its end.

    For short critical sections only (moving finished outputs into place). Outside the main
    thread, or when nothing installed `raise_on_signals`, the block runs as is."""
    pending: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    try:
        previous = {signum: signal.signal(signum, remember) for signum in HANDLED}
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        elif handler == signal.SIG_DFL:
            raise Interrupted(pending[0])
