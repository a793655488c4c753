"""Skip reasons and event counters of the video pipeline.

Bad samples are never replaced by other samples: they are skipped and *counted*. Counting happens
inside DataLoader workers, so the counts travel to the main process inside the batches
(``batch["data_counts"]``: what happened in that worker since its previous batch), which makes the
totals exact without shared memory or queues. ``VideoDataModule`` sums them and logs them as
``data/<name>``.

Counter names:
  ``skipped_undecodable``  no backend could open/decode the bytes (random bytes, truncated, text)
  ``skipped_missing_key``  the sample has no video entry (``.mp4``/``.webm``/...)
  ``skipped_zero_frames``  the container opens but holds no video frame
  ``skipped_bad_meta``     ``.json`` unparseable or its label is not an integer
  ``skipped_too_short``    shorter than the clip window with ``short_video="skip"``
  ``skipped_missing_label`` evaluation sample without a label
  ``skipped_bad_shard``    a tar shard could not be read (counted once per failure, not per sample)
  ``skipped_missing_file`` a CSV row whose video file cannot be read (missing, permissions)
  ``skipped_decode_timeout`` the decoder gave no frames within ``decode_timeout`` seconds
  ``padded``               shorter than the window; last frame repeated (``short_video="pad"``)
  ``decoder_fallback``     decord failed on a sample and PyAV decoded it instead
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

SKIP_REASONS = (
    "undecodable",
    "missing_key",
    "zero_frames",
    "bad_meta",
    "too_short",
    "missing_label",
    "bad_shard",
    "missing_file",
    "decode_timeout",
)
EVENTS = ("padded", "decoder_fallback")


class SkipSample(Exception):
    """Raised while preparing one sample; the stream counts ``reason`` and moves on."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {SKIP_REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def skip_key(reason: str) -> str:
    """Counter name of a skip reason (``"too_short"`` -> ``"skipped_too_short"``)."""
    return f"skipped_{reason}"


def sum_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Add several count dicts (e.g. the ``data_counts`` of many batches)."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update({k: int(v) for k, v in part.items()})
    return dict(total)
