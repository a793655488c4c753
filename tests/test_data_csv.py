"""CSV lists of video files as input: both formats, paths, labels, missing files, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_video import frame_numbers, index_video, video_sample, write_tar

from salt.data import VideoDataModule, eval_loader
from salt.data.shards import list_inputs
from salt.data.sources import read_csv_rows, resolve_source
from salt.data.stats import sum_counts
from salt.errors import UsageError

CLIP = {"frames_per_clip": 4, "frame_step": 2, "crop_size": 16, "batch_size": 2}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/clips/v{i}.mp4 (i = 0..5), 12 index frames each; root/other/far.mp4."""
    root = tmp_path_factory.mktemp("csv_videos")
    (root / "clips").mkdir()
    (root / "other").mkdir()
    data = index_video(12, 32, 40)
    for i in range(6):
        (root / "clips" / f"v{i}.mp4").write_bytes(data)
    (root / "other" / "far.mp4").write_bytes(data)
    return root


def collect(spec, **kw) -> tuple[list[str], list[int], dict[str, int]]:
    keys, labels, counts = [], [], []
    for batch in eval_loader(spec, **{**CLIP, "num_workers": 0, **kw}):
        keys += batch["key"]
        labels += batch["label"].tolist()
        counts.append(batch["data_counts"])
    return keys, labels, sum_counts(counts)


def test_both_formats_headers_comments_and_relative_paths(videos: Path) -> None:
    lists = videos / "lists"
    lists.mkdir(exist_ok=True)
    far = videos / "other" / "far.mp4"
    (lists / "comma.csv").write_text(
        f"path,label\n# a comment\n../clips/v0.mp4,3\n\n{far},1\n../clips/v1.mp4,\n"
    )
    (lists / "space.csv").write_text(f"../clips/v0.mp4 3\n{far} 1\n")  # V-JEPA's format
    (lists / "noheader.csv").write_text("../clips/v0.mp4,3\n")
    comma = read_csv_rows(lists / "comma.csv")
    assert [(r.key, r.label) for r in comma] == [
        ("../clips/v0.mp4", 3),
        (str(far), 1),
        ("../clips/v1.mp4", None),
    ]
    assert Path(comma[0].path).resolve() == (videos / "clips" / "v0.mp4").resolve()
    assert comma[1].path == str(far)  # absolute paths stay
    space = read_csv_rows(lists / "space.csv")
    assert [(r.key, r.path, r.label) for r in space] == [
        (r.key, r.path, r.label) for r in comma[:2]
    ]
    assert [(r.key, r.label) for r in read_csv_rows(lists / "noheader.csv")] == [
        ("../clips/v0.mp4", 3)
    ]
    # salt-shards make reads the same lists
    assert list_inputs(str(lists / "space.csv")) == [(r.path, r.label) for r in space]


def test_csv_samples_decode_like_shard_samples_exactly_once(videos: Path, tmp_path) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text("".join(f"{videos}/clips/v{i}.mp4,{i}\n" for i in range(6)))
    seen = []
    for rank in range(2):
        for batch in eval_loader(str(csv), **CLIP, num_workers=2, rank=rank, world_size=2):
            assert batch["video"].shape[1:] == (1, 1, 3, 4, 16, 16)  # [B, S, V, C, T, H, W]
            assert frame_numbers(batch["video"][0, 0, 0]) == [2, 4, 6, 8]  # centred window
            for key, label in zip(batch["key"], batch["label"].tolist(), strict=True):
                assert key.endswith(f"v{label}.mp4")  # the label travels with its own file
                seen.append(key)
    assert sorted(seen) == sorted(f"{videos}/clips/v{i}.mp4" for i in range(6))


def test_csv_and_shards_form_one_set(videos: Path, tmp_path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text(f"{videos}/clips/v0.mp4,0\n{videos}/clips/v1.mp4,1\n")
    tar = write_tar(tmp_path / "b-000000.tar", [video_sample("s0", index_video(12), 2)])
    keys, labels, _ = collect([str(csv), tar])
    assert sorted(labels) == [0, 1, 2] and "s0" in keys


def test_missing_file_is_a_counted_skip(videos: Path, tmp_path) -> None:
    csv = tmp_path / "holes.csv"
    csv.write_text(f"{videos}/clips/v0.mp4,0\n{videos}/clips/gone.mp4,1\n{videos}/clips/v2.mp4,2\n")
    keys, labels, counts = collect(str(csv))
    assert labels == [0, 2] and counts == {"skipped_missing_file": 1}


def test_fit_datamodule_trains_from_a_csv(videos: Path, tmp_path) -> None:
    csv = tmp_path / "fit.csv"
    csv.write_text("".join(f"{videos}/clips/v{i}.mp4 {i}\n" for i in range(6)))
    dm = VideoDataModule(
        str(csv), frames_per_clip=4, frame_step=2, crop_size=16, batch_size=3,
        num_workers=0, epoch_length=4,
    )  # fmt: skip
    labels = [label for b in dm.train_dataloader() for label in b["label"].tolist()]
    assert len(labels) == 12 and set(labels) <= set(range(6))
    assert sorted(labels[:6]) == list(range(6))  # one reshuffled pass before any repeat


def test_clean_errors_before_any_worker(videos: Path, tmp_path) -> None:
    with pytest.raises(UsageError, match="nope.csv.*does not exist"):
        eval_loader(str(tmp_path / "nope.csv"), **CLIP)
    with pytest.raises(UsageError, match=r"no shard matches .*train-\*\.tar"):
        eval_loader(str(tmp_path / "train-*.tar"), **CLIP)
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(UsageError, match="holds no video"):
        eval_loader(str(tmp_path / "empty.csv"), **CLIP)
    (tmp_path / "wrongroot.csv").write_text("clips/v0.mp4,0\nclips/v1.mp4,1\n")
    with pytest.raises(UsageError, match="none of its first 2 files exists"):
        resolve_source(str(tmp_path / "wrongroot.csv"))
    (tmp_path / "cat.csv").write_text(f"{videos}/clips/v0.mp4,0\n{videos}/clips/v1.mp4,cat\n")
    with pytest.raises(UsageError, match=r"cat.csv:2: label 'cat' is not an integer"):
        eval_loader(str(tmp_path / "cat.csv"), **CLIP)
    (tmp_path / "range.csv").write_text(f"{videos}/clips/v0.mp4,0\n{videos}/clips/v1.mp4,4\n")
    with pytest.raises(UsageError, match=r"v1.mp4: label 4 is outside \[0, 4\)"):
        eval_loader(str(tmp_path / "range.csv"), **CLIP, num_classes=4)
    with pytest.raises(UsageError, match="mixes a CSV with shards"):
        tar = write_tar(tmp_path / "m-000000.tar", [video_sample("s0", index_video(12), 2)])
        VideoDataModule(f"{tmp_path}/range.csv::{tar}", **CLIP).train_dataloader()
