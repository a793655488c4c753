"""salt.progress: the plain progress lines batch jobs print instead of a redrawn bar."""

import io

from salt.progress import ProgressLine, format_duration, is_interactive


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_are_rate_limited_by_units_and_carry_eta():
    clock = FakeClock()
    p = ProgressLine("fit", 1000, every=100, clock=clock)
    assert p.update(0, loss=1.0) is not None  # the first unit always reports
    clock.t += 5
    assert p.update(50, loss=0.9) is None  # 50 < every
    clock.t += 5
    line = p.update(100, loss=0.8, data_wait=None)
    # 100 steps in 10 s -> 900 left at 10 steps/s = 90 s
    assert line == "[fit] step 100/1000 (10.0%)  loss 0.8  ETA 1m30s"
    assert p.update(1000) is not None  # the last unit always reports


def test_time_limit_and_unknown_total():
    clock = FakeClock()
    p = ProgressLine("probe", None, unit="batch", every=None, every_s=30, clock=clock)
    assert p.update(1) == "[probe] batch 1"
    clock.t += 29
    assert p.update(2) is None
    clock.t += 2
    assert p.update(3, clips_per_s=12.25) == "[probe] batch 3  clips_per_s 12.25"


def test_format_duration_and_tty():
    assert format_duration(3725) == "1h02m"
    assert format_duration(95) == "1m35s"
    assert format_duration(7) == "7s"
    assert format_duration(float("nan")) == "?"
    assert not is_interactive(io.StringIO())
