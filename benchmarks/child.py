"""Run one benchmark case in a child process and read back the result it prints.

A benchmark isolates a case in a fresh process when the case must start from clean GPU memory,
must be killed at a deadline, or needs another launcher (``torchrun``). Every such child prints
one ``RESULT {json}`` line per process (``print_result``); ``run_child`` starts it, collects those
lines and, when there are none, turns the failure into one line for the results table
(``Child.status``: the child's last ``...Error: ...`` line, else its last stderr line).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RESULT_PREFIX = "RESULT "
_ERROR_LINE = re.compile(r"\w+(Error|Exception)\b.*:")


def print_result(result: Any) -> None:
    """Print ``result`` as the ``RESULT`` line a parent's ``run_child`` reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def result_lines(stdout: str) -> list[Any]:
    """Every ``RESULT`` payload in ``stdout``, in order."""
    return [
        json.loads(line[len(RESULT_PREFIX) :])
        for line in stdout.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]


def last_error(stderr: str) -> str:
    """The last ``SomethingError: ...`` line of a child's stderr (else its last line)."""
    lines = stderr.strip().splitlines() or ["no output"]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)]
    return (errors or lines)[-1].strip()


def _text(out: str | bytes | None) -> str:
    """``TimeoutExpired`` carries bytes even under ``text=True``."""
    if isinstance(out, bytes):
        return out.decode(errors="replace")
    return out or ""


@dataclass
class Child:
    """What one child process left: exit code (None = killed at the timeout), output, results."""

    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timeout: float | None = None
    results: list[Any] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def status(self) -> str:
        """One line for the table: ``timeout after Ns`` or ``failed (rc N): <last error>``."""
        if self.timed_out:
            return f"timeout after {self.timeout:.0f}s"
        return f"failed (rc {self.returncode}): {last_error(self.stderr)[:200]}"


def run_child(
    cmd: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
) -> Child:
    """Run ``cmd`` to the end (or kill it after ``timeout`` s) and parse its ``RESULT`` lines."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        wall = round(time.perf_counter() - t0, 1)
        return Child(None, _text(exc.stdout), _text(exc.stderr), wall, timeout)
    wall = round(time.perf_counter() - t0, 1)
    return Child(
        proc.returncode, proc.stdout, proc.stderr, wall, timeout, result_lines(proc.stdout)
    )
