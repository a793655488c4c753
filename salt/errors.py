"""Errors a user can fix from the command line.

Every ``salt`` command (``salt``, ``salt-shards``, ``salt-probe``, ``salt-runs``) catches
``UsageError`` at its entry point, prints the message as one line and exits with status 2; any
other exception is a bug and keeps its traceback. Library code raises ``UsageError`` (or a
subclass) for bad input that is the caller's to fix: a missing file, an empty split, a label out
of range, a checkpoint of the wrong stage. It subclasses ``ValueError`` so in-process callers that
already catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input or settings; CLIs print ``<prog>: <message>`` and exit 2 (no traceback)."""
