"""Raw WebDataset samples and shard specs: which entry is the video, what the label is, which
files a spec names. No torch/Lightning here beyond webdataset itself, so the ``salt-shards`` CLI
starts fast.

A sample is ``<key>.<video ext>`` + optional ``<key>.json`` ({"label": int, ...}) or ``<key>.cls``.
"""

from __future__ import annotations

import glob
import json
import os
from typing import NamedTuple

from webdataset.shardlists import expand_urls

from salt.errors import UsageError

from .stats import SkipSample

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ogv", "flv", "wmv", "ts")


class ParsedSample(NamedTuple):
    """A raw sample's video bytes, label (-1 = none) and true frame count from its metadata."""

    data: bytes
    label: int
    num_frames: int | None


def parse_sample(sample: dict, require_label: bool = False) -> ParsedSample:
    """(video bytes, label, num_frames) of a raw WebDataset sample.

    ``label`` is -1 when absent and allowed. ``num_frames`` is the ``.json``'s ``num_frames``
    (``salt-shards`` stores the count it decoded) when it is a positive integer, else None; the
    decoder trusts it over a container header that claims more frames.
    """
    video = next((sample[e] for e in VIDEO_EXTS if e in sample), None)
    if video is None:
        raise SkipSample("missing_key", f"{sample.get('__key__')}: no video entry")
    if not isinstance(video, bytes | bytearray | memoryview):
        raise SkipSample("bad_meta", f"video entry is {type(video).__name__}")
    label, num_frames = None, None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise SkipSample("bad_meta", f"json: {err}") from err
        if not isinstance(meta, dict):
            raise SkipSample("bad_meta", f"json is {type(meta).__name__}, not an object")
        label = meta.get("label")
        n = meta.get("num_frames")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            num_frames = n
    elif "cls" in sample:  # webdataset convention: integer as text
        label = sample["cls"].decode(errors="replace").strip()
    if label is None:
        if require_label:
            raise SkipSample("missing_label")
        return ParsedSample(bytes(video), -1, num_frames)
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise SkipSample("bad_meta", f"label {label!r} is not an integer")
    try:
        return ParsedSample(bytes(video), int(label), num_frames)
    except ValueError as err:
        raise SkipSample("bad_meta", f"label {label!r} is not an integer") from err


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs of one spec: ``a::b``, braces ``x-{000..009}.tar`` and globs ``dir/*.tar``.

    Local paths must exist (a typo is an error here, not an endless loop of failed reads). A
    ``.csv`` part (a list of video files, see ``salt.data.sources``) is returned as itself, so
    callers that only need the files a spec names (e.g. to hash them) handle both kinds.

    Raises:
        UsageError: a pattern that matches nothing or a file that does not exist (named).
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for s in specs:
        for url in expand_urls(s):
            remote = "://" in url or url.startswith("pipe:")
            if not remote and url.lower().endswith(".csv"):
                if not os.path.isfile(url):
                    raise UsageError(f"video list {url!r} does not exist")
                urls.append(url)
            elif not remote and any(c in url for c in "*?["):
                found = sorted(glob.glob(url))
                if not found:
                    raise UsageError(f"no shard matches {url!r}")
                urls.extend(found)
            elif not remote and not os.path.exists(url):
                raise UsageError(f"shard {url!r} does not exist (pattern {s!r})")
            else:
                urls.append(url)
    if not urls:
        raise UsageError(f"no shards in {spec!r}")
    return urls
