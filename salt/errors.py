"""Errors a user can fix from the command line, and the one wrapper every console script uses.

Every ``salt`` command (``salt``, ``salt-shards``, ``salt-probe``, ``salt-runs``) catches
``UsageError`` at its entry point, prints the message as one line and exits with status 2; any
other exception is a bug and keeps its traceback. Library code raises ``UsageError`` (or a
subclass) for bad input that is the caller's to fix: a missing file, an empty split, a label out
of range, a checkpoint of the wrong stage. It subclasses ``ValueError`` so in-process callers that
already catch ``ValueError`` keep working; ``MissingInputError`` is also a ``FileNotFoundError``
for callers that catch that.

``cli_entry(prog)`` is the wrapper: ``main = cli_entry("salt-runs")(_main)``. It imports nothing
heavy, so a ``--help`` that needs no torch stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

USAGE_EXIT = 2


class UsageError(ValueError):
    """Bad input or settings; CLIs print ``<prog>: error: <message>`` and exit 2 (no traceback)."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


def one_line(message: object) -> str:
    """The message with line breaks folded, so a log shows it as one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def cli_entry(
    prog: str, also: tuple[type[BaseException], ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., int]]:
    """Decorate a console script's ``main(argv=None)``: ``UsageError`` (and the ``also`` types)
    become ``<prog>: error: <one line>`` on stderr and return value 2; ``None`` becomes 0.

    Args:
        prog: the command's name as the user typed it (``salt``, ``salt-runs``, ...).
        also: further exception types treated as usage errors (for code that predates
            ``UsageError``); prefer raising ``UsageError``.
    """
    caught = (UsageError, *also)

    def wrap(main: Callable[..., Any]) -> Callable[..., int]:
        @functools.wraps(main)
        def entry(*args: Any, **kwargs: Any) -> int:
            try:
                code = main(*args, **kwargs)
            except caught as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
                return USAGE_EXIT
            return 0 if code is None else int(code)

        return entry

    return wrap
