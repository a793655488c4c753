"""Plain progress lines for batch jobs (Slurm logs), where a redrawn progress bar is unreadable.

When stdout is not a terminal, ``salt fit`` and ``salt-probe`` print one line every N steps (or
every few seconds) instead of a bar, e.g.::

    [fit] step 1200/240000 (0.5%)  loss 0.412  clips/s 161.3  data-wait 2%  ETA 11h02m

``ProgressLine`` only formats and rate-limits; the caller decides where the line goes (print,
a logger) and which fields it carries. Rates and the ETA use the wall time between the first and
the latest update, so a slow first step (compilation, cuDNN plans) does not dominate the ETA for
long.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def is_interactive(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stdout) is a terminal, where a redrawn bar is readable."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_duration(seconds: float) -> str:
    """``3725 -> '1h02m'``, ``95 -> '1m35s'``, ``7 -> '7s'``; negative or unknown -> ``'?'``."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative, inf
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


class ProgressLine:
    """Rate-limited one-line progress reports: ``[prefix] unit n/total (pct)  k v ...  ETA``.

    Args:
        prefix: shown in brackets at the start of every line (``"fit"``, ``"probe"``).
        total: the number of units to the end, or None when unknown (no percentage, no ETA).
        unit: the counted thing (``"step"``, ``"epoch"``).
        every: report at most once per ``every`` units (None: no unit limit).
        every_s: report at most once per ``every_s`` seconds of wall time (None: no time limit).
            With both set, a line is due when either limit has passed.
        clock: time source (seconds); injectable so tests need not sleep.
    """

    def __init__(
        self,
        prefix: str,
        total: int | None,
        *,
        unit: str = "step",
        every: int | None = 50,
        every_s: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self.prefix, self.total, self.unit = prefix, total, unit
        self.every, self.every_s, self.clock = every, every_s, clock
        self._start: tuple[int, float] | None = None  # (n, time) of the first update
        self._last_n: int | None = None
        self._last_t = 0.0

    def due(self, n: int) -> bool:
        """Whether ``update(n)`` would print (the first and the last unit are always due)."""
        if self._last_n is None or (self.total is not None and n >= self.total):
            return True
        by_units = self.every is not None and n - self._last_n >= self.every
        by_time = self.every_s is not None and self.clock() - self._last_t >= self.every_s
        return by_units or by_time

    def eta_s(self, n: int) -> float | None:
        """Seconds to ``total`` at the average rate since the first update (None if unknown)."""
        if self.total is None or self._start is None:
            return None
        n0, t0 = self._start
        done, elapsed = n - n0, self.clock() - t0
        if done <= 0 or elapsed <= 0:
            return None
        return (self.total - n) * elapsed / done

    def format(self, n: int, **fields: object) -> str:
        """The line for unit ``n`` with ``fields`` as ``key value`` pairs (None values dropped)."""
        head = f"[{self.prefix}] {self.unit} {n}"
        if self.total:
            head += f"/{self.total} ({100.0 * n / self.total:.1f}%)"
        parts = [head] + [f"{k} {_fmt_value(v)}" for k, v in fields.items() if v is not None]
        eta = self.eta_s(n)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def update(self, n: int, **fields: object) -> str | None:
        """The formatted line if one is due at unit ``n``, else None (call it every unit)."""
        now = self.clock()
        if self._start is None:
            self._start = (n, now)
        if not self.due(n):
            return None
        self._last_n, self._last_t = n, now
        return self.format(n, **fields)
