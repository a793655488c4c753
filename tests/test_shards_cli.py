"""``salt-shards make / inspect / synth`` on real files: good videos written, every broken one reported."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers_video import index_video

from salt.data.shards import list_inputs
from salt.data.shards_cli import main

BROKEN = {"truncated.mp4", "random.mp4", "empty.mp4", "text.mp4"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
    good = index_video(12, 48, 64)
    (root / "cats" / "a.mp4").write_bytes(good)
    (root / "cats" / "b.mp4").write_bytes(index_video(6, 24, 32))  # small: never upscaled
    (root / "dogs" / "c.MP4").write_bytes(index_video(9, 64, 48))  # portrait, upper-case ext
    (root / "dogs" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "random.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (root / "dogs" / "empty.mp4").write_bytes(b"")
    (root / "cats" / "text.mp4").write_text("just some notes\n")
    (root / "cats" / "notes.txt").write_text("not a video extension: ignored\n")
    return root


def read_shards(paths: list[str]) -> dict[str, dict]:
    """key -> {ext: bytes, "json": dict} over all shards."""
    samples: dict[str, dict] = {}
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                samples.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else data
    return samples


def test_make_writes_exactly_the_good_videos_and_reports_each_broken_one(
    folder, tmp_path, capsys
) -> None:
    out = tmp_path / "shards" / "train-%06d.tar"
    code = main(
        ["make", "--input", str(folder), "--output", str(out), "--label-from-parent", "--quiet"]
    )
    assert code == 0
    report = json.loads((tmp_path / "shards" / "train-report.json").read_text())
    assert report["written"] == 3 and report["skipped"] == 4
    assert {Path(f["path"]).name for f in report["failures"]} == BROKEN
    assert all(f["reason"] for f in report["failures"])
    samples = read_shards(report["shards"])
    metas = {Path(s["json"]["source"]).name: s["json"] for s in samples.values()}
    assert set(metas) == {"a.mp4", "b.mp4", "c.MP4"}
    assert metas["a.mp4"] == {
        "label": 0,
        "source": str(folder / "cats" / "a.mp4"),
        "fps": 30.0,
        "num_frames": 12,
        "width": 64,
        "height": 48,
    }
    assert metas["c.MP4"]["label"] == 1 and (metas["c.MP4"]["width"], metas["c.MP4"]["height"]) == (
        48,
        64,
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "written 3 / skipped 4 / shards 1 / bytes" in line


def test_resize_reencodes_large_videos_only(folder, tmp_path) -> None:
    out = tmp_path / "r" / "v-%06d.tar"
    assert (
        main(
            [
                "make",
                "--input",
                str(folder),
                "--output",
                str(out),
                "--resize",
                "32",
                "--max-count",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r" / "v-report.json").read_text())
    assert len(report["shards"]) == 2  # 3 videos, 2 per shard
    samples = {Path(s["json"]["source"]).name: s for s in read_shards(report["shards"]).values()}
    a = samples["a.mp4"]["json"]
    assert (a["width"], a["height"], a["num_frames"]) == (
        42,
        32,
        12,
    )  # 64x48 -> short side 32, even
    assert (samples["c.MP4"]["json"]["width"], samples["c.MP4"]["json"]["height"]) == (32, 42)
    assert (
        samples["b.mp4"]["mp4"] == (folder / "cats" / "b.mp4").read_bytes()
    )  # 24 px short side: kept


def test_csv_input_with_header_and_parallel_workers(folder, tmp_path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text(
        f"path,label\nvideos/cats/a.mp4,3\n{folder / 'dogs' / 'c.MP4'},5\nvideos/dogs/empty.mp4,1\n"
    )
    assert list_inputs(str(csv))[0] == (str(tmp_path / "videos" / "cats" / "a.mp4"), 3)
    out = tmp_path / "c" / "s-%06d.tar"
    assert (
        main(["make", "--input", str(csv), "--output", str(out), "--workers", "2", "--quiet"]) == 0
    )
    report = json.loads((tmp_path / "c" / "s-report.json").read_text())
    labels = sorted(s["json"]["label"] for s in read_shards(report["shards"]).values())
    assert labels == [3, 5] and [Path(f["path"]).name for f in report["failures"]] == ["empty.mp4"]


def test_bad_csv_label_is_a_clear_error(tmp_path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("a.mp4,1\nb.mp4,dog\n")
    with pytest.raises(ValueError, match="not an integer"):
        list_inputs(str(csv))


def test_inspect_counts_labels_and_decodes(folder, tmp_path, capsys) -> None:
    out = tmp_path / "i" / "x-%06d.tar"
    main(["make", "--input", str(folder), "--output", str(out), "--label-from-parent", "--quiet"])
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "i" / "x-*.tar"), "--decode", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 3 and result["labels"] == {"0": 2, "1": 1}
    assert result["counts"]["decoded"] == 3 and result["problems"] == []


def test_synth_subcommand(tmp_path, capsys) -> None:
    args = [
        "synth",
        "--output",
        str(tmp_path / "s"),
        "--num-train",
        "4",
        "--num-val",
        "4",
        "--frames",
        "8",
        "--size",
        "32",
    ]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"train": 4, "probe_train": 4, "val": 4}
    assert (tmp_path / "s" / "synthetic.json").exists()


def test_console_entry_point_reports_to_stdout_and_stderr(folder, tmp_path) -> None:
    out = tmp_path / "p" / "t-%06d.tar"
    cmd = [
        sys.executable,
        "-m",
        "salt.data.shards_cli",
        "make",
        "--input",
        str(folder),
        "--output",
        str(out),
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "written 3 / skipped 4" in done.stdout
    assert sorted(
        ln.split()[1].rstrip(":") for ln in done.stderr.splitlines() if ln.startswith("skipped ")
    ) == sorted(str(p) for p in folder.rglob("*.mp4") if p.name in BROKEN)


def test_nothing_written_is_exit_status_1(tmp_path, capsys) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"nope")
    assert (
        main(
            [
                "make",
                "--input",
                str(tmp_path / "bad"),
                "--output",
                str(tmp_path / "o-%06d.tar"),
                "--quiet",
            ]
        )
        == 1
    )
    assert "written 0 / skipped 1 / shards 0" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert (
        main(["make", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "e-%06d.tar")])
        == 1
    )
