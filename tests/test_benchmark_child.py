"""benchmarks/child.py, the one runner every benchmark uses for a case in its own process: result
lines come back parsed, a crash becomes its last error line, a hang is killed at the timeout."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, BENCH)
from child import last_error, run_child  # noqa: E402


def _py(code: str) -> list[str]:
    """A real Python child that can import benchmarks/child.py."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {BENCH!r})\n" + code]


def test_results_come_back_in_order():
    child = run_child(
        _py(
            "from child import print_result\nprint('noise')\nprint_result({'rank': 0})\nprint_result({'rank': 1, 'ms': 2.5})"
        )
    )
    assert child.returncode == 0 and not child.timed_out
    assert child.results == [{"rank": 0}, {"rank": 1, "ms": 2.5}]
    assert "noise" in child.stdout


def test_crash_reports_its_last_error_line():
    child = run_child(
        _py(
            "import warnings\nwarnings.warn('UserWarning: not this')\nraise ValueError('bad batch: 3')"
        )
    )
    assert child.returncode == 1 and child.results == []
    assert child.status() == "failed (rc 1): ValueError: bad batch: 3"


def test_hang_is_killed_at_the_timeout():
    child = run_child(_py("import time\nprint('started', flush=True)\ntime.sleep(60)"), timeout=1.5)
    assert child.timed_out and child.wall_s < 30
    assert child.status() == "timeout after 2s"  # rounded like the tables print it
    assert "started" in child.stdout  # what it printed before the kill is kept


def test_last_error_without_an_error_line_is_the_last_line():
    assert last_error("one\ntwo\n") == "two"
    assert last_error("") == "no output"
