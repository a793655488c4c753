"""Write videos into WebDataset tar shards (``salt-shards make``) and check shards (``inspect``).

Each sample is ``<key>.<ext>`` (the encoded video: ``mp4`` when re-encoded, else the source's own
container) + ``<key>.json`` = {label, source, fps, num_frames, width, height} of the stored video.
Keys are the input's index (``%09d``): unique, dot-free (webdataset splits keys at the first dot).

Every input is *probed* by decoding all its frames with PyAV (a file that opens but fails half way
is caught here, not in week 3 of training). With ``resize`` the decoded frames are re-encoded in the
same pass to H.264 at that short side (even sizes, keyframe every second so random windows seek
cheaply); videos whose short side is already <= ``resize`` are stored as they are. A file that fails
is listed in ``<name>-report.json`` beside the shards with its reason and is not written; it never
aborts the job.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from multiprocessing import get_context
from pathlib import Path

import av
import webdataset as wds
from tqdm import tqdm

from salt.errors import UsageError

from .decode import DEFAULT_DECODE_TIMEOUT, decode_clip
from .encode import H264Writer
from .samples import VIDEO_EXTS, expand_shards, parse_sample
from .sources import read_csv_rows
from .stats import SkipSample

DEFAULT_MAX_SIZE = 1 << 30  # 1 GiB shards


def list_inputs(source: str, label_from_parent: bool = False) -> list[tuple[str, int | None]]:
    """(path, label) of a CSV (``path[,label]`` or ``path label``, header allowed, paths relative
    to the CSV; ``salt.data.sources.read_csv_rows``) or of a folder (every file with a video
    extension below it, sorted; labels from parent folder names in sorted order when
    ``label_from_parent``).

    Raises:
        UsageError: ``source`` is neither a file nor a folder, or a CSV label is not an integer.
    """
    src = Path(source)
    if src.is_dir():
        paths = sorted(
            p for p in src.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in VIDEO_EXTS
        )
        if not label_from_parent:
            return [(str(p), None) for p in paths]
        classes = {name: i for i, name in enumerate(sorted({p.parent.name for p in paths}))}
        return [(str(p), classes[p.parent.name]) for p in paths]
    if not src.is_file():
        raise UsageError(f"input {source!r} is neither a CSV file nor a folder")
    return [(row.path, row.label) for row in read_csv_rows(src)]


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def prepare_video(path: str, label: int | None, resize: int | None = None, crf: int = 23) -> dict:
    """Probe (and maybe re-encode) one video. Returns ``{"ok": True, "ext", "data", "meta"}`` or
    ``{"ok": False, "path", "reason"}``; never raises for a bad file."""
    try:
        data = Path(path).read_bytes()
        if not data:
            raise ValueError("zero-length file")
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 30.0
            width, height = stream.codec_context.width, stream.codec_context.height
            writer = None
            if resize and min(width, height) > resize:
                scale = resize / min(width, height)
                width, height = _even(width * scale), _even(height * scale)
                writer = H264Writer(width, height, fps=fps, crf=crf, gop=max(1, int(round(fps))))
            num_frames = 0
            for frame in container.decode(stream):
                num_frames += 1
                if writer is not None:
                    writer.add(frame)
        if num_frames == 0:
            raise ValueError("no decodable frame")
        ext = Path(path).suffix.lower().lstrip(".")
        if writer is not None:
            data, ext = writer.finish(), "mp4"
        elif ext not in VIDEO_EXTS:
            ext = "mp4"
        meta = {
            "label": label,
            "source": str(path),
            "fps": fps,
            "num_frames": num_frames,
            "width": width,
            "height": height,
        }
        return {"ok": True, "ext": ext, "data": data, "meta": meta}
    except Exception as err:  # any failure of one file is reported, never fatal
        return {"ok": False, "path": str(path), "reason": f"{type(err).__name__}: {err}"}


def _prepare_star(args: tuple) -> dict:
    return prepare_video(*args)


def report_path(pattern: str) -> str:
    """``DIR/train-%06d.tar`` -> ``DIR/train-report.json``."""
    head = os.path.basename(pattern).split("%")[0].rstrip("-_.") or "shards"
    return os.path.join(os.path.dirname(pattern) or ".", f"{head}-report.json")


def write_shards(
    inputs: list[tuple[str, int | None]],
    pattern: str,
    resize: int | None = None,
    max_count: int = 1000,
    max_size: int = DEFAULT_MAX_SIZE,
    workers: int = 1,
    crf: int = 23,
    progress: bool = True,
) -> dict:
    """Write ``inputs`` to shards named by ``pattern`` (``%06d``-style); returns the report dict
    (also written to ``report_path(pattern)``)."""
    if "%" not in pattern:
        raise ValueError(f"output pattern needs a shard number like %06d: {pattern!r}")
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    shards: list[str] = []
    failures: list[dict] = []
    written = nbytes = 0
    writer = None
    jobs = [(p, lab, resize, crf) for p, lab in inputs]
    bar = tqdm(total=len(jobs), unit="video", disable=not progress, desc="salt-shards")
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results: Iterable[dict] = (
            pool.imap(_prepare_star, jobs) if pool else map(_prepare_star, jobs)
        )
        for index, res in enumerate(results):
            bar.update(1)
            if not res["ok"]:
                failures.append({"path": res["path"], "reason": res["reason"]})
                bar.set_postfix(skipped=len(failures))
                continue
            if writer is None:
                writer = wds.ShardWriter(
                    pattern, maxcount=max_count, maxsize=max_size, verbose=0, post=shards.append
                )
            meta = json.dumps(res["meta"]).encode()
            writer.write({"__key__": f"{index:09d}", res["ext"]: res["data"], "json": meta})
            written += 1
            nbytes += len(res["data"]) + len(meta)
    finally:
        if pool:
            pool.close()
        if writer is not None:
            writer.close()
        bar.close()
    report = {
        "output": pattern,
        "written": written,
        "skipped": len(failures),
        "shards": shards,
        "bytes": sum(os.path.getsize(s) for s in shards),
        "payload_bytes": nbytes,
        "resize": resize,
        "failures": failures,
    }
    with open(report_path(pattern), "w") as f:
        json.dump(report, f, indent=2)
    return report


def iter_raw(urls: list[str], counts: Counter) -> Iterator[tuple[str, dict]]:
    """(shard url, raw sample) of every sample; unreadable shards are counted, not raised."""

    def handler(exn: Exception) -> bool:
        counts["bad_shard"] += 1
        return True

    for url in urls:
        for sample in wds.tarfile_samples([{"url": url}], handler=handler):
            yield url, sample


def inspect_shards(spec: str, decode: bool = False, decoder: str = "auto") -> dict:
    """Counts per shard, label histogram, metadata problems and (``decode``) a decode check that
    reads the first and last frame of every video."""
    urls = expand_shards(spec)
    counts: Counter = Counter()
    per_shard: Counter = Counter()
    labels: Counter = Counter()
    problems: list[dict] = []
    for url, sample in iter_raw(urls, counts):
        per_shard[url] += 1
        counts["samples"] += 1
        try:
            data, label, _ = parse_sample(sample)
            labels[label] += 1
            if decode:  # the header's count on purpose: a file that over-reports it is a problem
                decode_clip(
                    data, lambda n, fps: [0, n - 1], backend=decoder, timeout=DEFAULT_DECODE_TIMEOUT
                )
                counts["decoded"] += 1
        except SkipSample as skip:
            counts[f"skipped_{skip.reason}"] += 1
            problems.append({"shard": url, "key": sample.get("__key__"), "reason": str(skip)[:300]})
    return {
        "shards": len(urls),
        "samples": counts.pop("samples", 0),
        "per_shard": dict(per_shard),
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "counts": dict(counts),
        "problems": problems,
    }
