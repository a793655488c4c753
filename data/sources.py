"""Where samples come from: WebDataset shard specs and CSV lists of video files, as one source.

A *spec* is what a user types for a split: a shard pattern (``a::b``, braces ``x-{000..009}.tar``,
globs ``dir/*.tar``) or a ``.csv`` list of video files, or a list of them (one set). A CSV holds
``path,label`` rows (an optional header row, ``#`` comments, a missing label = unlabelled) or
V-JEPA's space-separated ``path label``; relative paths resolve against the CSV's folder.
``resolve_source`` turns specs into a ``VideoSource`` (shard URLs + CSV rows) and checks what can be
checked before any worker starts: a missing CSV, a pattern that matches nothing, an empty CSV, a
bad label, a CSV whose first files all do not exist (usually a wrong folder) are ``UsageError``s.

A CSV row becomes a raw sample with the keys a shard sample has (``__key__``, ``<ext>`` = the
file's bytes, ``cls`` = the label), so ``parse_sample`` and the clip code are the same for both.
The key of a row is its path as written in the CSV. A row whose file cannot be read when its turn
comes is counted (``skipped_missing_file``) and skipped, like any other bad sample.

``count_samples`` counts a source without decoding: CSV rows, or tar member names (headers only,
the payload is seeked over). ``in_split`` is the deterministic held-out slice of a training set:
a stable hash of the sample key decides, so every rank, worker and rerun agrees without a list.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from salt.errors import UsageError

from .samples import VIDEO_EXTS, expand_shards

Split = Literal["all", "fit", "heldout"]
SPLITS = ("all", "fit", "heldout")
HEADER_WORDS = ("path", "video", "file", "filename", "filepath")
CHECK_FIRST_FILES = 8  # a CSV whose first N files are all missing is a usage error


@dataclass(frozen=True)
class CsvRow:
    """One video file of a CSV: ``key`` (the path as written), resolved ``path``, label or None."""

    key: str
    path: str
    label: int | None


@dataclass
class VideoSource:
    """One set of samples: WebDataset shard URLs and/or CSV rows (``specs`` as given)."""

    shards: list[str] = field(default_factory=list)
    rows: list[CsvRow] = field(default_factory=list)
    specs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " + ".join(self.specs)


def is_csv(spec: str) -> bool:
    """Whether one spec part names a CSV list of video files (by its ``.csv`` suffix)."""
    return spec.strip().lower().endswith(".csv")


def _parts(spec: str | Sequence[str]) -> list[str]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    return [p for s in specs for p in str(s).split("::") if p.strip()]


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _split_line(line: str, comma: bool) -> list[str]:
    if comma:
        return [c.strip() for c in next(csv.reader([line]))]
    return line.rsplit(None, 1)  # "path label": the label is the last field; paths keep spaces


def read_csv_rows(path: str | os.PathLike) -> list[CsvRow]:
    """Rows of a video CSV (see the module docstring). Labels must be integers.

    Raises:
        UsageError: the file does not exist, or a label is not an integer (with its line).
    """
    src = Path(path)
    if not src.is_file():
        raise UsageError(f"video list {str(path)!r} does not exist")
    rows: list[CsvRow] = []
    comma: bool | None = None
    first = True
    with open(src, newline="") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if comma is None:  # the first data line decides the format of the whole file
                comma = "," in line
            fields = _split_line(line, comma)
            path_s, label_s = fields[0], (fields[1].strip() if len(fields) > 1 else "")
            if first:
                first = False
                if path_s.lower() in HEADER_WORDS or (label_s and not _is_int(label_s)):
                    continue  # header row
            if label_s and not _is_int(label_s):
                raise UsageError(f"{path}:{n}: label {label_s!r} is not an integer")
            p = Path(path_s)
            resolved = p if p.is_absolute() else src.parent / p
            rows.append(CsvRow(path_s, str(resolved), int(label_s) if label_s else None))
    return rows


def check_pipe(urls: Sequence[str], allow_pipe: bool) -> None:
    """``pipe:`` URLs run a shell command (webdataset's convention): refused unless allowed."""
    if allow_pipe:
        return
    for url in urls:
        if url.startswith("pipe:"):
            raise UsageError(
                f"shard URL {url!r} runs a shell command; pass allow_pipe=True "
                "(salt fit: --data.allow_pipe_urls true) if you trust it"
            )


def resolve_source(
    spec: str | Sequence[str], *, num_classes: int | None = None, allow_pipe: bool = False
) -> VideoSource:
    """Shard URLs and CSV rows of one set of specs, checked before any worker starts.

    Args:
        spec: a spec or a list of specs forming one set (shard patterns and/or ``.csv`` files).
        num_classes: when given, CSV labels outside ``[0, num_classes)`` are an error here.
        allow_pipe: accept ``pipe:`` shard URLs (they run shell commands).

    Raises:
        UsageError: missing CSV, a pattern matching nothing, an empty CSV, a label out of range,
            a CSV whose first files are all missing, a ``pipe:`` URL without ``allow_pipe``.
    """
    out = VideoSource()
    for part in _parts(spec):
        out.specs.append(part)
        if not is_csv(part):
            urls = expand_shards(part)
            check_pipe(urls, allow_pipe)
            out.shards.extend(urls)
            continue
        rows = read_csv_rows(part)
        if not rows:
            raise UsageError(f"video list {part!r} holds no video")
        if num_classes is not None:
            for row in rows:
                check_label(row.label, num_classes, f"{part}: {row.key}")
        head = rows[:CHECK_FIRST_FILES]
        if not any(os.path.exists(r.path) for r in head):
            raise UsageError(
                f"video list {part!r}: none of its first {len(head)} files exists (first: "
                f"{head[0].path!r}); relative paths are resolved against the CSV's folder"
            )
        out.rows.extend(rows)
    if not out.shards and not out.rows:
        raise UsageError(f"no samples in {spec!r}")
    return out


def check_label(label: int | None, num_classes: int | None, where: str) -> None:
    """A label outside ``[0, num_classes)`` is the user's to fix: ``UsageError`` naming it."""
    if num_classes is not None and label is not None and not 0 <= label < num_classes:
        raise UsageError(f"{where}: label {label} is outside [0, {num_classes})")


def row_sample(row: CsvRow) -> dict:
    """The raw sample of a CSV row, its file read now, laid out like a shard sample.

    Raises:
        OSError: the file cannot be read.
    """
    ext = Path(row.path).suffix.lower().lstrip(".")
    with open(row.path, "rb") as f:
        sample = {
            "__key__": row.key,
            "__url__": row.path,
            ext if ext in VIDEO_EXTS else "mp4": f.read(),
        }
    if row.label is not None:
        sample["cls"] = str(row.label).encode()
    return sample


def row_samples(rows: Sequence[CsvRow], counts: Counter) -> Iterator[dict]:
    """Raw samples of ``rows`` in order; unreadable files are counted and skipped."""
    for row in rows:
        try:
            yield row_sample(row)
        except OSError:
            counts["skipped_missing_file"] += 1


# ---------------------------------------------------------------------- held-out slice


def split_value(key: str, seed: int = 0) -> float:
    """A stable number in [0, 1) per (key, seed): the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_split(key: str, split: Split, fraction: float, seed: int = 0) -> bool:
    """Whether sample ``key`` belongs to ``split``: "heldout" = the keys whose ``split_value`` is
    below ``fraction``, "fit" = the others, "all" = every key."""
    if split == "all":
        return True
    held = split_value(key, seed) < fraction
    return held if split == "heldout" else not held


def check_split(split: str, fraction: float) -> None:
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "all" and not 0.0 < fraction < 1.0:
        raise UsageError(f"heldout_fraction must be in (0, 1) for split {split!r}, got {fraction}")


# ---------------------------------------------------------------------- counting


def tar_keys(url: str) -> list[str]:
    """Keys of the samples in one local tar that have a video entry (headers only)."""
    from webdataset.tariterators import base_plus_ext

    keys: list[str] = []
    with tarfile.open(url, mode="r:") as tar:  # random access: payloads are seeked over
        for member in tar:
            if not member.isfile():
                continue
            key, ext = base_plus_ext(member.name)
            if key is None or ext is None:
                continue
            if ext.lower() in VIDEO_EXTS and (not keys or keys[-1] != key):
                keys.append(key)
    return keys


def is_remote(url: str) -> bool:
    """A URL that is not a local file (``http://``, ``s3://``, ``pipe:`` ...)."""
    return "://" in url or url.startswith("pipe:")


def countable(source: VideoSource) -> bool:
    """Whether ``count_samples`` can count ``source`` (every shard is a local file)."""
    return not any(is_remote(u) for u in source.shards)


def count_samples(
    source: VideoSource,
    split: Split = "all",
    heldout_fraction: float = 0.15,
    heldout_seed: int = 0,
) -> int:
    """Samples of ``source`` in ``split`` without decoding anything.

    CSV rows are counted as listed (a missing file is found, and counted as a skip, only when it
    is read); shards by their tar headers. Remote shards cannot be counted this way.

    Raises:
        UsageError: a remote shard (pass the count yourself) or an unreadable local tar.
    """
    check_split(split, heldout_fraction)
    n = sum(in_split(r.key, split, heldout_fraction, heldout_seed) for r in source.rows)
    for url in source.shards:
        if is_remote(url):
            raise UsageError(f"cannot count the samples of remote shard {url!r}; pass num_samples")
        try:
            keys = tar_keys(url)
        except (OSError, tarfile.TarError) as err:
            raise UsageError(f"shard {url!r} is not a readable tar: {err}") from err
        n += sum(in_split(k, split, heldout_fraction, heldout_seed) for k in keys)
    return n
